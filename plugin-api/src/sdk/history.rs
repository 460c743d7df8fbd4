//! The history adapter: a plain Rust [`HistoryDriver`] as the FFI [`History`] object.

use std::future::Future;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RStr, RVec},
};
use async_ffi::FfiFuture;
use tokio::runtime::Handle;

use super::{drivers::Adapter, spawn};
use crate::{
    Appended, History, History_TO, HistoryBox, HistoryBus, HistoryBus_TO, HistoryBusBox, Outgoing,
    PResult, Page, PluginError, Published, Retention,
};

/// A history store in plain Rust; see [`History`] for the contract of each method.
pub trait HistoryDriver: Send + Sync + 'static {
    /// See [`History::append`] (`records` is never empty: the adapter refuses an empty call).
    fn append(
        &self,
        app: &str,
        channel: &str,
        records: Vec<Vec<u8>>,
        retention: Retention,
    ) -> impl Future<Output = Result<Appended, PluginError>> + Send;
    /// See [`History::read`].
    fn read(
        &self,
        app: &str,
        channel: &str,
        after: u64,
        limit: u32,
        retention: Retention,
    ) -> impl Future<Output = Result<Page, PluginError>> + Send;
    /// See [`History::reset`].
    fn reset(
        &self,
        app: &str,
        channel: &str,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`History::health`].
    fn health(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
    /// See [`History::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// The FFI history object for `driver`.
pub fn history_box<T: HistoryDriver>(runtime: &'static Handle, driver: T) -> HistoryBox {
    History_TO::from_value(Adapter::new(runtime, driver), TD_Opaque)
}

impl<T: HistoryDriver> History for Adapter<T> {
    fn append(
        &self,
        app: RStr<'_>,
        channel: RStr<'_>,
        records: RVec<RVec<u8>>,
        retention: Retention,
    ) -> FfiFuture<PResult<Appended>> {
        let records: Vec<Vec<u8>> = records.into_iter().map(RVec::into_vec).collect();
        let names = (app.to_string(), channel.to_string(), records);
        self.call(names, move |h, (app, channel, records)| async move {
            if records.is_empty() {
                return Err(PluginError::rejected("an append of no record"));
            }
            h.append(&app, &channel, records, retention).await
        })
    }

    fn read(
        &self,
        app: RStr<'_>,
        channel: RStr<'_>,
        after: u64,
        limit: u32,
        retention: Retention,
    ) -> FfiFuture<PResult<Page>> {
        self.call((app.to_string(), channel.to_string()), move |h, (app, channel)| async move {
            h.read(&app, &channel, after, limit, retention).await
        })
    }

    fn reset(&self, app: RStr<'_>, channel: RStr<'_>) -> FfiFuture<PResult<()>> {
        self.call((app.to_string(), channel.to_string()), |h, (app, channel)| async move {
            h.reset(&app, &channel).await
        })
    }

    fn health(&self) -> FfiFuture<PResult<()>> {
        self.call((), |h, ()| async move { h.health().await })
    }

    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        let inner = self.inner.clone();
        spawn(self.runtime, async move { inner.shutdown().await })
    }
}

/// A history store's way onto the bus in plain Rust; see [`HistoryBus`].
pub trait HistoryBusDriver: Send + Sync + 'static {
    /// See [`HistoryBus::append_publishing`] (`events` is never empty: the adapter refuses an
    /// empty call).
    fn append_publishing(
        &self,
        app: &str,
        channel: &str,
        topic: &str,
        events: Vec<Outgoing>,
        retention: Retention,
    ) -> impl Future<Output = Result<Published, PluginError>> + Send;
    /// See [`HistoryBus::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// The FFI object of a history store's way onto the bus, for `driver`.
pub fn history_bus_box<T: HistoryBusDriver>(runtime: &'static Handle, driver: T) -> HistoryBusBox {
    HistoryBus_TO::from_value(Adapter::new(runtime, driver), TD_Opaque)
}

impl<T: HistoryBusDriver> HistoryBus for Adapter<T> {
    fn append_publishing(
        &self,
        app: RStr<'_>,
        channel: RStr<'_>,
        topic: RStr<'_>,
        events: RVec<Outgoing>,
        retention: Retention,
    ) -> FfiFuture<PResult<Published>> {
        let names = (app.to_string(), channel.to_string(), topic.to_string(), events.into_vec());
        self.call(names, move |h, (app, channel, topic, events)| async move {
            if events.is_empty() {
                return Err(PluginError::rejected("an append of no record"));
            }
            h.append_publishing(&app, &channel, &topic, events, retention).await
        })
    }

    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        let inner = self.inner.clone();
        spawn(self.runtime, async move { inner.shutdown().await })
    }
}
