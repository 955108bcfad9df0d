//! The video command set on top of the NVMe transport: identify, sessions, frames in, packets out.
