//! NVMe transport: controller bring-up, admin and I/O queue pairs, PRPs, doorbells, completions.
