//! The client side of the data channel against a scripted daemon end on a socket pair:
//! the normal flow, back-pressure, chunked packets, and every way the daemon's records
//! can be wrong.

use std::os::fd::{AsFd, OwnedFd};

use super::*;
use vpud_proto::socket::pair;
use vpud_proto::{kind, packet_chunks, WireFrameType, HEADER_LEN, VERSION};

const W: u32 = 8;
const H: u32 = 4;
const FRAME: u32 = W * H * 3 / 2;

fn hello(window: u16) -> DaemonRecord {
    DaemonRecord::Hello(Hello {
        version: 1,
        window,
        max_buffers: 4,
        max_record_len: MAX_RECORD_LEN as u32,
        frame_size: FRAME,
        width: W,
        height: H,
        pixel_format: 0,
        session: 7,
        renditions: 0,
    })
}

/// The daemon's end: a socket and a receive buffer.
struct FakeDaemon {
    sock: SeqPacket,
    buf: Vec<u8>,
}

impl FakeDaemon {
    async fn send(&self, r: &DaemonRecord) {
        self.sock.send(&r.encode(), None).await.unwrap();
    }

    async fn recv(&mut self) -> (ClientRecord, Vec<OwnedFd>) {
        let got = self.sock.recv(&mut self.buf).await.unwrap();
        (ClientRecord::decode(&self.buf[..got.len]).unwrap(), got.fds)
    }
}

fn setup() -> (OwnedFd, FakeDaemon) {
    let (client, daemon) = pair().unwrap();
    let daemon = FakeDaemon {
        sock: SeqPacket::new(daemon).unwrap(),
        buf: vec![0; MAX_RECORD_LEN],
    };
    (client, daemon)
}

async fn open_with(
    daemon: &mut FakeDaemon,
    client: OwnedFd,
    window: u16,
) -> (DataChannel, OwnedFd) {
    daemon.send(&hello(window)).await;
    let channel = DataChannel::open(client, "/org/vpud/Vpud1/session/7".into())
        .await
        .unwrap();
    let (record, mut fds) = daemon.recv().await;
    let ClientRecord::RegisterBuffer { buffer_id: 0, size } = record else {
        panic!("expected register-buffer, got {record:?}");
    };
    assert_eq!(fds.len(), 1);
    let memfd = fds.remove(0);
    assert!(size >= u64::from(window) * u64::from(FRAME));
    // The pool is sealed against shrinking, as the daemon requires.
    assert!(nix::unistd::ftruncate(&memfd, 1).is_err());
    (channel, memfd)
}

fn frame_bytes(memfd: &OwnedFd, offset: u64) -> Vec<u8> {
    let mut b = vec![0u8; FRAME as usize];
    let n = nix::sys::uio::pread(memfd.as_fd(), &mut b, offset as i64).unwrap();
    assert_eq!(n, b.len());
    b
}

#[tokio::test]
async fn frames_go_by_reference_and_packets_come_back_in_chunks() {
    let (client, mut daemon) = setup();
    let (mut ch, memfd) = open_with(&mut daemon, client, 2).await;
    let big = vec![0xabu8; vpud_proto::MAX_PACKET_CHUNK + 100];

    let daemon_task = tokio::spawn(async move {
        let mut frames = Vec::new();
        for _ in 0..3 {
            let (ClientRecord::Frame(f), fds) = daemon.recv().await else {
                panic!("expected a frame");
            };
            assert!(fds.is_empty());
            assert_eq!(f.length, FRAME);
            let data = frame_bytes(&memfd, f.offset);
            assert!(
                data.iter().all(|&b| b == f.pts as u8 + 1),
                "frame {} content",
                f.pts
            );
            frames.push(f);
            daemon
                .send(&DaemonRecord::FrameDone {
                    buffer_id: f.buffer_id,
                    pts: f.pts,
                })
                .await;
            let packet = WirePacket {
                pts: f.pts,
                rendition: 0,
                keyframe: f.force_keyframe(),
                frame_type: if f.force_keyframe() {
                    WireFrameType::Idr
                } else {
                    WireFrameType::P
                },
                data: if f.pts == 1 {
                    big.clone()
                } else {
                    vec![f.pts as u8; 10]
                },
            };
            for r in packet_chunks(&packet) {
                daemon.send(&r).await;
            }
        }
        let (r, _) = daemon.recv().await;
        assert_eq!(r, ClientRecord::EndOfStream);
        daemon
            .send(&DaemonRecord::EndOfStreamAck {
                frames_in: 3,
                frames_out: 3,
            })
            .await;
        frames
    });

    for pts in 0..3u64 {
        ch.send_frame_with(|b| b.fill(pts as u8 + 1), pts, pts == 0)
            .await
            .unwrap();
        assert!(ch.frames_in_flight() <= 2);
    }
    let mut packets: Vec<Packet> = ch.ready_packets().collect();
    packets.extend(ch.drain().await.unwrap());
    assert_eq!(ch.next_packet().await.unwrap(), None);
    let frames = daemon_task.await.unwrap();

    assert_eq!(packets.iter().map(|p| p.pts).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(packets[0].keyframe && !packets[1].keyframe);
    assert_eq!(packets[1].data.len(), vpud_proto::MAX_PACKET_CHUNK + 100);
    assert!(frames[0].force_keyframe());
    // Two slots: the third frame reused the first one's memory after its FRAME_DONE.
    assert_eq!(frames[2].offset, frames[0].offset);
    assert_ne!(frames[1].offset, frames[0].offset);
    let c = ch.counters();
    assert_eq!((c.frames_sent, c.packets, c.keyframes), (3, 3, 1));
    assert!(matches!(
        ch.send_frame(&[0; FRAME as usize], 9, false).await,
        Err(ClientError::AfterEndOfStream { .. })
    ));
}

#[tokio::test]
async fn wrong_frame_size_is_refused_locally() {
    let (client, mut daemon) = setup();
    let (mut ch, _memfd) = open_with(&mut daemon, client, 2).await;
    let err = ch.send_frame(&[0; 5], 0, false).await.unwrap_err();
    assert!(
        matches!(err, ClientError::FrameSize { got: 5, expected, .. } if expected == FRAME as usize),
        "{err}"
    );
}

#[tokio::test]
async fn an_error_record_ends_the_session_with_its_reason() {
    let (client, mut daemon) = setup();
    let (mut ch, _memfd) = open_with(&mut daemon, client, 1).await;
    ch.send_frame(&[1; FRAME as usize], 0, false).await.unwrap();
    daemon
        .send(&DaemonRecord::Error {
            code: ErrorCode::CardFailed as u32,
            message: "card 0 failed and no other card can take the session".into(),
        })
        .await;
    drop(daemon);
    // The window (1) is full, so the next frame has to read the daemon's records.
    let err = ch
        .send_frame(&[1; FRAME as usize], 1, false)
        .await
        .unwrap_err();
    let ClientError::SessionFailed { code, message, .. } = &err else {
        panic!("expected SessionFailed, got {err:?}");
    };
    assert_eq!(*code, 4);
    assert!(
        message.starts_with("card-failed: card 0 failed"),
        "{message}"
    );
}

/// Each bad record from the daemon, sent after a frame, ends in a typed error.
#[tokio::test]
async fn wrong_records_from_the_daemon_are_protocol_errors() {
    let mut bad_header = DaemonRecord::FrameDone {
        buffer_id: 0,
        pts: 0,
    }
    .encode();
    bad_header[1] = VERSION + 1;
    let mut short = DaemonRecord::FrameDone {
        buffer_id: 0,
        pts: 0,
    }
    .encode();
    short.truncate(HEADER_LEN + 3);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unknown pts",
            DaemonRecord::FrameDone {
                buffer_id: 0,
                pts: 99,
            }
            .encode(),
        ),
        (
            "unknown buffer",
            DaemonRecord::FrameDone {
                buffer_id: 3,
                pts: 0,
            }
            .encode(),
        ),
        ("second hello", hello(1).encode()),
        (
            "ack before end of stream",
            DaemonRecord::EndOfStreamAck {
                frames_in: 0,
                frames_out: 0,
            }
            .encode(),
        ),
        ("bad version", bad_header),
        ("short body", short),
        ("client kind", vec![kind::FRAME, VERSION, 0, 0, 0, 0, 0, 0]),
        ("garbage", vec![0xee; 3]),
    ];
    for (what, bytes) in cases {
        let (client, mut daemon) = setup();
        let (mut ch, _memfd) = open_with(&mut daemon, client, 1).await;
        ch.send_frame(&[1; FRAME as usize], 0, false).await.unwrap();
        daemon.sock.send(&bytes, None).await.unwrap();
        let err = ch
            .send_frame(&[1; FRAME as usize], 1, false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::ChannelProtocol { .. }),
            "{what}: expected a protocol error, got {err:?}"
        );
    }
}

#[tokio::test]
async fn the_first_record_must_be_hello() {
    let (client, daemon) = setup();
    daemon
        .send(&DaemonRecord::FrameDone {
            buffer_id: 0,
            pts: 0,
        })
        .await;
    let err = DataChannel::open(client, "s".into()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::ChannelProtocol { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_closed_channel_is_reported() {
    let (client, mut daemon) = setup();
    let (mut ch, _memfd) = open_with(&mut daemon, client, 1).await;
    ch.send_frame(&[1; FRAME as usize], 0, false).await.unwrap();
    drop(daemon);
    let err = ch.next_packet().await.unwrap_err();
    assert!(matches!(err, ClientError::ChannelClosed { .. }), "{err:?}");
}

#[tokio::test]
async fn random_bytes_from_the_daemon_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let (client, mut daemon) = setup();
        let (mut ch, _memfd) = open_with(&mut daemon, client, 1).await;
        ch.send_frame(&[1; FRAME as usize], 0, false).await.unwrap();
        let len = (next() % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= HEADER_LEN && next() % 2 == 0 {
            // Often a valid header, so the body decoders see the noise too.
            bytes[1] = VERSION;
            bytes[2] = 0;
            bytes[3] = 0;
            bytes[4..8].copy_from_slice(&((len - HEADER_LEN) as u32).to_le_bytes());
        }
        daemon.sock.send(&bytes, None).await.unwrap();
        drop(daemon);
        // Whatever the bytes were, the outcome is a value, not a panic.
        let _ = ch.next_packet().await;
    }
}
