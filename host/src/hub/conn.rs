//! A connection as the hub holds it: its bounded queue of ready-made frames and its closer.
//!
//! The queue is a `VecDeque` behind the closer's lock rather than a channel: a channel holds a
//! block of slots (about 1.5 KB) from its creation for as long as the connection lives, while
//! this queue holds nothing once its task has taken every frame, which is the state of almost
//! every connection almost all the time.
//!
//! A broadcast may also write a frame to the socket itself (`direct.rs`) when the queue was
//! empty and the task is not writing: the frame is queued and claimed under the hub's lock,
//! then written once the broadcast has let go of it, in queue order, so the socket sees the
//! same order either way.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
    },
    task::{Poll, Waker},
};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::{ArcWake, AtomicWaker};

use super::SocketId;
use crate::{
    protocol::{codes, frames::Dialect},
    wire::Wire,
};

mod direct;

pub(crate) use direct::{Claims, Sent};

/// The frames waiting for the connection's task.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    /// The task is gone: frames are refused rather than held for nobody.
    closed: bool,
    /// The task has taken frames it has not finished writing, or has stopped writing frames
    /// for good (it is closing): no broadcast may write ahead of it.
    held: bool,
    /// A broadcast will write the queued frames itself once it has let go of the hub's lock:
    /// the task leaves them.
    claimed: bool,
    /// A direct write left bytes the socket did not take at once: the task flushes them.
    flush: bool,
}

/// A connection's state shared between its task and the hub: its queue, why it is being
/// closed, and how many bytes wait in its queue.
///
/// It is also the waker of the connection's rare events (its socket's reads, its timers, the
/// node shutting down, its app ending): they wake the task through it, which marks the task
/// `stirred`, so a task woken for a frame writes it without polling every one of them (each
/// poll takes a lock: about a fifth of the task's user time per delivery before).
#[derive(Debug)]
pub(crate) struct Closer {
    /// The close code, 0 while open.
    code: AtomicU16,
    queue: Mutex<Queue>,
    /// The task, woken when the queue stops being empty, a close is requested or a rare
    /// event comes.
    waker: AtomicWaker,
    /// A rare event may have come since the task last looked: it polls them all.
    stirred: AtomicBool,
    /// The bound on queued frames.
    max_frames: usize,
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
    /// The socket and the connection's dialect, when a broadcast may write to it directly.
    direct: Option<(Arc<Wire>, Dialect)>,
}

impl Closer {
    /// A closer for a queue of `max_frames` frames and `max_bytes` bytes (0 = no byte bound),
    /// which counts as behind when fuller than `watermark_percent`.
    fn new(
        max_frames: usize,
        max_bytes: usize,
        watermark_percent: u8,
        direct: Option<(Arc<Wire>, Dialect)>,
    ) -> Self {
        let max_frames = max_frames.max(1);
        let free = 100 - usize::from(watermark_percent.min(99));
        // Small frames fill at most a quarter of the byte bound, counted ones the rest.
        let small = if max_bytes == 0 { usize::MAX } else { max_bytes / max_frames / 4 };
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
            max_frames,
            code: AtomicU16::new(0),
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            // So that the task's first turn polls (and so registers with) every event source.
            stirred: AtomicBool::new(true),
            queued_bytes: AtomicUsize::new(0),
            direct,
        }
    }

    /// A closer and the receiving end of its queue, which the connection's task owns.
    pub(crate) fn open(
        max_frames: usize,
        max_bytes: usize,
        watermark_percent: u8,
    ) -> (Arc<Self>, Outbound) {
        Self::open_on(max_frames, max_bytes, watermark_percent, None)
    }

    /// [`Closer::open`] for a connection whose socket broadcasts may write directly (`direct`:
    /// its wire, put in direct mode here, and its dialect).
    pub(crate) fn open_on(
        max_frames: usize,
        max_bytes: usize,
        watermark_percent: u8,
        direct: Option<(Arc<Wire>, Dialect)>,
    ) -> (Arc<Self>, Outbound) {
        if let Some((wire, _)) = &direct {
            wire.go_direct();
        }
        let closer = Arc::new(Self::new(max_frames, max_bytes, watermark_percent, direct));
        (closer.clone(), Outbound { closer })
    }

    /// Ask the connection's task to close with `code`; the first request wins.
    pub(crate) fn close(&self, code: u16) {
        if self.code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.waker.wake();
        }
    }

    /// Mark the task stirred and wake it: its next turn polls its rare events.
    pub(crate) fn stir(&self) {
        self.stirred.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The requested close code, if any.
    pub(crate) fn requested(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Mark the task stirred without a wake (it is running): it polled a rare event with its
    /// own waker (while a write was blocked), or one may have more to give (a socket with
    /// buffered messages, a re-armed timer).
    pub(crate) fn restir(&self) {
        self.stirred.store(true, Ordering::Release);
    }

    /// Resolves with the close code once a close is requested (for a task busy elsewhere than
    /// in [`Outbound::next`]).
    pub(crate) async fn closing(&self) -> u16 {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            self.requested().map_or(Poll::Pending, Poll::Ready)
        })
        .await
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

    /// The queue; a panic elsewhere while it was held leaves it usable (it holds no invariant
    /// a panic could break).
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ArcWake for Closer {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.stir();
    }
}

/// What the connection's task has to do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Close with this code.
    Close(u16),
    /// Write this frame, and what else is queued if there was `more`.
    Frame {
        /// The frame.
        frame: Utf8Bytes,
        /// Other frames were queued behind it.
        more: bool,
    },
    /// Poll the rare events, with [`Outbound::rare_waker`].
    Stirred,
    /// Flush what a direct write left in the socket's buffer.
    Flush,
}

/// The receiving end of a connection's queue, owned by its task. Dropping it closes the queue.
#[derive(Debug)]
pub(crate) struct Outbound {
    closer: Arc<Closer>,
}

impl Outbound {
    /// The waker to poll the connection's rare events with, so that they mark it stirred.
    pub(crate) fn rare_waker(&self) -> Waker {
        futures_util::task::waker(self.closer.clone())
    }

    /// What to do next, once there is something: a requested close first, then frames and
    /// rare events, `frames_first` or the other way round (the caller alternates, so that
    /// neither a busy queue nor a chatty client starves the other).
    pub(crate) async fn next(&mut self, frames_first: bool) -> Next {
        let closer = &*self.closer;
        poll_fn(|cx| {
            // One lock for the whole look: the queue's line is shared with the publishing
            // threads, and each lock moves it between cores.
            let mut queue = closer.lock();
            if let Some(next) = look(closer, &mut queue, frames_first) {
                return Poll::Ready(next);
            }
            // Registered only when there is nothing (a task woken for a frame takes it without
            // registering again), and before looking once more, so that whatever comes after
            // that look wakes us (frames cannot come while the queue is locked; a close or a
            // stir can).
            closer.waker.register(cx.waker());
            look(closer, &mut queue, frames_first).map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Utf8Bytes> {
        take_frame(&mut self.closer.lock())
    }

    /// What the task took is written (or flushed): broadcasts may write directly again.
    pub(crate) fn written(&mut self) {
        self.closer.lock().held = false;
    }

    /// The task writes no more frames (it is closing): no broadcast writes after its last.
    pub(crate) fn stop_writing(&mut self) {
        self.closer.lock().held = true;
    }
}

/// What the task has to do, if anything (see [`Outbound::next`]).
fn look(closer: &Closer, queue: &mut Queue, frames_first: bool) -> Option<Next> {
    if let Some(code) = closer.requested() {
        return Some(Next::Close(code));
    }
    // Read before it is swapped: the swap writes a line the publishing threads share.
    let stirred =
        || closer.stirred.load(Ordering::Acquire) && closer.stirred.swap(false, Ordering::AcqRel);
    if !frames_first && stirred() {
        return Some(Next::Stirred);
    }
    if queue.flush {
        queue.flush = false;
        queue.held = true;
        return Some(Next::Flush);
    }
    // Claimed frames are the claiming broadcast's to write (it wakes the task for any left).
    if !queue.claimed
        && let Some(frame) = take_frame(queue)
    {
        queue.held = true;
        // Whether to look for more is known here, without locking again to find none.
        return Some(Next::Frame { frame, more: !queue.frames.is_empty() });
    }
    (frames_first && stirred()).then_some(Next::Stirred)
}

/// The queue's next frame. Its buffer is given back when it empties, so that an idle connection
/// holds none.
fn take_frame(queue: &mut Queue) -> Option<Utf8Bytes> {
    let frame = queue.frames.pop_front();
    if queue.frames.is_empty() && queue.frames.capacity() > 0 {
        queue.frames = VecDeque::new();
    }
    frame
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut queue = self.closer.lock();
        queue.closed = true;
        queue.frames = VecDeque::new();
        drop(queue);
        // The task's waker, which it may not need again.
        drop(self.closer.waker.take());
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
    /// Enqueued and claimed: the broadcast writes it itself (see [`Claims`]).
    Claimed,
}

/// What the hub holds of a connection: its id and its closer (which holds its queue).
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// The socket id.
    pub socket_id: SocketId,
    closer: Arc<Closer>,
    /// App events with their recovery position (protocol-2 sockets).
    positions: bool,
}

impl Conn {
    /// A handle over a connection's queue and closer.
    pub(crate) fn new(socket_id: SocketId, closer: Arc<Closer>) -> Self {
        Self { socket_id, closer, positions: false }
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
        self.enqueue(frame, None)
    }

    /// Ask for the lines a delivery to it touches (its closer), while an earlier delivery is
    /// under way (see [`crate::prefetch`]).
    pub(crate) fn prefetch(&self) {
        crate::prefetch::value(&*self.closer);
    }

    /// [`Conn::deliver`] from a broadcast, which writes the frame itself when the socket is
    /// idle: then the connection is put in `claims`, to be written once the broadcast lets go
    /// of the hub's lock (a socket's write is not made under it).
    pub(crate) fn deliver_into(&self, frame: &Utf8Bytes, claims: &mut Claims) -> Delivery {
        self.enqueue(frame, Some(claims))
    }

    fn enqueue(&self, frame: &Utf8Bytes, claims: Option<&mut Claims>) -> Delivery {
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
        let mut queue = closer.lock();
        let waiting = queue.frames.len();
        if queue.closed || waiting >= closer.max_frames {
            let full = !queue.closed;
            drop(queue);
            closer.dequeued(len);
            if full {
                closer.close(codes::OVER_CAPACITY);
            }
            return Delivery::Refused;
        }
        queue.frames.push_back(frame.clone());
        if let Some(claims) = claims
            && claims.room()
            && waiting == 0
            && !queue.held
            && self.closer.direct.is_some()
        {
            queue.claimed = true;
            drop(queue);
            claims.push(self.closer.clone());
            return Delivery::Claimed;
        }
        // A claim not yet written keeps the frames behind it from the task. Past what one
        // direct write takes, the task takes them over (it may run on any core): a broadcast
        // that delivers many events in one turn (a batch from the history store, a repaired
        // gap) would otherwise fill the queue before the claim's task has run. The claim's
        // write then finds the task writing, or writes only what is at the head first.
        let handover = queue.claimed && waiting + 1 >= direct::MAX_FRAMES;
        if handover {
            queue.claimed = false;
        }
        drop(queue);
        // The task only sleeps on an empty (or claimed) queue: a frame joining others needs no
        // wake-up.
        if waiting == 0 || handover {
            closer.waker.wake();
        }
        let free = closer.max_frames - waiting - 1;
        Delivery::Queued { behind: queued > closer.behind_bytes || free < closer.behind_free }
    }

    /// Whether the queue is above the congestion watermark now.
    pub(super) fn behind(&self) -> bool {
        let closer = &*self.closer;
        let free = closer.max_frames.saturating_sub(closer.lock().frames.len());
        closer.queued_bytes.load(Ordering::Acquire) > closer.behind_bytes
            || free < closer.behind_free
    }

    /// Ask the connection to close with `code`.
    pub(crate) fn close(&self, code: u16) {
        self.closer.close(code);
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use futures_util::{FutureExt as _, task::noop_waker};

    use super::*;

    fn capacity(closer: &Closer) -> usize {
        closer.lock().frames.capacity()
    }

    #[test]
    fn an_emptied_queue_gives_its_buffer_back() {
        let (closer, mut outbound) = Closer::open(16, 0, 90);
        let conn = Conn::new("1.1".into(), closer.clone());
        assert_eq!(capacity(&closer), 0, "no buffer before any frame");
        for n in 0..5 {
            assert!(conn.send(&Utf8Bytes::from(n.to_string())));
        }
        assert!(capacity(&closer) >= 5);
        let taken: Vec<String> =
            std::iter::from_fn(|| outbound.try_recv()).map(|f| f.as_str().to_string()).collect();
        assert_eq!(taken, ["0", "1", "2", "3", "4"], "in order");
        assert_eq!(capacity(&closer), 0, "no buffer once empty");
    }

    #[test]
    fn a_frame_wakes_the_task_waiting_on_an_empty_queue() {
        let (closer, mut outbound) = Closer::open(16, 0, 90);
        let conn = Conn::new("1.1".into(), closer);
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = futures_util::task::waker(Arc::new(Flag(woken.clone())));
        assert!(poll_next(&mut outbound, false, &waker).is_ready(), "the first turn's stir");
        let mut next = Box::pin(outbound.next(false));
        assert!(next.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        assert!(conn.send(&Utf8Bytes::from("hello")));
        assert!(woken.load(Ordering::Acquire), "the waiting task is woken");
        let polled = next.as_mut().poll(&mut Context::from_waker(&noop_waker()));
        assert!(
            matches!(polled, Poll::Ready(Next::Frame { frame, .. }) if frame.as_str() == "hello")
        );
    }

    #[test]
    fn a_gone_task_refuses_frames_without_holding_them() {
        let (closer, outbound) = Closer::open(16, 0, 90);
        let conn = Conn::new("1.1".into(), closer.clone());
        assert!(conn.send(&Utf8Bytes::from("queued")));
        drop(outbound);
        assert_eq!(capacity(&closer), 0, "what waited is dropped with the task");
        assert_eq!(conn.deliver(&Utf8Bytes::from("late")), Delivery::Refused);
        assert_eq!(closer.requested(), None, "a gone connection is not told 4100");
        assert!(outbound_now_empty(&closer));
    }

    fn outbound_now_empty(closer: &Closer) -> bool {
        closer.lock().frames.is_empty()
    }

    struct Flag(Arc<std::sync::atomic::AtomicBool>);

    impl futures_util::task::ArcWake for Flag {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Ordering::Release);
        }
    }

    #[test]
    fn next_is_ready_at_once_when_a_frame_waits() {
        let (closer, mut outbound) = Closer::open(4, 0, 90);
        assert!(Conn::new("1.1".into(), closer).send(&Utf8Bytes::from("x")));
        let next = outbound.next(true).now_or_never();
        assert!(matches!(next, Some(Next::Frame { frame, .. }) if frame.as_str() == "x"));
    }

    fn poll_next(outbound: &mut Outbound, frames_first: bool, waker: &Waker) -> Poll<Next> {
        let mut next = Box::pin(outbound.next(frames_first));
        next.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_task_woken_by_a_rare_event_is_told_it_is_stirred_and_only_then() {
        let (closer, mut outbound) = Closer::open(16, 0, 90);
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = futures_util::task::waker(Arc::new(Flag(woken.clone())));
        // The first turn polls every rare event, to register with them.
        assert!(matches!(poll_next(&mut outbound, false, &task), Poll::Ready(Next::Stirred)));
        assert!(poll_next(&mut outbound, false, &task).is_pending(), "nothing came since");
        // A timer or a socket wakes the rare waker: the task is woken, and stirred.
        outbound.rare_waker().wake_by_ref();
        assert!(woken.swap(false, Ordering::AcqRel), "the task is woken");
        assert!(matches!(poll_next(&mut outbound, false, &task), Poll::Ready(Next::Stirred)));
        assert!(poll_next(&mut outbound, false, &task).is_pending());
        // A frame wakes it too, but does not stir it.
        assert!(Conn::new("1.1".into(), closer).send(&Utf8Bytes::from("f")));
        assert!(woken.swap(false, Ordering::AcqRel));
        assert!(matches!(poll_next(&mut outbound, false, &task), Poll::Ready(Next::Frame { .. })));
        assert!(poll_next(&mut outbound, false, &task).is_pending());
    }

    #[test]
    fn frames_and_rare_events_take_turns_and_a_close_comes_first() {
        let (closer, mut outbound) = Closer::open(16, 0, 90);
        let conn = Conn::new("1.1".into(), closer.clone());
        let task = noop_waker();
        assert!(conn.send(&Utf8Bytes::from("a")) && conn.send(&Utf8Bytes::from("b")));
        assert!(matches!(poll_next(&mut outbound, true, &task), Poll::Ready(Next::Frame { .. })));
        assert!(matches!(poll_next(&mut outbound, false, &task), Poll::Ready(Next::Stirred)));
        closer.restir();
        closer.close(codes::RECONNECT);
        assert!(matches!(
            poll_next(&mut outbound, true, &task),
            Poll::Ready(Next::Close(codes::RECONNECT))
        ));
    }

    /// A connection whose socket broadcasts may write (the server's end of a loopback pair, in
    /// a wire), past its task's first turn: its closer, the task's end of its queue of
    /// `max_frames`, the connection, and the client's end.
    async fn direct_conn(
        max_frames: usize,
        dialect: Dialect,
    ) -> (Arc<Closer>, Outbound, Conn, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let wire = Arc::new(Wire::shared(accepted.unwrap().0));
        let (closer, mut outbound) = Closer::open_on(max_frames, 0, 90, Some((wire, dialect)));
        let conn = Conn::new("1.1".into(), closer.clone());
        let first = poll_next(&mut outbound, false, &noop_waker());
        assert!(matches!(first, Poll::Ready(Next::Stirred)));
        (closer, outbound, conn, client.unwrap())
    }

    #[tokio::test]
    async fn a_broadcast_writes_an_idle_sockets_frame_itself_and_never_ahead_of_the_task() {
        use tokio::io::AsyncReadExt as _;
        let (closer, mut outbound, conn, mut client) = direct_conn(16, Dialect::V2).await;
        let task = noop_waker();

        // Idle: claimed, left alone by the task, and written by the broadcast itself (a
        // protocol frame renamed for the socket's dialect).
        let mut claims = Claims::default();
        let frame = Utf8Bytes::from(r#"{"event":"pusher:pong","data":{}}"#);
        assert_eq!(conn.deliver_into(&frame, &mut claims), Delivery::Claimed);
        assert!(poll_next(&mut outbound, true, &task).is_pending(), "the task leaves it");
        assert_eq!(claims.write().frames, 1);
        let text = r#"{"event":"sockudo:pong","data":{}}"#;
        let mut got = vec![0; 2 + text.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got[..2], [0x81, u8::try_from(text.len()).unwrap()], "a whole text frame");
        assert_eq!(&got[2..], text.as_bytes());
        assert_eq!(capacity(&closer), 0, "nothing left queued");

        // A frame the task has taken and not written yet: the next one waits behind it.
        assert!(conn.send(&Utf8Bytes::from("first")));
        assert!(matches!(poll_next(&mut outbound, false, &task), Poll::Ready(Next::Frame { .. })));
        assert!(matches!(
            conn.deliver_into(&Utf8Bytes::from("second"), &mut claims),
            Delivery::Queued { .. }
        ));
        outbound.written();
        assert!(matches!(
            poll_next(&mut outbound, false, &task),
            Poll::Ready(Next::Frame { frame, .. }) if frame.as_str() == "second"
        ));

        // A task that stopped writing (it is closing): nothing is written after its close.
        outbound.written();
        outbound.stop_writing();
        assert!(matches!(
            conn.deliver_into(&Utf8Bytes::from("late"), &mut claims),
            Delivery::Queued { .. }
        ));
        assert_eq!(claims.write(), direct::Sent::default());
    }

    #[tokio::test]
    async fn frames_broadcast_before_a_claimed_socket_is_written_go_in_the_same_write() {
        use tokio::io::AsyncReadExt as _;
        let (closer, mut outbound, conn, mut client) = direct_conn(16, Dialect::Pusher).await;
        let task = noop_waker();

        let mut claims = Claims::default();
        assert_eq!(conn.deliver_into(&Utf8Bytes::from("one"), &mut claims), Delivery::Claimed);
        let counters = crate::hub::SentCounters::default();
        claims.write_soon(&tokio::runtime::Handle::current(), counters.clone());
        // A later broadcast, before the claim's task has had its turn: queued behind it.
        let mut later = Claims::default();
        let two = conn.deliver_into(&Utf8Bytes::from("two"), &mut later);
        assert!(matches!(two, Delivery::Queued { .. }), "{two:?}");
        assert!(later.is_empty());
        assert!(poll_next(&mut outbound, true, &task).is_pending(), "the task leaves both");

        let mut got = [0; 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x81\x03one\x81\x03two");
        assert_eq!(counters.messages.get(), 2, "both written by the claim's task");
        assert_eq!(capacity(&closer), 0, "nothing left queued");
    }

    #[tokio::test]
    async fn a_write_of_several_frames_renames_each_for_the_sockets_dialect() {
        use tokio::io::AsyncReadExt as _;
        let (closer, _outbound, conn, mut client) = direct_conn(16, Dialect::V2).await;

        let mut claims = Claims::default();
        let pong = Utf8Bytes::from(r#"{"event":"pusher:pong","data":{}}"#);
        let app = Utf8Bytes::from(r#"{"event":"app","data":"x"}"#);
        assert_eq!(conn.deliver_into(&pong, &mut claims), Delivery::Claimed);
        assert!(matches!(conn.deliver_into(&app, &mut claims), Delivery::Queued { .. }));
        assert!(matches!(conn.deliver_into(&pong, &mut claims), Delivery::Queued { .. }));
        assert_eq!(claims.write().frames, 3, "one write took the three");

        let renamed = r#"{"event":"sockudo:pong","data":{}}"#;
        let mut expected = Vec::new();
        for text in [renamed, app.as_str(), renamed] {
            expected.extend([0x81, u8::try_from(text.len()).unwrap()]);
            expected.extend(text.as_bytes());
        }
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected, "in order, protocol frames renamed, the app's as it was");
        assert_eq!(capacity(&closer), 0, "nothing left queued");
    }

    #[tokio::test]
    async fn the_task_takes_over_a_claimed_queue_that_grows_past_one_write() {
        let (_closer, mut outbound, conn, _client) = direct_conn(64, Dialect::Pusher).await;
        let task = noop_waker();

        let mut claims = Claims::default();
        assert_eq!(conn.deliver_into(&Utf8Bytes::from("0"), &mut claims), Delivery::Claimed);
        for i in 1..direct::MAX_FRAMES - 1 {
            assert!(matches!(
                conn.deliver(&Utf8Bytes::from(i.to_string())),
                Delivery::Queued { .. }
            ));
            assert!(poll_next(&mut outbound, true, &task).is_pending(), "claimed: left alone");
        }
        assert!(matches!(conn.deliver(&Utf8Bytes::from("last")), Delivery::Queued { .. }));
        assert!(matches!(
            poll_next(&mut outbound, true, &task),
            Poll::Ready(Next::Frame { frame, .. }) if frame.as_str() == "0"
        ));
        // The claim's write finds the task writing, and leaves the rest to it.
        assert_eq!(claims.write(), direct::Sent::default());
    }

    #[test]
    fn a_close_request_wakes_a_waiting_task() {
        let (closer, mut outbound) = Closer::open(16, 0, 90);
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = futures_util::task::waker(Arc::new(Flag(woken.clone())));
        assert!(poll_next(&mut outbound, false, &task).is_ready(), "the first turn's stir");
        assert!(poll_next(&mut outbound, false, &task).is_pending());
        closer.close(codes::OVER_CAPACITY);
        assert!(woken.load(Ordering::Acquire));
        assert!(matches!(
            poll_next(&mut outbound, false, &task),
            Poll::Ready(Next::Close(codes::OVER_CAPACITY))
        ));
    }
}
