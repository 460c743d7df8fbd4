//! A connection as the hub holds it: its bounded queue of ready-made frames and its closer.

use std::sync::{
    Arc,
    atomic::{AtomicU16, AtomicUsize, Ordering},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use super::SocketId;
use crate::protocol::codes;

/// A connection's state shared between its task and the hub: why it is being closed, and how
/// many bytes wait in its queue.
#[derive(Debug)]
pub(crate) struct Closer {
    /// The close code, 0 while open.
    code: AtomicU16,
    notify: Notify,
    /// Bytes of counted frames enqueued and not yet taken by the connection's task.
    queued_bytes: AtomicUsize,
    /// Frames of at most this many bytes are not counted: the frame bound already bounds
    /// them, and counting costs two atomic operations shared between the publishing thread
    /// and the connection's task on every delivery. `usize::MAX` with no byte bound.
    small: usize,
    /// The bound on counted bytes: with the small frames' most, the queue's byte bound.
    max_counted: usize,
    /// Above this many queued bytes the connection counts as behind (congestion).
    behind_bytes: usize,
    /// Below this many free places in the queue the connection counts as behind.
    behind_free: usize,
}

impl Closer {
    /// A closer for a queue of `max_frames` frames and `max_bytes` bytes (0 = no byte bound),
    /// which counts as behind when fuller than `watermark_percent`.
    pub(crate) fn new(max_frames: usize, max_bytes: usize, watermark_percent: u8) -> Self {
        let free = 100 - usize::from(watermark_percent.min(99));
        // Small frames fill at most a quarter of the byte bound, counted ones the rest.
        let small = if max_bytes == 0 { usize::MAX } else { max_bytes / max_frames.max(1) / 4 };
        let max_counted = if max_bytes == 0 {
            usize::MAX
        } else {
            max_bytes - small.saturating_mul(max_frames).min(max_bytes)
        };
        Self {
            small,
            max_counted,
            behind_bytes: max_counted.saturating_mul(usize::from(watermark_percent)) / 100,
            behind_free: max_frames.saturating_mul(free) / 100,
            code: AtomicU16::new(0),
            notify: Notify::new(),
            queued_bytes: AtomicUsize::new(0),
        }
    }

    /// Ask the connection's task to close with `code`; the first request wins.
    pub(crate) fn close(&self, code: u16) {
        if self.code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.notify.notify_one();
        }
    }

    /// The requested close code, if any.
    pub(crate) fn requested(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Resolves once a close is requested.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.requested().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Whether a frame of `len` bytes counts against the byte bound.
    pub(crate) fn counts(&self, len: usize) -> bool {
        len > self.small
    }

    /// The connection's task took counted frames of `bytes` off its queue.
    pub(crate) fn dequeued(&self, bytes: usize) {
        if bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// What enqueueing a frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Enqueued; `behind` if the queue is now above the congestion watermark.
    Queued {
        /// The queue is above the watermark.
        behind: bool,
    },
    /// Not enqueued: the queue was full (the connection is being closed with 4100) or the
    /// connection is gone.
    Refused,
}

/// What the hub holds of a connection: its id, its outbound queue and its closer.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// The socket id.
    pub socket_id: SocketId,
    queue: mpsc::Sender<Utf8Bytes>,
    closer: Arc<Closer>,
    /// App events with their recovery position (protocol-2 sockets).
    positions: bool,
}

impl Conn {
    /// A handle over a connection's queue and closer.
    pub(crate) fn new(
        socket_id: SocketId,
        queue: mpsc::Sender<Utf8Bytes>,
        closer: Arc<Closer>,
    ) -> Self {
        Self { socket_id, queue, closer, positions: false }
    }

    /// The same, getting app events with their recovery position (a protocol-2 socket).
    #[must_use]
    pub(crate) fn with_positions(self, positions: bool) -> Self {
        Self { positions, ..self }
    }

    /// Whether it gets app events with their recovery position.
    pub(crate) fn wants_positions(&self) -> bool {
        self.positions
    }

    /// Enqueue a frame without waiting. A full queue (in frames or bytes) means the client
    /// cannot keep up: it is closed with 4100. Answers whether the frame was enqueued.
    pub(crate) fn send(&self, frame: &Utf8Bytes) -> bool {
        matches!(self.deliver(frame), Delivery::Queued { .. })
    }

    /// [`Conn::send`], also telling whether the queue is above the congestion watermark.
    pub(crate) fn deliver(&self, frame: &Utf8Bytes) -> Delivery {
        let closer = &*self.closer;
        let len = if closer.counts(frame.len()) { frame.len() } else { 0 };
        let mut queued = 0;
        if len > 0 {
            queued = closer.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
            if queued > closer.max_counted {
                closer.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                closer.close(codes::OVER_CAPACITY);
                return Delivery::Refused;
            }
        }
        match self.queue.try_send(frame.clone()) {
            Ok(()) => Delivery::Queued {
                behind: queued > closer.behind_bytes || self.queue.capacity() < closer.behind_free,
            },
            Err(error) => {
                closer.dequeued(len);
                if matches!(error, mpsc::error::TrySendError::Full(_)) {
                    closer.close(codes::OVER_CAPACITY);
                }
                Delivery::Refused
            }
        }
    }

    /// Whether the queue is above the congestion watermark now.
    pub(super) fn behind(&self) -> bool {
        self.closer.queued_bytes.load(Ordering::Acquire) > self.closer.behind_bytes
            || self.queue.capacity() < self.closer.behind_free
    }

    /// Ask the connection to close with `code`.
    pub(crate) fn close(&self, code: u16) {
        self.closer.close(code);
    }
}
