//! The publish path transports share: a bounded queue in front of one writer task that sends
//! messages in batches, in order. [`Outbox::try_publish`] enqueues without waiting (and answers
//! BACKPRESSURE when the queue is full), [`Outbox::publish`] enqueues and waits for the writer's
//! outcome for that message; the writer settles each message it took with [`Outgoing::settle`].

use tokio::sync::{mpsc, oneshot};

use crate::{PluginError, abi::RVec};

/// A message waiting for the writer: where it goes (the backend's own name for the topic), its
/// bytes, and for an awaited publish the sender of its outcome.
#[derive(Debug)]
pub struct Outgoing {
    /// The backend's channel (or subject, or key) for the message's topic.
    pub channel: String,
    /// The message.
    pub payload: RVec<u8>,
    ack: Option<oneshot::Sender<Result<(), PluginError>>>,
}

impl Outgoing {
    /// Tell the publisher waiting for this message (if any) how it went.
    pub fn settle(self, outcome: Result<(), PluginError>) {
        if let Some(ack) = self.ack {
            let _ = ack.send(outcome);
        }
    }
}

/// Settle every message of `batch` with `outcome`, emptying it for the next batch.
pub fn settle_all(batch: &mut Vec<Outgoing>, outcome: &Result<(), PluginError>) {
    for message in batch.drain(..) {
        message.settle(outcome.clone());
    }
}

/// The sending half of a transport's publish queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    name: &'static str,
}

impl Outbox {
    /// A queue of `capacity` messages for the transport called `name` (in its errors), and the
    /// receiving half for its writer task.
    pub fn new(name: &'static str, capacity: usize) -> (Self, mpsc::Receiver<Outgoing>) {
        let (queue, outgoing) = mpsc::channel(capacity.max(1));
        (Self { queue, name }, outgoing)
    }

    fn closed(&self) -> PluginError {
        PluginError::unavailable(format!("the {} transport is shut down", self.name))
    }

    /// Enqueue without waiting: BACKPRESSURE if the queue is full, UNAVAILABLE once the writer
    /// is gone.
    pub fn try_publish(&self, channel: String, payload: RVec<u8>) -> Result<(), PluginError> {
        let message = Outgoing { channel, payload, ack: None };
        self.queue.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                PluginError::backpressure(format!("{}: the publish queue is full", self.name))
            }
            mpsc::error::TrySendError::Closed(_) => self.closed(),
        })
    }

    /// Wait until the writer has taken every queued message, at most `within` (at shutdown:
    /// what was accepted goes out if the backend lets it). The queue has no event for
    /// "empty", so this looks every few milliseconds.
    pub async fn drain(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.queue.capacity() < self.queue.max_capacity()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Enqueue (waiting for room) and wait for the writer's outcome.
    pub async fn publish(&self, channel: String, payload: RVec<u8>) -> Result<(), PluginError> {
        let (ack, outcome) = oneshot::channel();
        let message = Outgoing { channel, payload, ack: Some(ack) };
        self.queue.send(message).await.map_err(|_| self.closed())?;
        outcome.await.map_err(|_| self.closed())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_pushes_back_and_an_awaited_publish_gets_its_outcome() {
        let (outbox, mut outgoing) = Outbox::new("test", 1);
        outbox.try_publish("a".into(), RVec::from(vec![1])).unwrap();
        let full = outbox.try_publish("a".into(), RVec::from(vec![2])).unwrap_err();
        assert_eq!(full.code, crate::ErrorCode::BACKPRESSURE);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while outgoing.recv_many(&mut batch, 8).await > 0 {
                let failed = batch.iter().any(|m| m.channel == "fails");
                let outcome = if failed { Err(PluginError::unavailable("no")) } else { Ok(()) };
                settle_all(&mut batch, &outcome);
            }
        });
        outbox.publish("b".into(), RVec::from(vec![3])).await.unwrap();
        assert!(outbox.publish("fails".into(), RVec::new()).await.is_err());
        drop(outbox);
        writer.await.unwrap();
    }
}
