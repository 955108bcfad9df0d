//! Layout checks: every structure of `vpu.h` as Rust sees it, against what a C compiler
//! makes of the header. The C side is compiled and run when a C compiler is present.
extern crate std;

use super::*;
use core::mem::{offset_of, size_of};
use std::format;
use std::process::Command;
use std::string::String;
use std::vec::Vec;

/// (C expression, Rust value) pairs for sizes and offsets of every structure.
fn layout() -> Vec<(&'static str, usize)> {
    macro_rules! off {
        ($t:ident, $f:ident) => {
            (
                concat!(
                    "offsetof(struct ",
                    stringify!($t),
                    ", ",
                    stringify!($f),
                    ")"
                ),
                offset_of!($t, $f),
            )
        };
    }
    macro_rules! size {
        ($t:ident) => {
            (
                concat!("sizeof(struct ", stringify!($t), ")"),
                size_of::<$t>(),
            )
        };
    }
    std::vec![
        size!(vpu_sqe),
        off!(vpu_sqe, cid),
        off!(vpu_sqe, nsid),
        off!(vpu_sqe, mptr),
        off!(vpu_sqe, prp1),
        off!(vpu_sqe, prp2),
        off!(vpu_sqe, cdw10),
        off!(vpu_sqe, cdw15),
        size!(vpu_cqe),
        off!(vpu_cqe, dw1),
        off!(vpu_cqe, sq_head),
        off!(vpu_cqe, sq_id),
        off!(vpu_cqe, cid),
        off!(vpu_cqe, status),
        size!(vpu_session_params),
        off!(vpu_session_params, width),
        off!(vpu_session_params, fps_num),
        off!(vpu_session_params, stride_uv),
        off!(vpu_session_params, rate_control),
        off!(vpu_session_params, bitrate),
        off!(vpu_session_params, gop),
        off!(vpu_session_params, engine_hint),
        size!(vpu_decoder_params),
        off!(vpu_decoder_params, max_width),
        off!(vpu_decoder_params, max_height),
        off!(vpu_decoder_params, engine_hint),
        off!(vpu_decoder_params, fps_num),
        off!(vpu_decoder_params, fps_den),
        off!(vpu_decoder_params, rsvd),
        size!(vpu_identify_vpu),
        off!(vpu_identify_vpu, capacity_per_engine),
        off!(vpu_identify_vpu, max_width),
        off!(vpu_identify_vpu, pixel_formats),
        off!(vpu_identify_vpu, pixel_rate_per_engine),
        off!(vpu_identify_vpu, engine_caps_count),
        off!(vpu_identify_vpu, engine_caps),
        off!(vpu_identify_vpu, rsvd),
        size!(vpu_engine_caps),
        off!(vpu_engine_caps, profiles),
        off!(vpu_engine_caps, capacity),
        off!(vpu_engine_caps, pixel_rate),
        size!(vpu_identify_controller),
        off!(vpu_identify_controller, sn),
        off!(vpu_identify_controller, mn),
        off!(vpu_identify_controller, fr),
        off!(vpu_identify_controller, mdts),
        off!(vpu_identify_controller, sqes),
        off!(vpu_identify_controller, nn),
        off!(vpu_identify_controller, vpu),
        size!(vpu_identify_namespace),
        off!(vpu_identify_namespace, flbas),
        off!(vpu_identify_namespace, lbaf),
        size!(vpu_engine_log_entry),
        off!(vpu_engine_log_entry, busy_ns),
        off!(vpu_engine_log_entry, temperature),
        size!(vpu_engine_log),
        off!(vpu_engine_log, engine),
        size!(vpu_session_log),
        off!(vpu_session_log, frames_in),
        off!(vpu_session_log, errors),
    ]
}

#[test]
fn sizes_match_the_interface_document() {
    assert_eq!(size_of::<vpu_sqe>(), VPU_SQE_SIZE as usize);
    assert_eq!(size_of::<vpu_cqe>(), VPU_CQE_SIZE as usize);
    assert_eq!(
        size_of::<vpu_identify_controller>(),
        VPU_IDENTIFY_SIZE as usize
    );
    assert_eq!(offset_of!(vpu_identify_controller, vpu), 3072);
    assert_eq!(&IDENTIFY_MAGIC[..], &VPU_IDENTIFY_MAGIC[..4]);
}

#[test]
fn layout_matches_the_c_compiler() {
    let Some(cc) = ["cc", "gcc", "clang"]
        .into_iter()
        .find(|cc| Command::new(cc).arg("--version").output().is_ok())
    else {
        std::eprintln!("no C compiler: layout checked by bindgen's assertions only");
        return;
    };
    let pairs = layout();
    let mut program = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"vpu.h\"\nint main(void) {\n",
    );
    for (expr, _) in &pairs {
        program.push_str(&format!("  printf(\"%zu\\n\", (size_t)({expr}));\n"));
    }
    program.push_str("  return 0;\n}\n");

    let dir = std::env::temp_dir().join(format!("vpu-ffi-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, program).expect("write layout.c");
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let status = Command::new(cc)
        .args(["-std=c11", "-I", include, "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "vpu.h does not compile");
    let out = Command::new(&exe).output().expect("run layout program");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let c_values: Vec<usize> = text.lines().map(|l| l.parse().expect("number")).collect();
    assert_eq!(c_values.len(), pairs.len());
    for ((expr, rust), c) in pairs.iter().zip(c_values) {
        assert_eq!(*rust, c, "{expr}: Rust {rust}, C {c}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
