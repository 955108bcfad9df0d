//! Present so that cargo applies this crate's `[build-dependencies]` (the features of
//! crates that build scripts and proc-macros use).

fn main() {}
