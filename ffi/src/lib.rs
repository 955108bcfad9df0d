//! The VPU card's host interface, as Rust bindings of `ffi/include/vpu.h`.
//!
//! The C header is the one source of truth for the card's registers, queue entries,
//! opcodes, status codes and data structures, written as a hardware vendor ships it.
//! `bindings.rs` is generated from it by `ffi/generate.sh` (bindgen) and committed, so a
//! machine without libclang builds the workspace; CI regenerates it and fails on a
//! difference. bindgen's layout assertions are compiled into this crate, and the tests
//! below compare every structure against the layout a C compiler gives the header.
//!
//! Nothing else in the workspace names a raw binding outside this crate's re-exports;
//! the lint allows that generated code needs live here alone.
#![no_std]

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_debug_implementations,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    unsafe_op_in_unsafe_fn
)]
mod bindings;

pub use bindings::*;

/// `VPU_IDENTIFY_MAGIC` as the four bytes a card puts at the start of its VPU block.
pub const IDENTIFY_MAGIC: [u8; 4] = *b"VPU1";

#[cfg(test)]
mod tests;
