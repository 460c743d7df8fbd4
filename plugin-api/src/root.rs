//! The root module: the one thing a plugin library exports.

// abi_stable names the prefix reference type `<Struct>_Ref`.
#![allow(non_camel_case_types)]

use abi_stable::{
    StableAbi, declare_root_module_statics, library::RootModule, package_version_strings,
    sabi_types::VersionStrings, std_types::RStr,
};
use async_ffi::FfiFuture;

use crate::{
    AppManagerBox, CacheBox, HistoryBox, HistoryBusBox, HostContextBox, HostIoBox, PResult,
    PluginInfo, QueueBox, RateLimiterBox, TransportBox,
};

/// What every plugin library exports (with `#[export_root_module]`).
///
/// A prefix type: fields after the one marked `last_prefix_field` may be added in later minor
/// versions and read as absent from older plugins. A constructor that is `None` means the
/// plugin provides no driver of that kind.
// Function pointers with higher-ranked lifetimes have no useful Debug output.
#[allow(missing_debug_implementations)]
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// What the plugin is and which drivers it provides.
    pub info: extern "C" fn() -> PluginInfo,
    /// The transport constructor, if the plugin provides transports: builds the transport named
    /// `driver` from its configuration text (the driver's own table, as TOML). A bad
    /// configuration answers [`ErrorCode::CONFIG`](crate::ErrorCode::CONFIG) naming the field.
    pub transport: Option<
        extern "C" fn(
            driver: RStr<'_>,
            config: RStr<'_>,
            host: HostContextBox,
        ) -> FfiFuture<PResult<TransportBox>>,
    >,
    /// The cache constructor, if the plugin provides caches; as `transport`.
    pub cache: Option<
        extern "C" fn(
            driver: RStr<'_>,
            config: RStr<'_>,
            host: HostContextBox,
        ) -> FfiFuture<PResult<CacheBox>>,
    >,
    /// The queue constructor, if the plugin provides queues; as `transport`.
    pub queue: Option<
        extern "C" fn(
            driver: RStr<'_>,
            config: RStr<'_>,
            host: HostContextBox,
        ) -> FfiFuture<PResult<QueueBox>>,
    >,
    /// The rate-limiter constructor, if the plugin provides rate limiters.
    ///
    /// This is the last field of ABI generation 0.1: add new fields after it, never before.
    #[sabi(last_prefix_field)]
    pub rate_limiter: Option<
        extern "C" fn(
            driver: RStr<'_>,
            config: RStr<'_>,
            host: HostContextBox,
        ) -> FfiFuture<PResult<RateLimiterBox>>,
    >,
    /// The app-manager constructor, if the plugin provides app managers. Added within
    /// generation 0.1, after the last prefix field; a plugin built before it has no such field
    /// (see [`base`]).
    #[sabi(missing_field(default))]
    pub app_manager: Option<
        extern "C" fn(
            driver: RStr<'_>,
            config: RStr<'_>,
            host: HostContextBox,
        ) -> FfiFuture<PResult<AppManagerBox>>,
    >,
    /// The history constructor, if the plugin provides history stores. Added within
    /// generation 0.1 after app managers; a plugin built before it has no such field (see
    /// [`with_apps`]).
    #[sabi(missing_field(default))]
    pub history: Option<
        extern "C" fn(
            driver: RStr<'_>,
            config: RStr<'_>,
            host: HostContextBox,
        ) -> FfiFuture<PResult<HistoryBox>>,
    >,
    /// The constructor of history stores' way onto the bus ([`crate::HistoryBus`]), if the
    /// plugin's history stores can publish; called with a history store's driver name and
    /// configuration. Added within generation 0.1 after history stores; a plugin built
    /// before it has no such field (see [`with_history`]).
    #[sabi(missing_field(default))]
    pub history_bus: Option<
        extern "C" fn(
            driver: RStr<'_>,
            config: RStr<'_>,
            host: HostContextBox,
        ) -> FfiFuture<PResult<HistoryBusBox>>,
    >,
    /// Takes the host's runtime ([`crate::HostIo`]), lent for the sockets of the plugin's
    /// per-message round trips; the host calls it once, after loading, before any
    /// constructor. Added within generation 0.1 after `history_bus`; a plugin built before it
    /// has no such field (see [`with_history_bus`]) and keeps its sockets on its own runtime.
    #[sabi(missing_field(default))]
    pub host_io: Option<extern "C" fn(io: HostIoBox)>,
}

impl RootModule for PluginModule_Ref {
    declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = "sockhost_plugin";
    const NAME: &'static str = "sockhost plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The root module as ABI 0.1.0 laid it out (up to `rate_limiter`), frozen.
///
/// abi_stable's layout check refuses a library whose root module has *fewer* fields than the
/// loader's type (it allows more). So the host checks every plugin against this frozen
/// layout, which plugins of every 0.1.x pass, and then, for the fields added since, against
/// [`PluginModule`] (see [`crate::load::open`]): a plugin built before them fails only that
/// second check, and simply provides none of the newer kinds. Never change this type.
pub mod base {
    #![allow(non_camel_case_types)]

    use abi_stable::{
        StableAbi, declare_root_module_statics, library::RootModule, package_version_strings,
        sabi_types::VersionStrings, std_types::RStr,
    };
    use async_ffi::FfiFuture;

    use crate::{
        CacheBox, HostContextBox, PResult, PluginInfo, QueueBox, RateLimiterBox, TransportBox,
    };

    /// [`super::PluginModule`] as of 0.1.0; the same name, as the layout check requires.
    #[allow(missing_debug_implementations, clippy::type_complexity)]
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
    #[sabi(missing_field(panic))]
    pub struct PluginModule {
        /// See [`super::PluginModule::info`].
        pub info: extern "C" fn() -> PluginInfo,
        /// See [`super::PluginModule::transport`].
        pub transport: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<TransportBox>>,
        >,
        /// See [`super::PluginModule::cache`].
        pub cache: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<CacheBox>>,
        >,
        /// See [`super::PluginModule::queue`].
        pub queue: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<QueueBox>>,
        >,
        /// See [`super::PluginModule::rate_limiter`].
        #[sabi(last_prefix_field)]
        pub rate_limiter: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<RateLimiterBox>>,
        >,
    }

    impl RootModule for PluginModule_Ref {
        declare_root_module_statics! {PluginModule_Ref}
        const BASE_NAME: &'static str = "sockhost_plugin";
        const NAME: &'static str = "sockhost plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }
}

/// The root module as it was laid out with app managers and before history stores (up to
/// `app_manager`), frozen for the same reason as [`base`]: a plugin built then fails the check
/// against [`PluginModule`] (it has fewer fields) and passes this one, so that its app
/// managers still load. Never change this type.
pub mod with_apps {
    #![allow(non_camel_case_types)]

    use abi_stable::{
        StableAbi, declare_root_module_statics, library::RootModule, package_version_strings,
        sabi_types::VersionStrings, std_types::RStr,
    };
    use async_ffi::FfiFuture;

    use crate::{
        AppManagerBox, CacheBox, HostContextBox, PResult, PluginInfo, QueueBox, RateLimiterBox,
        TransportBox,
    };

    /// [`super::PluginModule`] with app managers and before history stores; the same name,
    /// as the layout check requires.
    #[allow(missing_debug_implementations, clippy::type_complexity)]
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
    #[sabi(missing_field(panic))]
    pub struct PluginModule {
        /// See [`super::PluginModule::info`].
        pub info: extern "C" fn() -> PluginInfo,
        /// See [`super::PluginModule::transport`].
        pub transport: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<TransportBox>>,
        >,
        /// See [`super::PluginModule::cache`].
        pub cache: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<CacheBox>>,
        >,
        /// See [`super::PluginModule::queue`].
        pub queue: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<QueueBox>>,
        >,
        /// See [`super::PluginModule::rate_limiter`].
        #[sabi(last_prefix_field)]
        pub rate_limiter: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<RateLimiterBox>>,
        >,
        /// See [`super::PluginModule::app_manager`].
        #[sabi(missing_field(default))]
        pub app_manager: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<AppManagerBox>>,
        >,
    }

    impl RootModule for PluginModule_Ref {
        declare_root_module_statics! {PluginModule_Ref}
        const BASE_NAME: &'static str = "sockhost_plugin";
        const NAME: &'static str = "sockhost plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }
}

/// The root module as it was laid out with history stores and before their way onto the bus
/// (up to `history`), frozen for the same reason as [`base`]: a plugin built then fails the
/// check against [`PluginModule`] and passes this one, so that its history stores (and app
/// managers) still load. Never change this type.
pub mod with_history {
    #![allow(non_camel_case_types)]

    use abi_stable::{
        StableAbi, declare_root_module_statics, library::RootModule, package_version_strings,
        sabi_types::VersionStrings, std_types::RStr,
    };
    use async_ffi::FfiFuture;

    use crate::{
        AppManagerBox, CacheBox, HistoryBox, HostContextBox, PResult, PluginInfo, QueueBox,
        RateLimiterBox, TransportBox,
    };

    /// [`super::PluginModule`] with history stores and before `history_bus`; the same name,
    /// as the layout check requires.
    #[allow(missing_debug_implementations, clippy::type_complexity)]
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
    #[sabi(missing_field(panic))]
    pub struct PluginModule {
        /// See [`super::PluginModule::info`].
        pub info: extern "C" fn() -> PluginInfo,
        /// See [`super::PluginModule::transport`].
        pub transport: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<TransportBox>>,
        >,
        /// See [`super::PluginModule::cache`].
        pub cache: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<CacheBox>>,
        >,
        /// See [`super::PluginModule::queue`].
        pub queue: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<QueueBox>>,
        >,
        /// See [`super::PluginModule::rate_limiter`].
        #[sabi(last_prefix_field)]
        pub rate_limiter: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<RateLimiterBox>>,
        >,
        /// See [`super::PluginModule::app_manager`].
        #[sabi(missing_field(default))]
        pub app_manager: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<AppManagerBox>>,
        >,
        /// See [`super::PluginModule::history`].
        #[sabi(missing_field(default))]
        pub history: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<HistoryBox>>,
        >,
    }

    impl RootModule for PluginModule_Ref {
        declare_root_module_statics! {PluginModule_Ref}
        const BASE_NAME: &'static str = "sockhost_plugin";
        const NAME: &'static str = "sockhost plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }
}

/// The root module as it was laid out with history stores' way onto the bus and before the
/// host lent its runtime (up to `history_bus`), frozen for the same reason as [`base`]: a
/// plugin built then fails the check against [`PluginModule`] and passes this one, so that
/// every kind it has still loads. Never change this type.
pub mod with_history_bus {
    #![allow(non_camel_case_types)]

    use abi_stable::{
        StableAbi, declare_root_module_statics, library::RootModule, package_version_strings,
        sabi_types::VersionStrings, std_types::RStr,
    };
    use async_ffi::FfiFuture;

    use crate::{
        AppManagerBox, CacheBox, HistoryBox, HistoryBusBox, HostContextBox, PResult, PluginInfo,
        QueueBox, RateLimiterBox, TransportBox,
    };

    /// [`super::PluginModule`] with `history_bus` and before `host_io`; the same name, as the
    /// layout check requires.
    #[allow(missing_debug_implementations, clippy::type_complexity)]
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
    #[sabi(missing_field(panic))]
    pub struct PluginModule {
        /// See [`super::PluginModule::info`].
        pub info: extern "C" fn() -> PluginInfo,
        /// See [`super::PluginModule::transport`].
        pub transport: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<TransportBox>>,
        >,
        /// See [`super::PluginModule::cache`].
        pub cache: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<CacheBox>>,
        >,
        /// See [`super::PluginModule::queue`].
        pub queue: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<QueueBox>>,
        >,
        /// See [`super::PluginModule::rate_limiter`].
        #[sabi(last_prefix_field)]
        pub rate_limiter: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<RateLimiterBox>>,
        >,
        /// See [`super::PluginModule::app_manager`].
        #[sabi(missing_field(default))]
        pub app_manager: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<AppManagerBox>>,
        >,
        /// See [`super::PluginModule::history`].
        #[sabi(missing_field(default))]
        pub history: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<HistoryBox>>,
        >,
        /// See [`super::PluginModule::history_bus`].
        #[sabi(missing_field(default))]
        pub history_bus: Option<
            extern "C" fn(
                driver: RStr<'_>,
                config: RStr<'_>,
                host: HostContextBox,
            ) -> FfiFuture<PResult<HistoryBusBox>>,
        >,
    }

    impl RootModule for PluginModule_Ref {
        declare_root_module_statics! {PluginModule_Ref}
        const BASE_NAME: &'static str = "sockhost_plugin";
        const NAME: &'static str = "sockhost plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }
}
