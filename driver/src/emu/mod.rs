//! The emulated VPU card: an NVMe controller model with video engines running a software H.264 encoder.
