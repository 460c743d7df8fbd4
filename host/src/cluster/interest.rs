//! Topic interest: a node subscribes to a channel's topic while it has a local subscriber,
//! reference-counted, one change at a time.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};

use super::Cluster;
use crate::plugins::{ErrorCode, Transport};

pub(super) type InterestOp = (String, bool, oneshot::Sender<()>);

impl Cluster {
    /// Make sure this node receives `topic` (reference-counted; resolves once subscribed).
    pub(crate) async fn acquire(&self, topic: String) {
        let (done, wait) = oneshot::channel();
        if self.interest.send((topic, true, done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Drop one reference to `topic`; the last one unsubscribes.
    pub(crate) fn release(&self, topic: String) {
        let (done, _) = oneshot::channel();
        let _ = self.interest.send((topic, false, done));
    }
}

/// Keep topic subscriptions, reference-counted, one change at a time so that a subscribe and an
/// unsubscribe of the same topic cannot overtake each other.
pub(super) async fn keep_interest(
    transport: Arc<Transport>,
    mut ops: mpsc::UnboundedReceiver<InterestOp>,
) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    while let Some((topic, acquire, done)) = ops.recv().await {
        let count = counts.entry(topic.clone()).or_default();
        if acquire {
            *count += 1;
            if *count == 1 || failed.contains(&topic) {
                match transport.subscribe(&topic).await {
                    Ok(()) => {
                        failed.remove(&topic);
                    }
                    Err(error) => {
                        // The transport resubscribes known topics when it is back; keep count.
                        tracing::warn!(%error, topic, "Subscribing to a bus topic failed.");
                        failed.insert(topic.clone());
                    }
                }
            }
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&topic);
                failed.remove(&topic);
                if let Err(error) = transport.unsubscribe(&topic).await
                    && error.code() != Some(ErrorCode::UNAVAILABLE)
                {
                    tracing::warn!(%error, topic, "Unsubscribing from a bus topic failed.");
                }
            }
        }
        let _ = done.send(());
    }
}
