/* SPDX-License-Identifier: Apache-2.0 */
/*
 * vpu.h - host interface of the VPU video encode/decode card, interface version 1.
 *
 * The card is a PCIe function whose host interface is NVMe (base specification 1.4
 * register set and queue model) with a vendor-specific video command set on top:
 *
 *   - BAR0 holds the standard NVMe controller registers and doorbells;
 *   - one admin queue pair and any number of I/O queue pairs, 64-byte submission
 *     entries, 16-byte completion entries with a phase tag;
 *   - data pointers are PRP1/PRP2 and PRP lists, memory page size from CC.MPS;
 *   - MSI-X, one vector per completion queue;
 *   - vendor admin opcodes C0h-CFh manage encode sessions, vendor I/O opcodes
 *     80h-8Fh move frames and bitstream.
 *
 * Identify Controller's vendor-specific area (bytes 3072-4095) begins with the VPU
 * block (struct vpu_identify_vpu). A controller without the "VPU1" magic there is a
 * plain NVMe device and not a VPU.
 *
 * Every multi-byte field is little-endian. Every structure is packed to the layout
 * given here; static assertions at the end pin the sizes and offsets.
 */
#ifndef VPU_H
#define VPU_H

#include <stdint.h>

/* ---------------------------------------------------------------------------------
 * PCI identity
 * ------------------------------------------------------------------------------ */

/* PCI class code of an NVMe I/O controller (base 01h, sub 08h, interface 02h). */
#define VPU_PCI_CLASS_NVME 0x010802u
/* Vendor and device ID of the VPU card (PCI function 0 of each card). */
#define VPU_PCI_VENDOR_ID 0x1dedu
#define VPU_PCI_DEVICE_ID 0x5650u

/* ---------------------------------------------------------------------------------
 * Controller registers (BAR0), NVMe 1.4 section 3.1
 * ------------------------------------------------------------------------------ */

#define VPU_REG_CAP 0x00u   /* Controller Capabilities, 64-bit */
#define VPU_REG_VS 0x08u    /* Version */
#define VPU_REG_INTMS 0x0cu /* Interrupt Mask Set (pin/MSI only) */
#define VPU_REG_INTMC 0x10u /* Interrupt Mask Clear (pin/MSI only) */
#define VPU_REG_CC 0x14u    /* Controller Configuration */
#define VPU_REG_CSTS 0x1cu  /* Controller Status */
#define VPU_REG_NSSR 0x20u  /* NVM Subsystem Reset */
#define VPU_REG_AQA 0x24u   /* Admin Queue Attributes */
#define VPU_REG_ASQ 0x28u   /* Admin Submission Queue Base Address, 64-bit */
#define VPU_REG_ACQ 0x30u   /* Admin Completion Queue Base Address, 64-bit */
/* Doorbells: SQ y tail at DBS + (2y) * (4 << DSTRD), CQ y head at DBS + (2y+1) * (4 << DSTRD). */
#define VPU_REG_DBS 0x1000u
/* Size of BAR0 the card implements (registers and doorbells for 64 queue pairs). */
#define VPU_BAR0_SIZE 0x4000u

/* CAP fields */
#define VPU_CAP_MQES_MASK 0xffffull /* Maximum Queue Entries Supported, 0's based */
#define VPU_CAP_CQR (1ull << 16)    /* Contiguous Queues Required */
#define VPU_CAP_TO_SHIFT 24         /* Timeout, in 500 ms units */
#define VPU_CAP_TO_MASK 0xffull
#define VPU_CAP_DSTRD_SHIFT 32 /* Doorbell Stride: 4 << DSTRD bytes */
#define VPU_CAP_DSTRD_MASK 0xfull
#define VPU_CAP_CSS_NVM (1ull << 37) /* NVM command set supported */
#define VPU_CAP_MPSMIN_SHIFT 48      /* Memory Page Size Minimum: 2 ^ (12 + MPSMIN) */
#define VPU_CAP_MPSMIN_MASK 0xfull
#define VPU_CAP_MPSMAX_SHIFT 52
#define VPU_CAP_MPSMAX_MASK 0xfull

/* VS value of NVMe 1.4 */
#define VPU_NVME_VERSION_1_4 0x00010400u

/* CC fields */
#define VPU_CC_EN (1u << 0)
#define VPU_CC_CSS_SHIFT 4
#define VPU_CC_MPS_SHIFT 7 /* Memory Page Size: 2 ^ (12 + MPS) */
#define VPU_CC_MPS_MASK 0xfu
#define VPU_CC_AMS_SHIFT 11
#define VPU_CC_SHN_SHIFT 14
#define VPU_CC_SHN_MASK 0x3u
#define VPU_CC_SHN_NORMAL 0x1u
#define VPU_CC_IOSQES_SHIFT 16 /* log2 of the I/O SQ entry size */
#define VPU_CC_IOCQES_SHIFT 20 /* log2 of the I/O CQ entry size */

/* CSTS fields */
#define VPU_CSTS_RDY (1u << 0)
#define VPU_CSTS_CFS (1u << 1) /* Controller Fatal Status */
#define VPU_CSTS_SHST_SHIFT 2
#define VPU_CSTS_SHST_MASK 0x3u
#define VPU_CSTS_SHST_COMPLETE 0x2u

/* AQA fields (0's based sizes) */
#define VPU_AQA_ASQS_MASK 0xfffu
#define VPU_AQA_ACQS_SHIFT 16

/* Queue entry sizes */
#define VPU_SQE_SIZE 64u
#define VPU_CQE_SIZE 16u
#define VPU_SQES_LOG2 6u
#define VPU_CQES_LOG2 4u

/* ---------------------------------------------------------------------------------
 * Queue entries, NVMe 1.4 sections 4.2 and 4.6
 * ------------------------------------------------------------------------------ */

/* Submission queue entry. */
struct vpu_sqe {
    uint8_t opcode;
    uint8_t flags; /* FUSE bits 0-1, PSDT bits 6-7 (0: PRPs) */
    uint16_t cid;  /* command identifier, unique among the commands in flight on a queue */
    uint32_t nsid;
    uint32_t cdw2;
    uint32_t cdw3;
    uint64_t mptr; /* metadata pointer; Encode Frame: output bitstream buffer IOVA */
    uint64_t prp1;
    uint64_t prp2;
    uint32_t cdw10;
    uint32_t cdw11;
    uint32_t cdw12;
    uint32_t cdw13;
    uint32_t cdw14;
    uint32_t cdw15;
} __attribute__((packed));

/* Completion queue entry. */
struct vpu_cqe {
    uint32_t dw0;     /* command specific */
    uint32_t dw1;     /* command specific */
    uint16_t sq_head; /* SQ head pointer as the controller consumed it */
    uint16_t sq_id;   /* SQ the command came from */
    uint16_t cid;     /* command identifier of the completed command */
    uint16_t status;  /* bit 0: phase tag; bits 1-15: status field */
} __attribute__((packed));

/* Fields of vpu_cqe.status */
#define VPU_CQE_PHASE (1u << 0)
#define VPU_CQE_SC_SHIFT 1 /* Status Code */
#define VPU_CQE_SC_MASK 0xffu
#define VPU_CQE_SCT_SHIFT 9 /* Status Code Type */
#define VPU_CQE_SCT_MASK 0x7u
#define VPU_CQE_MORE (1u << 14)
#define VPU_CQE_DNR (1u << 15) /* Do Not Retry */

/* Status code types */
#define VPU_SCT_GENERIC 0x0u
#define VPU_SCT_COMMAND_SPECIFIC 0x1u
#define VPU_SCT_MEDIA 0x2u
#define VPU_SCT_VENDOR 0x7u

/* Generic status codes (SCT 0) */
#define VPU_SC_SUCCESS 0x00u
#define VPU_SC_INVALID_OPCODE 0x01u
#define VPU_SC_INVALID_FIELD 0x02u
#define VPU_SC_CID_CONFLICT 0x03u
#define VPU_SC_DATA_TRANSFER_ERROR 0x04u /* a DMA access failed (unmapped IOVA) */
#define VPU_SC_INTERNAL_ERROR 0x06u
#define VPU_SC_ABORT_REQUESTED 0x07u
#define VPU_SC_ABORT_SQ_DELETED 0x08u
#define VPU_SC_INVALID_PRP_OFFSET 0x13u
#define VPU_SC_INVALID_NAMESPACE 0x0bu
#define VPU_SC_LBA_OUT_OF_RANGE 0x80u

/* Command specific status codes (SCT 1) */
#define VPU_SC_INVALID_CQ 0x00u
#define VPU_SC_INVALID_QID 0x01u
#define VPU_SC_INVALID_QUEUE_SIZE 0x02u
#define VPU_SC_INVALID_LOG_PAGE 0x09u
#define VPU_SC_INVALID_INTERRUPT_VECTOR 0x08u
#define VPU_SC_INVALID_QUEUE_DELETION 0x0cu
#define VPU_SC_FEATURE_NOT_CHANGEABLE 0x0eu

/* Vendor status codes (SCT 7): the video command set */
#define VPU_SC_SESSION_NOT_FOUND 0x80u   /* no session with that id */
#define VPU_SC_OUTPUT_TOO_SMALL 0x81u    /* nothing written; retry with a larger buffer */
#define VPU_SC_ENGINE_FAULT 0x82u        /* the engine failed this frame */
#define VPU_SC_SESSION_ABORTED 0x83u     /* the session was destroyed with this in flight */
#define VPU_SC_UNSUPPORTED_CODEC 0x84u
#define VPU_SC_UNSUPPORTED_FORMAT 0x85u  /* pixel format, profile or rate control */
#define VPU_SC_TOO_LARGE 0x86u           /* width/height over the card's maximum */
#define VPU_SC_NO_CAPACITY 0x87u         /* no engine can take the session */
#define VPU_SC_INVALID_PARAMS 0x88u      /* session parameters inconsistent */
#define VPU_SC_INPUT_TOO_SMALL 0x89u     /* the frame is shorter than the session needs */
#define VPU_SC_BITSTREAM_ERROR 0x8au     /* Decode Frame: the input could not be decoded */
#define VPU_SC_NO_FRAME_MEMORY 0x8bu     /* card frame memory is full */
#define VPU_SC_FRAME_NOT_FOUND 0x8cu     /* no card frame with that handle */
#define VPU_SC_FRAME_MISMATCH 0x8du      /* card frame size differs from what the command needs */

/* ---------------------------------------------------------------------------------
 * Admin command set, NVMe 1.4 section 5
 * ------------------------------------------------------------------------------ */

#define VPU_ADMIN_DELETE_SQ 0x00u
#define VPU_ADMIN_CREATE_SQ 0x01u
#define VPU_ADMIN_GET_LOG_PAGE 0x02u
#define VPU_ADMIN_DELETE_CQ 0x04u
#define VPU_ADMIN_CREATE_CQ 0x05u
#define VPU_ADMIN_IDENTIFY 0x06u
#define VPU_ADMIN_ABORT 0x08u
#define VPU_ADMIN_SET_FEATURES 0x09u
#define VPU_ADMIN_GET_FEATURES 0x0au
#define VPU_ADMIN_ASYNC_EVENT_REQUEST 0x0cu
#define VPU_ADMIN_FIRMWARE_COMMIT 0x10u
#define VPU_ADMIN_FIRMWARE_DOWNLOAD 0x11u

/* Vendor admin opcodes: the video command set's session management */
#define VPU_ADMIN_CREATE_SESSION 0xc0u      /* PRP1: struct vpu_session_params; DW0: session id */
#define VPU_ADMIN_DESTROY_SESSION 0xc1u     /* CDW10: session id */
#define VPU_ADMIN_RECONFIGURE_SESSION 0xc2u /* CDW10: session id; CDW11-14 below */
/* PRP1: struct vpu_decoder_params; DW0: session id of the decoder. Decoders share the
 * session id space: Destroy Session destroys a decoder too. */
#define VPU_ADMIN_CREATE_DECODER 0xc3u

/* Create I/O Completion Queue: CDW10 = QID | (QSIZE-1) << 16; CDW11 = PC | IEN | IV << 16 */
/* Create I/O Submission Queue: CDW10 = QID | (QSIZE-1) << 16; CDW11 = PC | QPRIO | CQID << 16 */
#define VPU_QUEUE_QSIZE_SHIFT 16
#define VPU_QUEUE_PC (1u << 0)  /* physically contiguous */
#define VPU_CQ_IEN (1u << 1)    /* interrupts enabled */
#define VPU_CQ_IV_SHIFT 16      /* interrupt vector */
#define VPU_SQ_CQID_SHIFT 16

/* Identify: CDW10 bits 0-7 = CNS */
#define VPU_IDENTIFY_CNS_NAMESPACE 0x00u
#define VPU_IDENTIFY_CNS_CONTROLLER 0x01u
#define VPU_IDENTIFY_CNS_ACTIVE_NSIDS 0x02u
#define VPU_IDENTIFY_SIZE 4096u

/* Set/Get Features: CDW10 bits 0-7 = feature id */
#define VPU_FEATURE_NUMBER_OF_QUEUES 0x07u
/* Number of Queues: CDW11 and completion DW0 = NSQR | NCQR << 16, both 0's based */
#define VPU_NUM_QUEUES_NCQR_SHIFT 16

/* Abort: CDW10 = SQID | CID << 16; completion DW0 bit 0 set when the command was NOT aborted */
#define VPU_ABORT_CID_SHIFT 16
#define VPU_ABORT_NOT_ABORTED (1u << 0)

/* Get Log Page: CDW10 = LID | NUMDL << 16; CDW11 = NUMDU | LSI << 16 (NUMD is 0's based, dwords) */
#define VPU_LOG_NUMDL_SHIFT 16
#define VPU_LOG_LSI_SHIFT 16
#define VPU_LOG_ERROR 0x01u
#define VPU_LOG_SMART 0x02u
/* Vendor log pages */
#define VPU_LOG_ENGINE 0xc0u  /* struct vpu_engine_log */
#define VPU_LOG_SESSION 0xc1u /* struct vpu_session_log; LSI = session id */

/* ---------------------------------------------------------------------------------
 * NVM command set (used against plain NVMe controllers in transport tests)
 * ------------------------------------------------------------------------------ */

#define VPU_NVM_FLUSH 0x00u
#define VPU_NVM_WRITE 0x01u /* CDW10-11: SLBA; CDW12 bits 0-15: NLB, 0's based */
#define VPU_NVM_READ 0x02u

/* ---------------------------------------------------------------------------------
 * Vendor I/O command set: video
 * ------------------------------------------------------------------------------ */

/*
 * Encode Frame.
 *   CDW10: session id
 *   CDW11: VPU_ENCODE_* flags
 *   CDW12: presentation timestamp, low 32 bits; CDW13: high 32 bits
 *   CDW14: size of the output bitstream buffer in bytes
 *   CDW15: size of the input frame in bytes
 *   PRP1/PRP2 (or PRP2 -> PRP list): the raw input frame, laid out as the session's
 *       pixel format with its plane strides
 *   MPTR: IOVA of the output bitstream buffer (contiguous in IOVA space)
 * Completion:
 *   DW0: bitstream bytes written to MPTR
 *   DW1: VPU_FRAME_TYPE_* in bits 0-7, VPU_ENCODED_* flags, and in bits 16-31 how
 *        many inputs before this command's own input the output belongs to (0: this
 *        command's frame). An engine that reorders (B-frames) reports a lag here.
 *   Status: SESSION_NOT_FOUND, OUTPUT_TOO_SMALL (nothing written), ENGINE_FAULT,
 *           SESSION_ABORTED, DATA_TRANSFER_ERROR, INPUT_TOO_SMALL.
 *   On OUTPUT_TOO_SMALL the card keeps the coded frame; the retry of the same frame
 *   (same presentation timestamp) with a larger buffer gets it without coding it again,
 *   so frames already submitted behind it are coded against it and the stream stays
 *   whole in submission order.
 */
#define VPU_IO_ENCODE_FRAME 0x80u
/* Flush: CDW10 session id. Completes once every earlier frame of the session has. */
#define VPU_IO_FLUSH_SESSION 0x81u
/* Nop: completes at once with success, for transport tests and benchmarks. */
#define VPU_IO_NOP 0x82u
/*
 * On-card transcoding. Decoded and scaled pictures live in the card's own frame memory
 * and are named by frame handles; they never cross to the host. A picture is I420 with
 * tight strides. Every handle a command returns must be released (Release Frame) once no
 * longer needed; a controller reset frees them all.
 *
 * Decode Frame.
 *   CDW10: decoder session id (Create Decoder)
 *   CDW11: VPU_DECODE_* flags
 *   CDW12: presentation timestamp, low 32 bits; CDW13: high 32 bits
 *   CDW15: bytes of input (0 with VPU_DECODE_FLUSH)
 *   PRP1/PRP2 (or PRP list): one access unit of the decoder's codec (H.264: Annex-B,
 *       start codes included; parameter sets may precede the picture)
 * Completion:
 *   DW0: handle of the picture the decoder output, or VPU_FRAME_HANDLE_NONE when the
 *        input yielded no picture yet (parameter sets alone; a reordering decoder
 *        holding it). Pictures come out in display order.
 *   DW1: width in bits 0-15, height in bits 16-31 of that picture
 *   Status: SESSION_NOT_FOUND, BITSTREAM_ERROR (the session's decoder is unusable
 *           afterwards), TOO_LARGE (picture over the decoder's maximum), NO_FRAME_MEMORY,
 *           DATA_TRANSFER_ERROR, SESSION_ABORTED.
 */
#define VPU_IO_DECODE_FRAME 0x83u
/*
 * Scale Frame: a new picture in frame memory from an existing one.
 *   CDW10: source frame handle
 *   CDW11: destination width in bits 0-15, height in bits 16-31 (even, >= 16)
 *   CDW12: VPU_SCALE_FILTER_*
 * Completion DW0: handle of the new picture. The source stays valid.
 *   Status: FRAME_NOT_FOUND, INVALID_FIELD, TOO_LARGE, NO_FRAME_MEMORY.
 */
#define VPU_IO_SCALE_FRAME 0x84u
/* Release Frame: CDW10 frame handle. Status FRAME_NOT_FOUND for an unknown handle. */
#define VPU_IO_RELEASE_FRAME 0x85u

#define VPU_DECODE_FLUSH (1u << 0) /* no input: output the next picture the decoder holds */
#define VPU_FRAME_HANDLE_NONE 0xffffffffu

#define VPU_SCALE_FILTER_BILINEAR 0u
#define VPU_SCALE_FILTER_BICUBIC 1u
#define VPU_SCALE_FILTER_LANCZOS3 2u

#define VPU_ENCODE_FORCE_IDR (1u << 0)
#define VPU_ENCODE_END_OF_STREAM (1u << 1)
/* Encode Frame from card frame memory: CDW15 is a frame handle (a picture of exactly the
 * session's width and height, I420), PRP1/PRP2 are unused. The frame stays valid. */
#define VPU_ENCODE_CARD_FRAME (1u << 2)

#define VPU_FRAME_TYPE_MASK 0xffu
#define VPU_FRAME_TYPE_SKIPPED 0x0u /* no picture was produced for this input */
#define VPU_FRAME_TYPE_IDR 0x1u
#define VPU_FRAME_TYPE_I 0x2u
#define VPU_FRAME_TYPE_P 0x3u
#define VPU_FRAME_TYPE_B 0x4u
#define VPU_ENCODED_KEYFRAME (1u << 8)  /* a random-access point (IDR) */
#define VPU_ENCODED_TRUNCATED (1u << 9) /* reserved: cards of version 1 never truncate */
#define VPU_ENCODED_INPUT_LAG_SHIFT 16

/* Reconfigure Session CDW11 flags; CDW12 bitrate (bit/s), CDW13 fps numerator, CDW14 denominator */
#define VPU_RECONFIG_FORCE_IDR (1u << 0)
#define VPU_RECONFIG_BITRATE (1u << 1)
#define VPU_RECONFIG_FRAMERATE (1u << 2)

/* ---------------------------------------------------------------------------------
 * Video parameters
 * ------------------------------------------------------------------------------ */

/* Codecs (vpu_session_params.codec and bit positions in vpu_identify_vpu.codecs) */
#define VPU_CODEC_H264 0u
#define VPU_CODEC_HEVC 1u
#define VPU_CODEC_AV1 2u

/* Pixel formats (vpu_session_params.pixel_format, bit positions in .pixel_formats) */
#define VPU_PIXFMT_I420 0u /* planar Y, U, V; chroma halved both ways */
#define VPU_PIXFMT_NV12 1u /* planar Y, interleaved UV; chroma halved both ways */

/* Rate control */
#define VPU_RC_CBR 0u
#define VPU_RC_VBR 1u
#define VPU_RC_CQP 2u

/* H.264 profiles (profile_idc) */
#define VPU_PROFILE_H264_CONSTRAINED_BASELINE 66u
#define VPU_PROFILE_H264_MAIN 77u
#define VPU_PROFILE_H264_HIGH 100u

/* AV1 profiles: seq_profile + 1 (0 stays "the card's default") */
#define VPU_PROFILE_AV1_MAIN 1u /* seq_profile 0: 8/10-bit 4:2:0 */

/* vpu_session_params.flags */
#define VPU_SESSION_LOW_LATENCY (1u << 0)

/* Engine hint meaning "any engine" */
#define VPU_ENGINE_ANY 0xffffu

/* Create Session's parameters, 64 bytes, pointed to by PRP1. */
struct vpu_session_params {
    uint8_t codec;        /* VPU_CODEC_* */
    uint8_t profile;      /* VPU_PROFILE_*; 0: the card's default */
    uint8_t level;        /* major * 10 + minor (H.264 3.1 = 31, AV1 5.1 = 51); 0: automatic */
    uint8_t pixel_format; /* VPU_PIXFMT_* */
    uint16_t width;       /* luma samples, even */
    uint16_t height;      /* luma samples, even */
    uint32_t fps_num;     /* frame rate numerator */
    uint32_t fps_den;     /* frame rate denominator, non-zero */
    uint32_t stride_y;    /* bytes between luma rows, >= width */
    uint32_t stride_uv;   /* bytes between chroma rows: >= width / 2 (I420), >= width (NV12) */
    uint8_t rate_control; /* VPU_RC_* */
    uint8_t qp;           /* CQP quantiser, 0-51 */
    uint8_t bframes;      /* B-frames between references; cards of version 1 support 0 */
    uint8_t flags;        /* VPU_SESSION_* */
    uint32_t bitrate;     /* target bit/s (CBR, VBR) */
    uint32_t max_bitrate; /* peak bit/s (VBR); 0: same as bitrate */
    uint32_t vbv_size;    /* VBV buffer in bits; 0: one second at bitrate */
    uint32_t gop;         /* frames between IDRs; 0: only the first */
    uint16_t engine_hint; /* engine index, or VPU_ENGINE_ANY */
    uint8_t rsvd[18];
} __attribute__((packed));

/* Create Decoder's parameters, 32 bytes, pointed to by PRP1. */
struct vpu_decoder_params {
    uint8_t codec;        /* VPU_CODEC_* of the input */
    uint8_t rsvd1;
    uint16_t max_width;   /* largest picture the stream may carry; 0: the card's maximum */
    uint16_t max_height;
    uint16_t engine_hint; /* decode engine index, or VPU_ENGINE_ANY */
    uint32_t fps_num;     /* input frame rate if known (pacing); 0: unknown */
    uint32_t fps_den;
    uint8_t rsvd[16];
} __attribute__((packed));

/* ---------------------------------------------------------------------------------
 * Identify Controller (CNS 01h) and its VPU block
 * ------------------------------------------------------------------------------ */

#define VPU_IDENTIFY_MAGIC "VPU1"
#define VPU_INTERFACE_VERSION 1u
/* Load units: one engine fully busy. */
#define VPU_LOAD_UNITS_PER_ENGINE 1000000u

/* Engine kinds (vpu_engine_caps.kind) */
#define VPU_ENGINE_KIND_ENCODE 0u /* raw frames in, bitstream out */
#define VPU_ENGINE_KIND_DECODE 1u /* bitstream in, frames out into card memory */
#define VPU_ENGINE_KIND_SCALE 2u  /* card frames in, resized card frames out */

/* vpu_engine_caps.codec of an engine that has no codec (a scaler) */
#define VPU_CODEC_NONE 0xffu

/* Bits of vpu_engine_caps.profiles, numbered per codec */
#define VPU_H264_PROFILE_BIT_CONSTRAINED_BASELINE (1u << 0)
#define VPU_H264_PROFILE_BIT_MAIN (1u << 1)
#define VPU_H264_PROFILE_BIT_HIGH (1u << 2)
#define VPU_AV1_PROFILE_BIT_MAIN (1u << 0) /* seq_profile 0 */

/* Entries in vpu_identify_vpu.engine_caps */
#define VPU_MAX_ENGINE_CAPS 24u

/*
 * What one engine does with one codec (or, for a scaler, at all), 32 bytes. An engine
 * that handles two codecs has two entries with the same kind and index: its capacity is
 * shared, its pixel rate is per codec.
 */
struct vpu_engine_caps {
    uint8_t engine;      /* index among the card's engines of this kind */
    uint8_t kind;        /* VPU_ENGINE_KIND_* */
    uint8_t codec;       /* VPU_CODEC_*; VPU_CODEC_NONE for a scaler */
    uint8_t max_level;   /* highest level: H.264 level_idc, AV1 seq_level_idx; 0: any */
    uint32_t profiles;   /* VPU_<codec>_PROFILE_BIT_* this engine takes */
    uint16_t max_width;  /* luma samples */
    uint16_t max_height; /* luma samples */
    uint32_t capacity;   /* load units this engine provides */
    uint64_t pixel_rate; /* luma samples per second this engine sustains with this codec */
    uint8_t rsvd[8];
} __attribute__((packed));

/*
 * The VPU block, at the start of Identify Controller's vendor-specific area.
 *
 * The fields up to pixel_rate_per_engine describe a card whose encode engines are all
 * alike. The engine capability table after them describes each engine: what it encodes
 * or decodes, in which profiles, up to what size, and how fast per codec; a card with
 * decode engines or scalers fills it. A card that leaves engine_caps_count at 0 is
 * described by the fields before it alone (every encode engine encodes every codec in
 * .codecs at pixel_rate_per_engine); a card that fills the table keeps those fields
 * filled too (codecs: every codec some encode engine takes; pixel_rate_per_engine:
 * H.264's), so readers that know only them still work.
 */
struct vpu_identify_vpu {
    uint8_t magic[4];                 /* "VPU1" */
    uint16_t version;                 /* VPU_INTERFACE_VERSION */
    uint8_t encode_engines;           /* number of encode engines */
    uint8_t decode_engines;           /* number of decode engines */
    uint32_t capacity_per_engine;     /* load units one engine provides */
    uint32_t codecs;                  /* bitmask of 1 << VPU_CODEC_* */
    uint16_t max_width;               /* luma samples */
    uint16_t max_height;              /* luma samples */
    uint16_t max_sessions_per_engine; /* concurrent sessions one engine accepts */
    uint16_t max_frames_in_flight;    /* Encode Frame commands one session may have queued */
    uint32_t pixel_formats;           /* bitmask of 1 << VPU_PIXFMT_* */
    uint64_t pixel_rate_per_engine;   /* H.264 luma samples per second one engine sustains */
    uint8_t scale_engines;            /* number of scaler engines */
    uint8_t engine_caps_count;        /* valid entries in engine_caps; 0: none (above) */
    uint16_t rsvd38;
    struct vpu_engine_caps engine_caps[VPU_MAX_ENGINE_CAPS];
    uint8_t rsvd[216];
} __attribute__((packed));

/* Identify Controller data structure, 4096 bytes; only the fields vpud reads are named. */
struct vpu_identify_controller {
    uint16_t vid;      /* PCI vendor id */
    uint16_t ssvid;    /* PCI subsystem vendor id */
    char sn[20];       /* serial number, ASCII, space padded */
    char mn[40];       /* model number, ASCII, space padded */
    char fr[8];        /* firmware revision, ASCII, space padded */
    uint8_t rab;       /* recommended arbitration burst */
    uint8_t ieee[3];   /* IEEE OUI */
    uint8_t cmic;      /* multi-path I/O and namespace sharing */
    uint8_t mdts;      /* maximum data transfer size, 2^n pages of CAP.MPSMIN; 0: none */
    uint16_t cntlid;   /* controller id */
    uint32_t ver;      /* version, as VS */
    uint8_t rsvd84[428];
    uint8_t sqes;      /* bits 0-3 required, 4-7 maximum SQ entry size (log2) */
    uint8_t cqes;      /* bits 0-3 required, 4-7 maximum CQ entry size (log2) */
    uint16_t maxcmd;   /* maximum outstanding commands */
    uint32_t nn;       /* number of namespaces */
    uint8_t rsvd520[2552];
    struct vpu_identify_vpu vpu; /* vendor specific, bytes 3072-4095 */
} __attribute__((packed));

/* Identify Namespace (CNS 00h): only what the transport tests read. */
struct vpu_identify_namespace {
    uint64_t nsze; /* namespace size in logical blocks */
    uint64_t ncap;
    uint64_t nuse;
    uint8_t nsfeat;
    uint8_t nlbaf; /* number of LBA formats, 0's based */
    uint8_t flbas; /* bits 0-3: the LBA format in use */
    uint8_t rsvd27[101];
    uint32_t lbaf[16]; /* bits 16-23: LBADS, log2 of the block size */
    uint8_t rsvd192[3904];
} __attribute__((packed));

#define VPU_LBAF_LBADS_SHIFT 16
#define VPU_LBAF_LBADS_MASK 0xffu

/* ---------------------------------------------------------------------------------
 * Vendor log pages
 * ------------------------------------------------------------------------------ */

/* One engine's figures, 64 bytes. */
struct vpu_engine_log_entry {
    uint32_t load;            /* measured load in load units over the last second */
    uint32_t sessions;        /* sessions placed on this engine */
    uint64_t frames;          /* frames encoded since the controller was enabled */
    uint64_t bytes;           /* bitstream bytes produced */
    uint64_t errors;          /* frames that failed */
    uint64_t busy_ns;         /* time spent encoding */
    uint16_t temperature;     /* Kelvin; 0: not reported */
    uint8_t state;            /* VPU_ENGINE_STATE_* */
    uint8_t rsvd[21];
} __attribute__((packed));

#define VPU_ENGINE_STATE_IDLE 0u
#define VPU_ENGINE_STATE_BUSY 1u
#define VPU_ENGINE_STATE_FAULT 2u
#define VPU_MAX_ENGINES 16u

/* Engine log (LID C0h), 1088 bytes. */
struct vpu_engine_log {
    uint32_t engines; /* valid entries */
    uint8_t rsvd[60];
    struct vpu_engine_log_entry engine[16];
} __attribute__((packed));

/* Session log (LID C1h, LSI = session id), 64 bytes. */
struct vpu_session_log {
    uint32_t session_id;
    uint16_t engine;
    uint16_t rsvd;
    uint64_t frames_in;  /* Encode Frame commands accepted */
    uint64_t frames_out; /* pictures produced */
    uint64_t bytes_out;
    uint64_t keyframes;
    uint64_t errors;
    uint8_t rsvd2[16];
} __attribute__((packed));

/* ---------------------------------------------------------------------------------
 * Layout checks
 * ------------------------------------------------------------------------------ */

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(struct vpu_sqe) == 64, "vpu_sqe");
_Static_assert(sizeof(struct vpu_cqe) == 16, "vpu_cqe");
_Static_assert(sizeof(struct vpu_session_params) == 64, "vpu_session_params");
_Static_assert(sizeof(struct vpu_engine_caps) == 32, "vpu_engine_caps");
_Static_assert(sizeof(struct vpu_decoder_params) == 32, "vpu_decoder_params");
_Static_assert(sizeof(struct vpu_identify_vpu) == 1024, "vpu_identify_vpu");
_Static_assert(sizeof(struct vpu_identify_controller) == 4096, "vpu_identify_controller");
_Static_assert(sizeof(struct vpu_identify_namespace) == 4096, "vpu_identify_namespace");
_Static_assert(sizeof(struct vpu_engine_log_entry) == 64, "vpu_engine_log_entry");
_Static_assert(sizeof(struct vpu_engine_log) == 1088, "vpu_engine_log");
_Static_assert(sizeof(struct vpu_session_log) == 64, "vpu_session_log");
#endif

#endif /* VPU_H */
