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

/// Structures of the host interface that are plain data: what the host and the card
/// exchange through DMA memory (queue entries, parameter blocks, identify data, logs),
/// viewed as bytes and made from bytes by both sides.
///
/// # Safety
/// Implementors must be `repr(C, packed)` structures of integers and integer arrays: no
/// padding (every byte initialised) and valid for every bit pattern.
pub unsafe trait Pod: Copy + Default {}

// SAFETY (for each impl below): a `repr(C, packed)` structure of integers and integer
// arrays generated from `vpu.h` (the layout tests check there is no padding), so every bit
// pattern is a valid value and every byte is initialised.
macro_rules! pod {
    ($($t:ty),+ $(,)?) => { $(
        // SAFETY: see above.
        unsafe impl Pod for $t {}
    )+ };
}
pod!(
    vpu_sqe,
    vpu_cqe,
    vpu_session_params,
    vpu_decoder_params,
    vpu_identify_controller,
    vpu_identify_namespace,
    vpu_engine_log,
    vpu_session_log,
);

/// The bytes of a host-interface structure.
pub fn as_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all `size_of::<T>()` bytes are initialised; the
    // slice borrows `v`.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
}

/// A host-interface structure from the first bytes of `bytes`, zero-filled when `bytes`
/// is shorter (as a device model reads a structure the host may have left short).
pub fn from_bytes<T: Pod>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = bytes.len().min(core::mem::size_of::<T>());
    // SAFETY: `T: Pod` is valid for every bit pattern; at most `size_of::<T>()` bytes are
    // copied into it from a distinct slice.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}

/// A host-interface structure from `bytes`, or `None` when `bytes` is too short (as the
/// driver reads what a device wrote, trusting nothing).
pub fn read_struct<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes (checked), the read is unaligned,
    // and `T: Pod` is valid for any bit pattern.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// `VPU_IDENTIFY_MAGIC` as the four bytes a card puts at the start of its VPU block.
pub const IDENTIFY_MAGIC: [u8; 4] = *b"VPU1";

#[cfg(test)]
mod tests;
