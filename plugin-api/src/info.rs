//! What a plugin says about itself.

use std::fmt;

use abi_stable::{
    StableAbi,
    std_types::{RSlice, RStr},
};

/// A kind of driver a plugin can provide.
///
/// An integer rather than an enum so that kinds can be added without a new ABI generation.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverKind(pub u8);

impl DriverKind {
    /// Moves opaque bytes between sockhost nodes.
    pub const TRANSPORT: Self = Self(1);
    /// Key-value store with TTLs (cache channels, app state).
    pub const CACHE: Self = Self(2);
    /// Durable jobs (webhooks).
    pub const QUEUE: Self = Self(3);
    /// Token windows per key.
    pub const RATE_LIMITER: Self = Self(4);
    /// Where apps live when not in the configuration file.
    pub const APP_MANAGER: Self = Self(5);
    /// Channel streams with serials assigned once for the cluster (connection recovery).
    pub const HISTORY: Self = Self(6);

    /// Every kind this ABI generation knows, in a stable order.
    pub const ALL: [Self; 6] = [
        Self::TRANSPORT,
        Self::CACHE,
        Self::QUEUE,
        Self::RATE_LIMITER,
        Self::APP_MANAGER,
        Self::HISTORY,
    ];

    /// The kind's name as operators write it in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::TRANSPORT => "transport",
            Self::CACHE => "cache",
            Self::QUEUE => "queue",
            Self::RATE_LIMITER => "rate-limiter",
            Self::APP_MANAGER => "app-manager",
            Self::HISTORY => "history",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One driver a plugin provides: its kind and the name operators select it by.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct DriverDecl {
    /// The kind of driver.
    pub kind: DriverKind,
    /// The name it is selected by (`redis`, `memory`, ...), unique per kind across loaded plugins.
    pub name: RStr<'static>,
}

impl DriverDecl {
    /// A driver of `kind` called `name`.
    pub const fn new(kind: DriverKind, name: &'static str) -> Self {
        Self { kind, name: RStr::from_str(name) }
    }
}

/// What a plugin is: static data, so producing it cannot fail or panic.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct PluginInfo {
    /// The plugin's name (`local`, `redis`, ...).
    pub name: RStr<'static>,
    /// The plugin's own version (its crate version).
    pub version: RStr<'static>,
    /// The `plugin-api` version it was built against.
    pub api_version: RStr<'static>,
    /// The drivers it provides.
    pub drivers: RSlice<'static, DriverDecl>,
}

impl PluginInfo {
    /// Info for a plugin built against this crate.
    pub const fn new(
        name: &'static str,
        version: &'static str,
        drivers: &'static [DriverDecl],
    ) -> Self {
        Self {
            name: RStr::from_str(name),
            version: RStr::from_str(version),
            api_version: RStr::from_str(crate::API_VERSION),
            drivers: RSlice::from_slice(drivers),
        }
    }

    /// The names of the drivers of one kind.
    pub fn drivers_of(&self, kind: DriverKind) -> impl Iterator<Item = &'static str> + '_ {
        self.drivers.as_slice().iter().filter(move |d| d.kind == kind).map(|d| d.name.as_str())
    }
}
