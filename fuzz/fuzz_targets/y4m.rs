//! The Y4M reader (`driver/src/media/y4m.rs`): arbitrary bytes as a `.y4m` file.
//!
//! Reading never panics; every frame read has exactly the header's frame size; an
//! accepted header survives `to_line` → `parse`; and writing what was read with
//! `Y4mWriter` and reading it back yields the same header and frames.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vpu_driver::media::{Y4mHeader, Y4mReader, Y4mWriter};

/// Frames read per input, to keep each run short.
const MAX_FRAMES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Y4mReader::new(Cursor::new(data)) else {
        return;
    };
    let header = reader.header().clone();
    let line = header.to_line();
    assert!(line.ends_with('\n'));
    assert_eq!(
        Y4mHeader::parse(line.trim_end_matches('\n')).ok(),
        Some(header.clone())
    );

    let mut frames = Vec::new();
    let mut buf = Vec::new();
    while frames.len() < MAX_FRAMES {
        match reader.read_frame(&mut buf) {
            Ok(true) => {
                assert_eq!(buf.len(), header.frame_size());
                frames.push(buf.clone());
                assert_eq!(reader.frames_read(), frames.len() as u64);
            }
            Ok(false) => break,
            Err(e) => {
                let _ = e.to_string();
                assert_eq!(reader.frames_read(), frames.len() as u64);
                break;
            }
        }
    }

    let mut writer = Y4mWriter::new(Vec::new(), &header).expect("writing to memory");
    for f in &frames {
        writer.write_frame(f).expect("a frame of the stream's size");
    }
    let written = writer.finish().expect("writing to memory");
    let mut again = Y4mReader::new(Cursor::new(&written[..])).expect("own output parses");
    assert_eq!(again.header(), &header);
    for f in &frames {
        assert!(again.read_frame(&mut buf).expect("own frame reads"));
        assert_eq!(&buf, f);
    }
    assert!(!again.read_frame(&mut buf).expect("clean end"));
});
