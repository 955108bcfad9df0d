//! vpud
