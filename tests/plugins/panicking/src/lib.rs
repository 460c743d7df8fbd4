//! Test fixture: drivers that panic, to prove that a panic in a plugin becomes an error at the
//! boundary and the host keeps running.
//!
//! - transport `panicking` (through the SDK): `try_publish` panics, `publish` panics while
//!   polled, `node_count_hint` panics while building its future; the rest work.
//! - cache `panicking`: its constructor panics.
//! - queue `raw-panicking`: written without the SDK; `pending` returns a future that panics
//!   in poll, which only the host's own guard can contain.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

use sockhost_plugin_api::{
    CacheBox, DriverDecl, DriverKind, HostContextBox, PResult, PluginError, PluginInfo,
    PluginModule, PluginModule_Ref, Queue, Queue_TO, QueueBox, QueueHandlerBox, TransportBox,
    abi::{FfiFuture, FfiFutureExt as _, PrefixTypeTrait as _, RStr, RVec, TD_Opaque},
    sdk::{self, TransportDriver},
};

const PLUGIN: &str = "panicking";

const DRIVERS: &[DriverDecl] = &[
    DriverDecl::new(DriverKind::TRANSPORT, "panicking"),
    DriverDecl::new(DriverKind::CACHE, "panicking"),
    DriverDecl::new(DriverKind::QUEUE, "raw-panicking"),
];

/// The root module.
#[abi_stable::export_root_module]
pub fn root_module() -> PluginModule_Ref {
    PluginModule {
        info,
        transport: Some(new_transport),
        cache: Some(new_cache),
        queue: Some(new_queue),
        rate_limiter: None,
        app_manager: None,
        history: None,
        history_bus: None,
        host_io: None,
    }
    .leak_into_prefix()
}

extern "C" fn info() -> PluginInfo {
    PluginInfo::new(PLUGIN, env!("CARGO_PKG_VERSION"), DRIVERS)
}

struct Panicking;

impl TransportDriver for Panicking {
    fn try_publish(&self, _topic: &str, _payload: RVec<u8>) -> Result<(), PluginError> {
        panic!("try_publish panicked on purpose")
    }

    async fn publish(&self, _topic: &str, _payload: RVec<u8>) -> Result<(), PluginError> {
        tokio_yield().await;
        panic!("publish panicked on purpose while polled")
    }

    async fn subscribe(&self, _topic: &str) -> Result<(), PluginError> {
        Ok(())
    }

    async fn unsubscribe(&self, _topic: &str) -> Result<(), PluginError> {
        Ok(())
    }

    fn node_count_hint(&self) -> impl Future<Output = Result<Option<u64>, PluginError>> + Send {
        panic!("node_count_hint panicked on purpose before making its future");
        #[allow(unreachable_code)]
        std::future::ready(Ok(None))
    }

    async fn health(&self) -> Result<(), PluginError> {
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Yield once, so the panic happens in a later poll than the first.
async fn tokio_yield() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

extern "C" fn new_transport(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<TransportBox>> {
    sdk::create(PLUGIN, driver, config, host, |args| async move {
        Ok(sdk::transport_box(args.runtime, Panicking))
    })
}

extern "C" fn new_cache(
    driver: RStr<'_>,
    config: RStr<'_>,
    host: HostContextBox,
) -> FfiFuture<PResult<CacheBox>> {
    sdk::create(PLUGIN, driver, config, host, |_args| async move {
        if true {
            panic!("the cache constructor panicked on purpose");
        }
        Err(PluginError::internal("unreachable"))
    })
}

struct RawQueue;

impl Queue for RawQueue {
    fn push(&self, _queue: RStr<'_>, _payload: RVec<u8>) -> FfiFuture<PResult<()>> {
        std::future::ready(PResult::ROk(())).into_ffi()
    }
    fn consume(&self, _queue: RStr<'_>, _handler: QueueHandlerBox) -> FfiFuture<PResult<()>> {
        std::future::ready(PResult::ROk(())).into_ffi()
    }
    fn pending(&self, _queue: RStr<'_>) -> FfiFuture<PResult<u64>> {
        async { panic!("pending panicked in a raw future") }.into_ffi()
    }
    fn health(&self) -> FfiFuture<PResult<()>> {
        std::future::ready(PResult::ROk(())).into_ffi()
    }
    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        std::future::ready(PResult::ROk(())).into_ffi()
    }
}

extern "C" fn new_queue(
    _driver: RStr<'_>,
    _config: RStr<'_>,
    _host: HostContextBox,
) -> FfiFuture<PResult<QueueBox>> {
    std::future::ready(PResult::ROk(Queue_TO::from_value(RawQueue, TD_Opaque))).into_ffi()
}
