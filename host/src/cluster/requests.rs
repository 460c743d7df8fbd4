//! Requests: questions to every other live node, answered on the asker's own topic, waited
//! for up to a timeout, partial answers flagged.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};

use super::{CONTROL, Cluster, envelope::Control, query};

/// Answers to a request, and whether every live node answered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answers {
    /// What the other nodes answered.
    pub answers: Vec<Value>,
    /// Whether all of them did.
    pub complete: bool,
}

impl Cluster {
    /// Ask every other live node `query`; wait for all answers, or until `enough` says the
    /// answers so far settle the question (a positive existence answer), or the timeout (short
    /// for `fast` questions: 50 ms per node).
    pub(crate) async fn request(
        &self,
        query: &query::Query,
        fast: bool,
        enough: impl Fn(&[Value]) -> bool,
    ) -> Answers {
        let expected = self.peers().len();
        if expected == 0 {
            return Answers { answers: Vec::new(), complete: true };
        }
        let id = rand::random::<u64>();
        // Room for every peer's answer; extra answers (a peer answering twice, or forging
        // answers) are dropped rather than queued.
        let (tx, mut rx) = mpsc::channel(expected.saturating_mul(2));
        self.pending.lock().expect("cluster lock").insert(id, tx);
        // Removed however this ends, also when the waiter goes away (an HTTP client that
        // disconnects drops this future mid-wait).
        let _pending = PendingGuard { pending: &self.pending, id };
        self.send_control(CONTROL, Control::Request { id, query: query.to_value() });
        let wait = if fast {
            Duration::from_millis(50 * u64::try_from(expected).unwrap_or(u64::MAX))
                .min(self.settings.requests_timeout)
        } else {
            self.settings.requests_timeout
        };
        let deadline = Instant::now() + wait;
        let mut answers = Vec::with_capacity(expected);
        let mut settled = false;
        while answers.len() < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => answers.push(answer),
                _ => break,
            }
            if enough(&answers) {
                settled = true;
                break;
            }
        }
        let complete = settled || answers.len() >= expected;
        tracing::debug!(
            id,
            expected,
            answered = answers.len(),
            complete,
            "A cluster request ended."
        );
        if !complete {
            tracing::warn!(
                expected,
                answered = answers.len(),
                "A cluster request timed out; the answer is partial."
            );
        }
        Answers { answers, complete }
    }

    /// Route an answer to the request waiting for it.
    pub(crate) fn answered(&self, id: u64, answer: Value) {
        if let Some(tx) = self.pending.lock().expect("cluster lock").get(&id) {
            let _ = tx.try_send(answer);
        }
    }
}

/// Removes a request's entry from the pending map when the request ends, however it ends.
struct PendingGuard<'a> {
    pending: &'a Mutex<HashMap<u64, mpsc::Sender<Value>>>,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&self.id);
        }
    }
}
