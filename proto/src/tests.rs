use super::*;

fn all_client_records() -> Vec<ClientRecord> {
    vec![
        ClientRecord::RegisterBuffer {
            buffer_id: 3,
            size: 1 << 20,
        },
        ClientRecord::UnregisterBuffer { buffer_id: 63 },
        ClientRecord::Frame(FrameRef {
            buffer_id: 1,
            flags: FRAME_FORCE_KEYFRAME,
            offset: 4096,
            length: 1382400,
            pts: u64::MAX - 1,
        }),
        ClientRecord::AccessUnit(FrameRef {
            buffer_id: 1,
            flags: 0,
            offset: 4096,
            length: 70_000,
            pts: 3,
        }),
        ClientRecord::EndOfStream,
    ]
}

fn all_daemon_records() -> Vec<DaemonRecord> {
    vec![
        DaemonRecord::Hello(Hello {
            version: 1,
            window: 8,
            max_buffers: MAX_BUFFERS,
            max_record_len: MAX_RECORD_LEN as u32,
            frame_size: 1382400,
            width: 1280,
            height: 720,
            pixel_format: 0,
            session: 17,
            renditions: 0,
        }),
        DaemonRecord::FrameDone {
            buffer_id: 2,
            pts: 99,
        },
        DaemonRecord::Packet(PacketChunk {
            pts: 7,
            rendition: 3,
            total_len: 3,
            frame_type: WireFrameType::Idr,
            flags: PACKET_KEYFRAME,
            payload: vec![0, 0, 1],
        }),
        DaemonRecord::EndOfStreamAck {
            frames_in: 10,
            frames_out: 10,
        },
        DaemonRecord::BufferReleased { buffer_id: 5 },
        DaemonRecord::Error {
            code: ErrorCode::ProtocolViolation as u32,
            message: "frame beyond the window of 8".into(),
        },
    ]
}

#[test]
fn every_client_record_round_trips() {
    for r in all_client_records() {
        let bytes = r.encode();
        assert_eq!(bytes[1], VERSION);
        assert_eq!(ClientRecord::decode(&bytes), Ok(r));
    }
}

#[test]
fn every_daemon_record_round_trips() {
    for r in all_daemon_records() {
        assert_eq!(DaemonRecord::decode(&r.encode()), Ok(r));
    }
}

#[test]
fn frame_layout_is_little_endian_and_documented() {
    let bytes = ClientRecord::Frame(FrameRef {
        buffer_id: 0x0102_0304,
        flags: 1,
        offset: 0x10,
        length: 0x20,
        pts: 0x30,
    })
    .encode();
    assert_eq!(
        bytes,
        [
            0x03, 1, 0, 0, 32, 0, 0, 0, // header
            4, 3, 2, 1, 1, 0, 0, 0, // buffer_id, flags
            0x10, 0, 0, 0, 0, 0, 0, 0, // offset
            0x20, 0, 0, 0, 0, 0, 0, 0, // length, reserved
            0x30, 0, 0, 0, 0, 0, 0, 0, // pts
        ]
    );
}

#[test]
fn directions_do_not_mix() {
    for r in all_daemon_records() {
        assert!(matches!(
            ClientRecord::decode(&r.encode()),
            Err(ProtoError::UnknownKind { .. })
        ));
    }
    for r in all_client_records() {
        assert!(matches!(
            DaemonRecord::decode(&r.encode()),
            Err(ProtoError::UnknownKind { .. })
        ));
    }
}

#[test]
fn malformed_records_are_typed_errors() {
    let frame = all_client_records()[2].encode();
    assert_eq!(
        ClientRecord::decode(&frame[..5]),
        Err(ProtoError::ShortHeader { len: 5 })
    );
    let mut bad = frame.clone();
    bad[1] = 2;
    assert_eq!(
        ClientRecord::decode(&bad),
        Err(ProtoError::UnsupportedVersion { got: 2 })
    );
    let mut bad = frame.clone();
    bad[2] = 1;
    assert!(matches!(
        ClientRecord::decode(&bad),
        Err(ProtoError::ReservedNonZero { .. })
    ));
    let mut bad = frame.clone();
    bad.pop();
    assert!(matches!(
        ClientRecord::decode(&bad),
        Err(ProtoError::LengthMismatch { .. })
    ));
    let mut bad = frame.clone();
    bad[4] = 31;
    bad.pop();
    assert!(matches!(
        ClientRecord::decode(&bad),
        Err(ProtoError::BodyLength { .. })
    ));
    let mut bad = frame.clone();
    bad[12] = 0x02; // unknown flag
    assert!(matches!(
        ClientRecord::decode(&bad),
        Err(ProtoError::UnknownFlags { .. })
    ));
    let mut bad = frame.clone();
    bad[28] = 9; // reserved after length
    assert!(matches!(
        ClientRecord::decode(&bad),
        Err(ProtoError::ReservedNonZero { .. })
    ));
    let big = vec![0u8; MAX_RECORD_LEN + 1];
    assert!(matches!(
        ClientRecord::decode(&big),
        Err(ProtoError::RecordTooLong { .. })
    ));
    let reg = ClientRecord::RegisterBuffer {
        buffer_id: 64,
        size: 10,
    }
    .encode();
    assert!(matches!(
        ClientRecord::decode(&reg),
        Err(ProtoError::OutOfRange {
            field: "buffer_id",
            ..
        })
    ));
    let reg = ClientRecord::RegisterBuffer {
        buffer_id: 0,
        size: MAX_BUFFER_LEN + 1,
    }
    .encode();
    assert!(matches!(
        ClientRecord::decode(&reg),
        Err(ProtoError::OutOfRange { field: "size", .. })
    ));
}

#[test]
fn error_messages_are_bounded_and_utf8() {
    let long = "é".repeat(MAX_ERROR_MESSAGE_LEN);
    let bytes = DaemonRecord::Error {
        code: 1,
        message: long,
    }
    .encode();
    match DaemonRecord::decode(&bytes) {
        Ok(DaemonRecord::Error { message, .. }) => {
            assert!(message.len() <= MAX_ERROR_MESSAGE_LEN)
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut bad = DaemonRecord::Error {
        code: 1,
        message: "ab".into(),
    }
    .encode();
    bad[HEADER_LEN + 8] = 0xff;
    assert_eq!(DaemonRecord::decode(&bad), Err(ProtoError::MessageNotUtf8));
}

#[test]
fn large_packets_are_chunked_and_reassembled() {
    let data: Vec<u8> = (0..(MAX_PACKET_CHUNK * 2 + 100))
        .map(|i| (i % 251) as u8)
        .collect();
    let packet = WirePacket {
        pts: 42,
        rendition: 2,
        keyframe: true,
        frame_type: WireFrameType::Idr,
        data,
    };
    let records: Vec<Vec<u8>> = packet_chunks(&packet).map(|r| r.encode()).collect();
    assert_eq!(records.len(), 3);
    let mut asm = PacketAssembler::new();
    let mut out = None;
    for (i, bytes) in records.iter().enumerate() {
        assert!(bytes.len() <= MAX_RECORD_LEN);
        let DaemonRecord::Packet(chunk) = DaemonRecord::decode(bytes).unwrap() else {
            panic!("not a packet");
        };
        let r = asm.push(chunk).unwrap();
        assert_eq!(r.is_some(), i == 2);
        out = r;
    }
    assert_eq!(out, Some(packet));
}

#[test]
fn empty_packet_is_one_record() {
    let packet = WirePacket {
        pts: 1,
        rendition: 0,
        keyframe: false,
        frame_type: WireFrameType::Skipped,
        data: vec![],
    };
    let chunks: Vec<_> = packet_chunks(&packet).collect();
    assert_eq!(chunks.len(), 1);
    let DaemonRecord::Packet(c) = chunks[0].clone() else {
        panic!()
    };
    assert_eq!(PacketAssembler::new().push(c).unwrap(), Some(packet));
}

#[test]
fn assembler_rejects_inconsistent_chunks() {
    let mut asm = PacketAssembler::new();
    let first = PacketChunk {
        pts: 1,
        rendition: 1,
        total_len: 10,
        frame_type: WireFrameType::P,
        flags: PACKET_CONTINUES,
        payload: vec![1; 6],
    };
    assert_eq!(asm.push(first.clone()).unwrap(), None);
    let wrong_pts = PacketChunk {
        pts: 2,
        flags: 0,
        payload: vec![1; 4],
        ..first.clone()
    };
    assert!(matches!(
        asm.push(wrong_pts),
        Err(ProtoError::ChunkMismatch { .. })
    ));
    let mut asm = PacketAssembler::new();
    asm.push(first.clone()).unwrap();
    let too_long = PacketChunk {
        flags: 0,
        payload: vec![1; 5],
        ..first.clone()
    };
    assert!(matches!(
        asm.push(too_long),
        Err(ProtoError::PacketLength { .. })
    ));
    let mut asm = PacketAssembler::new();
    asm.push(first.clone()).unwrap();
    let short = PacketChunk {
        flags: 0,
        payload: vec![1; 3],
        ..first
    };
    assert!(matches!(
        asm.push(short),
        Err(ProtoError::PacketLength { .. })
    ));
}

/// Arbitrary bytes and mutations of valid records never panic either decoder.
#[test]
fn random_input_never_panics() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds: Vec<Vec<u8>> = all_client_records()
        .iter()
        .map(|r| r.encode())
        .chain(all_daemon_records().iter().map(|r| r.encode()))
        .collect();
    for i in 0..20_000 {
        let mut buf = seeds[i % seeds.len()].clone();
        let flips = next() % 4;
        for _ in 0..=flips {
            if buf.is_empty() {
                break;
            }
            let at = (next() as usize) % buf.len();
            buf[at] = next() as u8;
        }
        if next() % 8 == 0 {
            buf.truncate((next() as usize) % (buf.len() + 1));
        }
        let _ = ClientRecord::decode(&buf);
        let _ = DaemonRecord::decode(&buf);
    }
}
