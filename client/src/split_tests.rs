//! The split channel against a scripted daemon end on a socket pair: frames by reference
//! from a second registered memfd beside the pool's copies, the shared window, and a
//! sender that fails at once when the receiving side sees the channel end.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::*;
use crate::channel::DataChannel;
use crate::pool::FramePool;
use vpud_proto::socket::pair;
use vpud_proto::{packet_chunks, WireFrameType, WirePacket, MAX_RECORD_LEN};

const W: u32 = 8;
const H: u32 = 4;
const FRAME: u32 = W * H * 3 / 2;

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

    async fn frame_done_and_packet(&self, f: &FrameRef) {
        self.send(&DaemonRecord::FrameDone {
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
            data: vec![f.pts as u8; 12],
        };
        for r in packet_chunks(&packet) {
            self.send(&r).await;
        }
    }
}

/// A split channel of window `window` and the daemon's end, past hello and registration.
async fn open(window: u16) -> (FrameSender, PacketReceiver, FakeDaemon) {
    let (client, daemon) = pair().unwrap();
    let mut daemon = FakeDaemon {
        sock: SeqPacket::new(daemon).unwrap(),
        buf: vec![0; MAX_RECORD_LEN],
    };
    daemon
        .send(&DaemonRecord::Hello(Hello {
            version: 1,
            window,
            max_buffers: 4,
            max_record_len: MAX_RECORD_LEN as u32,
            frame_size: FRAME,
            width: W,
            height: H,
            pixel_format: 0,
            session: 3,
            renditions: 0,
        }))
        .await;
    let channel = DataChannel::open(client, "/org/vpud/Vpud1/session/3".into())
        .await
        .unwrap();
    let (r, _) = daemon.recv().await;
    assert!(matches!(
        r,
        ClientRecord::RegisterBuffer { buffer_id: 0, .. }
    ));
    let (tx, rx) = channel.split();
    (tx, rx, daemon)
}

#[tokio::test]
async fn frames_by_reference_and_by_copy_share_the_window() {
    let (mut tx, mut rx, mut daemon) = open(2).await;
    // A second memfd, as a media framework's buffer pool would make.
    let mut own = FramePool::new(3, FRAME as usize).unwrap();
    own.slot_mut(1).unwrap().fill(9);
    tx.register_buffer(1, own.fd(), own.len() as u64)
        .await
        .unwrap();
    let (r, fds) = daemon.recv().await;
    assert_eq!(
        r,
        ClientRecord::RegisterBuffer {
            buffer_id: 1,
            size: own.len() as u64
        }
    );
    assert_eq!(fds.len(), 1);
    // Buffer 0 is the channel's own; out-of-range ids and ranges are refused locally.
    assert!(matches!(
        tx.register_buffer(0, own.fd(), 1).await,
        Err(ClientError::FrameRef { .. })
    ));
    assert!(matches!(
        tx.register_buffer(4, own.fd(), 1).await,
        Err(ClientError::FrameRef { .. })
    ));
    assert!(matches!(
        tx.send_ref(1, own.len() as u64 - 1, 5, false).await,
        Err(ClientError::FrameRef { .. })
    ));
    assert!(matches!(
        tx.send_ref(2, 0, 5, false).await,
        Err(ClientError::FrameRef { .. })
    ));

    let slot1 = own.offset(1) as u64;
    tx.send_ref(1, slot1, 0, true).await.unwrap();
    let mut slot = tx.reserve(1).await.unwrap();
    slot.frame().fill(1);
    slot.send(1, false).await.unwrap();
    assert_eq!(tx.frames_in_flight(), 2);

    // The window is full: the third frame waits until a frame-done arrives.
    let third = tokio::spawn(async move {
        tx.send_ref(1, own.offset(2) as u64, 2, false)
            .await
            .unwrap();
        (tx, own)
    });
    let (ClientRecord::Frame(f0), _) = daemon.recv().await else {
        panic!("expected a frame")
    };
    assert_eq!((f0.buffer_id, f0.offset, f0.pts), (1, slot1, 0));
    assert!(f0.force_keyframe());
    let (ClientRecord::Frame(f1), _) = daemon.recv().await else {
        panic!("expected a frame")
    };
    assert_eq!((f1.buffer_id, f1.pts), (0, 1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!third.is_finished(), "a frame went beyond the window");

    daemon.frame_done_and_packet(&f0).await;
    let ev = rx.next_event().await.unwrap();
    assert!(matches!(
        ev,
        ChannelEvent::FrameDone {
            buffer_id: 1,
            pts: 0
        }
    ));
    let (tx, _own) = third.await.unwrap();
    let ChannelEvent::Packet(p) = rx.next_event().await.unwrap() else {
        panic!("expected a packet")
    };
    assert!(p.keyframe);
    assert_eq!(p.pts, 0);
    let (ClientRecord::Frame(f2), _) = daemon.recv().await else {
        panic!("expected a frame")
    };
    assert_eq!((f2.buffer_id, f2.pts), (1, 2));

    let mut tx = tx;
    tx.finish().await.unwrap();
    assert_eq!(daemon.recv().await.0, ClientRecord::EndOfStream);
    daemon.frame_done_and_packet(&f1).await;
    daemon.frame_done_and_packet(&f2).await;
    daemon
        .send(&DaemonRecord::EndOfStreamAck {
            frames_in: 3,
            frames_out: 3,
        })
        .await;
    let mut packets = vec![p.pts];
    loop {
        match rx.next_event().await.unwrap() {
            ChannelEvent::FrameDone { .. } => {}
            ChannelEvent::Packet(p) => packets.push(p.pts),
            ChannelEvent::EndOfStream { frames_in, .. } => {
                assert_eq!(frames_in, 3);
                break;
            }
        }
    }
    assert_eq!(packets, [0, 1, 2]);
    assert_eq!(rx.counters().packets, 3);
    assert_eq!(tx.frames_in_flight(), 0);
}

#[tokio::test]
async fn a_sender_waiting_for_the_window_fails_when_the_daemon_ends_the_session() {
    let (mut tx, mut rx, mut daemon) = open(1).await;
    let mut slot = tx.reserve(0).await.unwrap();
    slot.frame().fill(0);
    slot.send(0, false).await.unwrap();
    let waiting = tokio::spawn(async move { tx.reserve(1).await.map(|_| ()) });
    let _ = daemon.recv().await;
    daemon
        .send(&DaemonRecord::Error {
            code: 3,
            message: "the card rejected the frame".into(),
        })
        .await;
    let e = rx.next_event().await.unwrap_err();
    assert!(
        matches!(e, ClientError::SessionFailed { code: 3, .. }),
        "{e}"
    );
    let e = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the sender kept waiting")
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("the card rejected the frame"), "{e}");
}

#[tokio::test]
async fn dropping_the_receiver_releases_a_waiting_sender() {
    let (mut tx, rx, _daemon) = open(1).await;
    tx.reserve(0).await.unwrap().send(0, false).await.unwrap();
    let waiting = tokio::spawn(async move { tx.reserve(1).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(rx);
    let e = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the sender kept waiting")
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, ClientError::ChannelEnded { .. }), "{e}");
}
