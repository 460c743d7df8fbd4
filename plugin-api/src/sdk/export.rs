//! [`export_plugin!`](crate::export_plugin): a plugin's root module, `info` and guarded
//! constructors from one declaration.

use crate::PluginError;

use super::CreateArgs;

/// Refuse a driver name the plugin did not declare for `kind` (the host asks only for declared
/// ones, but a constructor must not trust its caller).
///
/// # Errors
/// A configuration error naming the plugin, the kind and the name.
pub fn expect_driver(
    plugin: &str,
    kind: &str,
    args: &CreateArgs,
    declared: &[&str],
) -> Result<(), PluginError> {
    if declared.contains(&args.driver.as_str()) {
        Ok(())
    } else {
        Err(PluginError::config(format!(
            "plugin {plugin} provides no {kind} driver `{}`",
            args.driver
        )))
    }
}

/// Give a builder closure its argument type (what [`export_plugin!`](crate::export_plugin)
/// calls it with), so its body can use the fields without an annotation.
pub fn builder<T, F, Fut>(build: F) -> F
where
    F: FnOnce(CreateArgs) -> Fut,
    Fut: Future<Output = Result<T, PluginError>>,
{
    build
}

/// Declare a plugin: its name, and for each kind it provides the driver names and an async
/// builder `FnOnce(CreateArgs) -> Result<XBox, PluginError>`. Expands to the exported root
/// module, `info` (with the crate's own version), and one constructor per kind, each run
/// through [`create`](crate::sdk::create) (panics caught, on the plugin's runtime) after
/// checking the asked name is declared.
///
/// ```ignore
/// sockhost_plugin_api::export_plugin! {
///     name: "mine",
///     transport: ["mine"] => |args| async move {
///         let transport = MyTransport::connect(&args.config, args.host).await?;
///         Ok(sdk::transport_box(args.runtime, transport))
///     },
/// }
/// ```
///
/// The plugin crate needs `abi_stable` as a dependency (the export attribute names it) and
/// `#![allow(unsafe_code)]` (the attribute expands to an exported static).
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:literal
        $(, transport: [$($transport:literal),+ $(,)?] => $new_transport:expr)?
        $(, cache: [$($cache:literal),+ $(,)?] => $new_cache:expr)?
        $(, queue: [$($queue:literal),+ $(,)?] => $new_queue:expr)?
        $(, rate_limiter: [$($limiter:literal),+ $(,)?] => $new_limiter:expr)?
        $(, app_manager: [$($manager:literal),+ $(,)?] => $new_manager:expr)?
        $(, history: [$($history:literal),+ $(,)?] => $new_history:expr)?
        $(, history_bus: [$($bus:literal),+ $(,)?] => $new_bus:expr)?
        $(,)?
    ) => {
        /// The plugin's name.
        pub const PLUGIN: &str = $name;

        const __SOCKHOST_DRIVERS: &[$crate::DriverDecl] = &[
            $($($crate::DriverDecl::new($crate::DriverKind::TRANSPORT, $transport),)+)?
            $($($crate::DriverDecl::new($crate::DriverKind::CACHE, $cache),)+)?
            $($($crate::DriverDecl::new($crate::DriverKind::QUEUE, $queue),)+)?
            $($($crate::DriverDecl::new($crate::DriverKind::RATE_LIMITER, $limiter),)+)?
            $($($crate::DriverDecl::new($crate::DriverKind::APP_MANAGER, $manager),)+)?
            $($($crate::DriverDecl::new($crate::DriverKind::HISTORY, $history),)+)?
        ];

        /// The root module the server loads.
        #[abi_stable::export_root_module]
        pub fn root_module() -> $crate::PluginModule_Ref {
            use $crate::abi::PrefixTypeTrait as _;
            $crate::PluginModule {
                info: __sockhost_info,
                transport: $crate::export_plugin!(@some $($new_transport, __sockhost_new_transport)?),
                cache: $crate::export_plugin!(@some $($new_cache, __sockhost_new_cache)?),
                queue: $crate::export_plugin!(@some $($new_queue, __sockhost_new_queue)?),
                rate_limiter: $crate::export_plugin!(@some $($new_limiter, __sockhost_new_rate_limiter)?),
                app_manager: $crate::export_plugin!(@some $($new_manager, __sockhost_new_app_manager)?),
                history: $crate::export_plugin!(@some $($new_history, __sockhost_new_history)?),
                history_bus: $crate::export_plugin!(@some $($new_bus, __sockhost_new_history_bus)?),
                host_io: Some($crate::sdk::host_io::install),
            }
            .leak_into_prefix()
        }

        extern "C" fn __sockhost_info() -> $crate::PluginInfo {
            $crate::PluginInfo::new(PLUGIN, env!("CARGO_PKG_VERSION"), __SOCKHOST_DRIVERS)
        }

        $($crate::export_plugin!(@constructor __sockhost_new_transport, TransportBox, "transport",
            [$($transport),+], $new_transport);)?
        $($crate::export_plugin!(@constructor __sockhost_new_cache, CacheBox, "cache",
            [$($cache),+], $new_cache);)?
        $($crate::export_plugin!(@constructor __sockhost_new_queue, QueueBox, "queue",
            [$($queue),+], $new_queue);)?
        $($crate::export_plugin!(@constructor __sockhost_new_rate_limiter, RateLimiterBox,
            "rate limiter", [$($limiter),+], $new_limiter);)?
        $($crate::export_plugin!(@constructor __sockhost_new_app_manager, AppManagerBox,
            "app manager", [$($manager),+], $new_manager);)?
        $($crate::export_plugin!(@constructor __sockhost_new_history, HistoryBox,
            "history", [$($history),+], $new_history);)?
        $($crate::export_plugin!(@constructor __sockhost_new_history_bus, HistoryBusBox,
            "history bus", [$($bus),+], $new_bus);)?
    };
    (@some) => { None };
    (@some $build:expr, $constructor:ident) => { Some($constructor) };
    (@constructor $constructor:ident, $boxed:ident, $kind:literal, [$($driver:literal),+], $build:expr) => {
        extern "C" fn $constructor(
            driver: $crate::abi::RStr<'_>,
            config: $crate::abi::RStr<'_>,
            host: $crate::HostContextBox,
        ) -> $crate::abi::FfiFuture<$crate::PResult<$crate::$boxed>> {
            $crate::sdk::create(PLUGIN, driver, config, host, |args| {
                let build = $crate::sdk::builder($build);
                async move {
                    $crate::sdk::expect_driver(PLUGIN, $kind, &args, &[$($driver),+])?;
                    build(args).await
                }
            })
        }
    };
}
