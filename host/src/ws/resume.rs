//! A reconnected client's resume (`sockudo:resume`): each channel it names is replayed from
//! its position, or failed with a reason, then one `resume_success` sums them up. A channel
//! the socket has not subscribed to yet (a private channel waiting for its auth) waits for its
//! subscribe, up to [`WAIT_FOR_SUBSCRIBE`]; then it fails and the summary goes out.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;

use crate::{
    config::AppRecovery,
    hub::Conn,
    protocol::filter::Filter,
    protocol::recovery::{Failure, FailureCode, Recovered, Wanted, resume_failed, resume_success},
    recovery::{Acked, Fetched, Recovery, With},
};

/// How long a resumed channel waits for its subscribe.
const WAIT_FOR_SUBSCRIBE: Duration = Duration::from_secs(30);

/// A resume: being started (see [`Resumes::begin`]), then waiting for some of its channels'
/// subscribes.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// Which resume this is, so that an older one's timer leaves a newer one alone.
    id: u64,
    /// The app's recovery settings.
    app: AppRecovery,
    channels: BTreeMap<String, Wanted>,
    /// Channels taken out by their subscribe, whose replay is under way (at most one: a
    /// socket's messages are handled one at a time). The summary waits for it.
    underway: usize,
    recovered: Vec<Recovered>,
    failed: Vec<Failure>,
}

impl Waiting {
    /// The channels it names that are subscribed already (in `heads`), in order.
    pub(super) fn subscribed<'a>(
        &self,
        heads: &'a HashMap<String, Acked>,
    ) -> Vec<(String, &'a Acked)> {
        let known = self.channels.keys();
        known.filter_map(|c| heads.get(c).map(|acked| (c.clone(), acked))).collect()
    }

    /// What it asks of `channel`.
    pub(super) fn wanted(&self, channel: &str) -> Option<&Wanted> {
        self.channels.get(channel)
    }

    /// Replay one channel now (its subscription was acknowledged at `upto`, with its tag
    /// `filter`), with what the history store answered for it, if it was asked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn settle(
        &mut self,
        recovery: &Recovery,
        app: &str,
        conn: &Conn,
        channel: &str,
        acked: &Acked,
        filter: Option<&Filter>,
        fetched: Option<Result<Fetched, Box<Failure>>>,
    ) {
        let Some(wanted) = self.channels.remove(channel) else { return };
        let send = |frame: &Utf8Bytes| {
            conn.send(frame);
        };
        let fetched = match fetched {
            Some(Err(failure)) => return self.fail(conn, *failure),
            Some(Ok(fetched)) => Some(fetched),
            None => None,
        };
        let with = With { fetched: fetched.as_ref(), filter, app: self.app };
        match recovery.replay(app, channel, &wanted, acked, with, send) {
            Ok(recovered) => self.recovered.push(recovered),
            Err(failure) => self.fail(conn, *failure),
        }
    }

    fn fail(&mut self, conn: &Conn, failure: Failure) {
        conn.send(&Utf8Bytes::from(resume_failed(&failure)));
        self.failed.push(failure);
    }

    /// Fail the channels whose subscribe has not come.
    fn give_up(&mut self, conn: &Conn) {
        let left = std::mem::take(&mut self.channels);
        for channel in left.into_keys() {
            self.fail(conn, *Resumes::not_subscribed(&channel));
        }
    }

    /// Fail what still waits, and send the summary.
    fn finish(mut self, conn: &Conn) {
        self.give_up(conn);
        conn.send(&Utf8Bytes::from(resume_success(&self.recovered, &self.failed)));
    }
}

/// A connection's resumes: at most one waits at a time.
#[derive(Debug, Default)]
pub(super) struct Resumes {
    /// Made by the connection's first resume: most connections never resume, and every
    /// connection would pay for it.
    waiting: Option<Box<Held>>,
    started: u64,
}

/// The resume waiting for subscribes, and the timer that answers it if they do not come.
#[derive(Debug, Default)]
struct Held {
    slot: Arc<Mutex<Option<Waiting>>>,
    /// One at a time: a client resuming again and again does not pile up sleeping tasks,
    /// nor leave one behind when its socket closes.
    timer: Option<tokio::task::AbortHandle>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Resumes {
    /// Begin a resume of `wanted` channels with the app's recovery settings `app`; a resume
    /// still waiting is answered first, as it stands. The caller replays the channels
    /// subscribed already, one at a time ([`Waiting::settle`]: each one's window is read from
    /// the store just before its replay, so a resume of many channels holds one channel's
    /// events at a time, not all of them), then hands it to [`Resumes::hold`].
    pub(super) fn begin(
        &mut self,
        conn: &Conn,
        wanted: Vec<(String, Wanted)>,
        app: AppRecovery,
    ) -> Waiting {
        let held = self.waiting.get_or_insert_default();
        if let Some(older) = held.slot.lock().expect("resume lock").take() {
            older.finish(conn);
        }
        self.started += 1;
        let channels = wanted.into_iter().collect();
        Waiting { id: self.started, app, channels, ..Waiting::default() }
    }

    /// The resume's channels still to replay: answered now if none is left, else waiting for
    /// their subscribes, up to [`WAIT_FOR_SUBSCRIBE`].
    pub(super) fn hold(&mut self, conn: &Conn, waiting: Waiting) {
        if waiting.channels.is_empty() {
            return waiting.finish(conn);
        }
        let held = self.waiting.get_or_insert_default();
        let slot = held.slot.clone();
        let id = waiting.id;
        *slot.lock().expect("resume lock") = Some(waiting);
        if let Some(timer) = held.timer.take() {
            timer.abort();
        }
        let conn = conn.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(WAIT_FOR_SUBSCRIBE).await;
            let mut slot = slot.lock().expect("resume lock");
            let Some(waiting) = slot.as_mut().filter(|w| w.id == id) else { return };
            // A channel whose replay is under way is in the summary, which then goes out when
            // that replay settles (see [`Resumes::settled`]).
            waiting.give_up(&conn);
            if waiting.underway == 0
                && let Some(waiting) = slot.take()
            {
                waiting.finish(&conn);
            }
        });
        held.timer = Some(timer.abort_handle());
    }

    /// Take `channel` out of the waiting resume, if it waits: its subscribe is being made, and
    /// its replay goes right after the acknowledgement (see [`Resumes::settled`]).
    pub(super) fn take(&self, channel: &str) -> Option<Wanted> {
        let mut slot = self.waiting.as_ref()?.slot.lock().expect("resume lock");
        let waiting = slot.as_mut()?;
        let wanted = waiting.channels.remove(channel)?;
        waiting.underway += 1;
        Some(wanted)
    }

    /// A channel taken with [`Resumes::take`] was replayed (or failed): count it, and send the
    /// summary once nothing waits any more.
    pub(super) fn settled(&self, conn: &Conn, outcome: Result<Recovered, Box<Failure>>) {
        let Some(held) = &self.waiting else { return };
        let mut slot = held.slot.lock().expect("resume lock");
        let Some(waiting) = slot.as_mut() else { return };
        waiting.underway = waiting.underway.saturating_sub(1);
        match outcome {
            Ok(recovered) => waiting.recovered.push(recovered),
            Err(failure) => waiting.fail(conn, *failure),
        }
        if waiting.channels.is_empty()
            && waiting.underway == 0
            && let Some(waiting) = slot.take()
        {
            waiting.finish(conn);
        }
    }

    /// The failure of a channel subscribed without a stream: the history store could not be
    /// read (`durable`), or the node holds as many streams as it may.
    pub(super) fn no_stream(channel: &str, durable: bool) -> Box<Failure> {
        Box::new(if durable {
            let code = FailureCode::PersistenceUnavailable;
            Failure::new(channel, code, "durable_history_state_unavailable")
        } else {
            Failure::new(channel, FailureCode::PositionExpired, "recovery_buffer_full")
        })
    }

    /// The failure of a channel whose subscribe never came, or was refused.
    pub(super) fn not_subscribed(channel: &str) -> Box<Failure> {
        let code = FailureCode::ContinuityUnverifiable;
        Box::new(Failure::new(channel, code, "channel_not_subscribed"))
    }
}
