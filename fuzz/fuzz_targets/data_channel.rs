//! The data-channel record codec (`daemon/src/channel/proto.rs`, `docs/data-channel.md`).
//!
//! The input is a sequence of datagrams, each prefixed by a 2-byte little-endian length.
//! Every datagram is decoded both as a client record (what the daemon receives) and as a
//! daemon record (what a client receives). A record that decodes must re-encode to the
//! very same bytes (the codec checks every length, reserved field and flag, so there is
//! exactly one encoding per record) and decode again to an equal value. Packet records
//! are also fed to a `PacketAssembler`, whose output must respect the declared lengths.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vpud::channel::proto::{
    packet_chunks, ClientRecord, DaemonRecord, PacketAssembler, ProtoError, HEADER_LEN,
    MAX_ERROR_MESSAGE_LEN, MAX_PACKET_CHUNK, MAX_PACKET_LEN, MAX_RECORD_LEN,
};

fn datagrams(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (d, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some(d)
    })
}

fn check_client(bytes: &[u8]) {
    match ClientRecord::decode(bytes) {
        Ok(record) => {
            let again = record.encode();
            assert_eq!(
                again, bytes,
                "client record {record:?} re-encodes differently"
            );
            assert_eq!(ClientRecord::decode(&again), Ok(record));
        }
        Err(e) => check_error(bytes, &e),
    }
}

fn check_daemon(bytes: &[u8], assembler: &mut PacketAssembler) {
    match DaemonRecord::decode(bytes) {
        Ok(record) => {
            let again = record.encode();
            assert_eq!(
                again, bytes,
                "daemon record {record:?} re-encodes differently"
            );
            assert_eq!(DaemonRecord::decode(&again).as_ref(), Ok(&record));
            match record {
                DaemonRecord::Packet(chunk) => {
                    assert!(chunk.payload.len() <= MAX_PACKET_CHUNK);
                    assert!(chunk.total_len as usize <= MAX_PACKET_LEN);
                    assert!(chunk.payload.len() <= chunk.total_len as usize);
                    let total = chunk.total_len;
                    match assembler.push(chunk) {
                        Ok(Some(packet)) => {
                            assert_eq!(packet.data.len(), total as usize);
                            // The daemon's own splitting of the packet must reassemble to it.
                            let mut fresh = PacketAssembler::new();
                            let mut out = None;
                            for c in packet_chunks(&packet) {
                                let DaemonRecord::Packet(c) = c else {
                                    panic!("packet_chunks yielded {c:?}");
                                };
                                let encoded = DaemonRecord::Packet(c.clone()).encode();
                                assert!(encoded.len() <= MAX_RECORD_LEN);
                                assert!(out.is_none(), "a chunk followed the last one");
                                out = fresh.push(c).expect("own chunks reassemble");
                            }
                            assert_eq!(out.as_ref(), Some(&packet));
                        }
                        Ok(None) => {}
                        // A broken sequence of chunks; the client gives up on the channel.
                        Err(_) => *assembler = PacketAssembler::new(),
                    }
                }
                DaemonRecord::Error { message, .. } => {
                    assert!(message.len() <= MAX_ERROR_MESSAGE_LEN);
                }
                _ => {}
            }
        }
        Err(e) => check_error(bytes, &e),
    }
}

/// Errors must be consistent with the input and render as text without panicking.
fn check_error(bytes: &[u8], e: &ProtoError) {
    let _ = e.to_string();
    match e {
        ProtoError::ShortHeader { len } => {
            assert!(*len < HEADER_LEN);
            assert_eq!(*len, bytes.len());
        }
        ProtoError::RecordTooLong { len } => assert!(*len > MAX_RECORD_LEN),
        _ => assert!(bytes.len() >= HEADER_LEN && bytes.len() <= MAX_RECORD_LEN),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut assembler = PacketAssembler::new();
    for d in datagrams(data) {
        check_client(d);
        check_daemon(d, &mut assembler);
    }
});
