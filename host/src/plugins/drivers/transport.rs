//! The transport handle.

use sockhost_plugin_api::{
    TransportBox,
    abi::{RStr, RVec},
};

use super::{DriverError, call::Named};

/// The transport, as the host uses it.
#[derive(Debug)]
pub struct Transport(pub(super) Named<TransportBox>);

impl Transport {
    /// A transport that publishes nowhere, for unit tests of the cluster layer.
    #[cfg(test)]
    pub(crate) fn nowhere() -> Self {
        use sockhost_plugin_api::DriverKind;
        Self(Named::new(
            DriverKind::TRANSPORT,
            "nowhere",
            super::super::builtin::nowhere_transport(),
        ))
    }

    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Enqueue a message without waiting; BACKPRESSURE if the plugin's queue is full.
    pub fn try_publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), DriverError> {
        self.0.sync(|t| t.try_publish(RStr::from_str(topic), RVec::from(payload)))
    }

    /// Publish and wait for the backend to accept it.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), DriverError> {
        self.0.call(self.0.inner.publish(RStr::from_str(topic), RVec::from(payload))).await
    }

    /// Subscribe and wait for the backend to confirm.
    pub async fn subscribe(&self, topic: &str) -> Result<(), DriverError> {
        self.0.call(self.0.inner.subscribe(RStr::from_str(topic))).await
    }

    /// Unsubscribe and wait for the backend to confirm.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), DriverError> {
        self.0.call(self.0.inner.unsubscribe(RStr::from_str(topic))).await
    }

    /// The backend's count of nodes, if it can tell.
    pub async fn node_count_hint(&self) -> Result<Option<u64>, DriverError> {
        self.0.call(self.0.inner.node_count_hint()).await.map(|n| n.into_option())
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}
