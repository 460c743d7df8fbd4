//! A broadcast writes to idle sockets itself.
//!
//! Waking a connection's task for one frame costs more than the frame's write: the wake-up, the
//! task's turn on another thread, the copy into tungstenite's buffer. So a broadcast that finds
//! a socket idle (its queue was empty and its task is not writing) claims the queued frame, and
//! once it has let go of the hub's lock, one task of its own writes every claimed socket, each
//! with one non-blocking `sendmsg` (the headers formatted by tungstenite, the shared frame bytes
//! as they are) of what its queue holds by then. Only what the socket does not take at once is
//! left to the connection's task: the rest of a frame (in the wire's buffer, flushed first) or
//! the frames behind it (in the queue). Order, the queue's bounds, the write deadline and the
//! overload policy are the task's as before.

use std::{collections::VecDeque, io::IoSlice, sync::Arc};

use axum::extract::ws::Utf8Bytes;

use tokio_tungstenite::tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Data, OpCode},
};

use super::{Closer, take_frame};
use crate::{
    hub::SentCounters,
    protocol::frames::Dialect,
    wire::{Direct, Wire},
};

/// Frames one direct write takes at most.
pub(super) const MAX_FRAMES: usize = 16;
/// Bytes one direct write takes at most (past the first frame): what it leaves in the wire's
/// buffer is bounded by this and one frame.
const MAX_BYTES: usize = 64 * 1024;
/// Connections one broadcast writes to itself at most; the rest of a large channel is left to
/// the tasks, which run on every core (and get their frames without waiting for the writes).
const MAX_CLAIMS: usize = 1024;
/// The longest header of a frame from the server (not masked).
const HEADER_BYTES: usize = 10;
/// The connections a broadcast claimed, written when it is dropped at the latest.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    /// Each claimed connection's closer, and its wire's address (0 without one), read while
    /// the closer is in cache: the write prefetches the next wire with it (see
    /// [`crate::prefetch`]) without first loading the next closer.
    closers: Vec<(Arc<Closer>, usize)>,
    /// How many connections the broadcast may claim, reserved at its first claim (growing
    /// the list claim by claim allocated it six times for a channel of 100).
    expected: usize,
}

/// What direct writes handed to sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Frames.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Claims {
    /// Whether no connection was claimed.
    pub(crate) fn is_empty(&self) -> bool {
        self.closers.is_empty()
    }

    /// Write the claimed connections' frames on a task of their own on `runtime`, once the
    /// tasks ready to run there have had their turn; what is written is counted in `counters`.
    ///
    /// Not at once: writing each idle socket's frame as it is broadcast makes one TCP segment
    /// per frame. On a busy node more broadcasts to the same sockets come meanwhile; their
    /// frames queue behind the claimed one, and one write takes them all, as a woken
    /// connection task does (measured: written at once, S fell to 0.73-0.80x of the tasks'
    /// deliveries/s; written after a turn, 0.97x).
    pub(crate) fn write_soon(self, runtime: &tokio::runtime::Handle, counters: SentCounters) {
        runtime.spawn(async move {
            tokio::task::yield_now().await;
            let mut claims = self;
            counters.count(claims.write());
        });
    }

    /// Whether another connection may be claimed.
    pub(super) fn room(&self) -> bool {
        self.closers.len() < MAX_CLAIMS
    }

    /// The broadcast reaches `subscribers` connections: room for that many claims is made at
    /// the first (none is allocated if nothing is claimed).
    pub(crate) fn expect(&mut self, subscribers: usize) {
        self.expected = subscribers.min(MAX_CLAIMS);
    }

    pub(super) fn push(&mut self, closer: Arc<Closer>) {
        if self.closers.capacity() == 0 {
            self.closers.reserve_exact(self.expected);
        }
        let wire = closer.direct.as_ref().map_or(0, |(wire, _)| Arc::as_ptr(wire).addr());
        self.closers.push((closer, wire));
    }

    /// Write every claimed connection's frames (called with no lock of the hub held).
    pub(crate) fn write(&mut self) -> Sent {
        let mut sent = Sent::default();
        // One at a time off the end: a panic in one write leaves the others claimed in the
        // list, for `Drop` to write.
        while let Some((closer, _)) = self.closers.pop() {
            // The next write's lines are asked for while this one's `sendmsg` runs.
            if let Some((next, wire)) = self.closers.last() {
                crate::prefetch::value(&**next);
                crate::prefetch::at::<Wire>(*wire);
            }
            let one = closer.write_claimed();
            sent.frames += one.frames;
            sent.bytes += one.bytes;
        }
        sent
    }
}

impl Drop for Claims {
    /// A broadcast cut short (a panic) still gives its claims back: a claimed queue is written
    /// by nobody else. While unwinding they are only handed to their tasks: a second panic
    /// there would abort the process.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (closer, _) in self.closers.drain(..) {
                closer.unclaim();
            }
        } else {
            self.write();
        }
    }
}

impl Closer {
    /// Give the claimed frames to the task.
    fn unclaim(&self) {
        let mut queue = self.lock();
        queue.claimed = false;
        drop(queue);
        self.waker.wake();
    }

    /// Write the claimed frames at the head of the queue; what the socket does not take is left
    /// to the task, which is woken for it.
    fn write_claimed(&self) -> Sent {
        // Held for the write: the task cannot take frames or write its close in between.
        let mut queue = self.lock();
        queue.claimed = false;
        let writable = !queue.closed && !queue.held && self.requested().is_none();
        let Some((wire, dialect)) = self.direct.as_ref().filter(|_| writable) else {
            if !queue.frames.is_empty() {
                self.waker.wake();
            }
            return Sent::default();
        };
        let mut count = 0;
        let mut bytes = 0;
        for frame in queue.frames.iter().take(MAX_FRAMES) {
            if count > 0 && bytes + frame.len() > MAX_BYTES {
                break;
            }
            count += 1;
            bytes += frame.len();
        }
        if count == 0 {
            return Sent::default();
        }
        // A quiet socket's write is one frame: its arrays are one slot, not sixteen (setting
        // up sixteen was a third of this function's time in A's profile).
        let taken = if count == 1 {
            write_frames::<1>(wire, *dialect, &queue.frames, count)
        } else {
            write_frames::<MAX_FRAMES>(wire, *dialect, &queue.frames, count)
        };
        let Direct::Taken { left } = taken else {
            self.waker.wake();
            return Sent::default();
        };
        let mut counted = 0;
        for _ in 0..count {
            if let Some(frame) = take_frame(&mut queue)
                && self.counts(frame.len())
            {
                counted += frame.len();
            }
        }
        self.dequeued(counted);
        if left > 0 {
            queue.flush = true;
        }
        if left > 0 || !queue.frames.is_empty() {
            self.waker.wake();
        }
        Sent { frames: count as u64, bytes: bytes as u64 }
    }
}

/// Write the first `count` (at most `N`) of `frames` to `wire` with one `sendmsg`: each one's
/// header (formatted by tungstenite) and its bytes, renamed for the socket's dialect.
///
/// # Panics
/// If `count` is above `N`: the caller takes `count` frames off the queue as written, so
/// writing fewer would lose the rest silently.
fn write_frames<const N: usize>(
    wire: &Wire,
    dialect: Dialect,
    frames: &VecDeque<Utf8Bytes>,
    count: usize,
) -> Direct {
    assert!(count <= N, "{count} frames for a write of {N}");
    let renamed: [Option<String>; N] = std::array::from_fn(|i| {
        frames.get(i).filter(|_| i < count).and_then(|f| dialect.rename(f.as_str()))
    });
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    let mut headers = [[0u8; HEADER_BYTES]; N];
    let mut lens = [0usize; N];
    let mut payloads = [""; N];
    for (i, frame) in frames.iter().take(count).enumerate() {
        payloads[i] = renamed[i].as_deref().unwrap_or(frame.as_str());
        let len = payloads[i].len() as u64;
        lens[i] = header.len(len);
        // A header fits its 10 bytes: formatting into them cannot fail.
        let _ = header.format(len, &mut &mut headers[i][..]);
    }
    let mut slices = [[IoSlice::new(&[]); 2]; N];
    for i in 0..count {
        slices[i] = [IoSlice::new(&headers[i][..lens[i]]), IoSlice::new(payloads[i].as_bytes())];
    }
    wire.write_direct(&slices.as_flattened()[..2 * count])
}
