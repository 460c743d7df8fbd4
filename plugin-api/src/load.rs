//! Opening a plugin library: the ABI checks, without the host's policy checks (manifest,
//! checksum, permissions), which the host's loader does before calling [`open`].

use std::{fmt, path::Path};

use abi_stable::{
    library::{LibraryError, RootModule, lib_header_from_path},
    sabi_types::VersionNumber,
};

use crate::{
    AppManagerBox, CacheBox, HistoryBox, HistoryBusBox, HostContextBox, HostIoBox, PResult,
    PluginInfo, PluginModule_Ref, QueueBox, RateLimiterBox, TransportBox,
    abi::{FfiFuture, RStr},
    root::{base, with_apps, with_history, with_history_bus},
};

/// A driver constructor: the driver's name, its configuration text, the host's callbacks.
pub type Constructor<T> =
    extern "C" fn(RStr<'_>, RStr<'_>, HostContextBox) -> FfiFuture<PResult<T>>;

/// An opened plugin's root module: the fields every plugin of this generation has, and the
/// ones added since, when the plugin was built with them.
#[derive(Clone, Copy)]
pub struct Module {
    base: base::PluginModule_Ref,
    /// Set when the plugin has app managers' layout but not a later one.
    with_apps: Option<with_apps::PluginModule_Ref>,
    /// Set when the plugin has history stores' layout but not a later one.
    with_history: Option<with_history::PluginModule_Ref>,
    /// Set when the plugin has the layout with history stores' publishing but not the current
    /// one.
    with_history_bus: Option<with_history_bus::PluginModule_Ref>,
    full: Option<PluginModule_Ref>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module").field("current", &self.full.is_some()).finish_non_exhaustive()
    }
}

impl Module {
    /// What the plugin says about itself.
    pub fn info(&self) -> PluginInfo {
        (self.base.info())()
    }

    /// The transport constructor, if any.
    pub fn transport(&self) -> Option<Constructor<TransportBox>> {
        self.base.transport()
    }

    /// The cache constructor, if any.
    pub fn cache(&self) -> Option<Constructor<CacheBox>> {
        self.base.cache()
    }

    /// The queue constructor, if any.
    pub fn queue(&self) -> Option<Constructor<QueueBox>> {
        self.base.queue()
    }

    /// The rate-limiter constructor, if any.
    pub fn rate_limiter(&self) -> Option<Constructor<RateLimiterBox>> {
        self.base.rate_limiter()
    }

    /// Whether the plugin's root module has the current layout (it was built with every kind
    /// of this generation); `false` for one built before a kind was added, which loads with
    /// the kinds of its layout only (see [`Module::missing`]).
    pub fn is_current(&self) -> bool {
        self.full.is_some()
    }

    /// The kinds this plugin cannot provide because it was built before they were added.
    pub fn missing(&self) -> &'static [&'static str] {
        const ALL: [&str; 4] =
            ["app managers", "history stores", "history stores' publishing", "host-driven sockets"];
        match (self.full, self.with_history_bus, self.with_history, self.with_apps) {
            (Some(_), ..) => &[],
            (None, Some(_), ..) => &ALL[3..],
            (None, None, Some(_), _) => &ALL[2..],
            (None, None, None, Some(_)) => &ALL[1..],
            (None, None, None, None) => &ALL,
        }
    }

    /// The app-manager constructor, if the plugin was built with app managers and has one.
    pub fn app_manager(&self) -> Option<Constructor<AppManagerBox>> {
        match (self.full, self.with_history_bus, self.with_history, self.with_apps) {
            (Some(full), ..) => full.app_manager(),
            (None, Some(with_history_bus), ..) => with_history_bus.app_manager(),
            (None, None, Some(with_history), _) => with_history.app_manager(),
            (None, None, None, Some(with_apps)) => with_apps.app_manager(),
            (None, None, None, None) => None,
        }
    }

    /// The history constructor, if the plugin was built with history stores and has one.
    pub fn history(&self) -> Option<Constructor<HistoryBox>> {
        match (self.full, self.with_history_bus, self.with_history) {
            (Some(full), ..) => full.history(),
            (None, Some(with_history_bus), _) => with_history_bus.history(),
            (None, None, Some(with_history)) => with_history.history(),
            (None, None, None) => None,
        }
    }

    /// The constructor of history stores' way onto the bus, if the plugin was built with it
    /// and has one.
    pub fn history_bus(&self) -> Option<Constructor<HistoryBusBox>> {
        match (self.full, self.with_history_bus) {
            (Some(full), _) => full.history_bus(),
            (None, Some(with_history_bus)) => with_history_bus.history_bus(),
            (None, None) => None,
        }
    }

    /// Where the plugin takes the host's runtime ([`crate::HostIo`]), if it was built with it
    /// and wants it.
    pub fn host_io(&self) -> Option<extern "C" fn(HostIoBox)> {
        self.full.and_then(|m| m.host_io())
    }
}

/// Why a library was refused. Each variant prints as one line; [`OpenError::detail`] has the
/// long form where there is one.
#[derive(Debug)]
pub enum OpenError {
    /// The dynamic loader could not open the file (missing, not a shared library, wrong arch).
    Open(String),
    /// The library is a shared library but exports no sockhost root module.
    NotAPlugin(String),
    /// The plugin was built against another ABI generation.
    WrongVersion {
        /// The `plugin-api` version the plugin was built against.
        found: String,
        /// The `plugin-api` version this host speaks.
        expected: String,
    },
    /// The version matches but a type's layout differs.
    Layout {
        /// One line naming the first difference.
        summary: String,
        /// abi_stable's full report (thousands of lines).
        detail: String,
    },
    /// The plugin's root-module initialiser failed or panicked.
    Init(String),
}

impl OpenError {
    /// The full report, for the checks that have one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Layout { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(why) => write!(f, "cannot be opened as a shared library: {why}"),
            Self::NotAPlugin(why) => write!(f, "not a sockhost plugin: {why}"),
            Self::WrongVersion { found, expected } => write!(
                f,
                "wrong ABI version: built against plugin-api {found}, this host speaks {expected}"
            ),
            Self::Layout { summary, .. } => write!(f, "ABI layout mismatch: {summary}"),
            Self::Init(why) => write!(f, "plugin initialisation failed: {why}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Whether a plugin built against `found` can be used by a host built against `expected`:
/// the same minor before 1.0, the same major after. Within that, the layout check decides.
pub fn compatible(expected: &str, found: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(expected), parse(found)) {
        (Some((0, e_minor)), Some((0, f_minor))) => e_minor == f_minor,
        (Some((e_major, _)), Some((f_major, _))) => e_major != 0 && e_major == f_major,
        _ => false,
    }
}

/// Open the library at `path`, check its ABI version and layouts, and run its root-module
/// initialiser.
///
/// Opening runs the library's initialisers, so callers check where the file comes from first.
/// The library is never unloaded: modules and the drivers they build live until the process ends.
pub fn open(path: &Path) -> Result<Module, OpenError> {
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => OpenError::Open(first_line(&err.to_string())),
        LibraryError::GetSymbolError { .. } => {
            OpenError::NotAPlugin("it exports no abi_stable root module".into())
        }
        other => OpenError::NotAPlugin(first_line(&other.to_string())),
    })?;
    let consts = header.root_mod_consts();
    if consts.base_name().as_str() != PluginModule_Ref::BASE_NAME {
        return Err(OpenError::NotAPlugin(format!(
            "its root module is `{}`, not `{}`",
            consts.base_name(),
            PluginModule_Ref::BASE_NAME
        )));
    }
    let found = header.version_strings().version.as_str();
    let expected = crate::API_VERSION;
    if !compatible(expected, found) {
        return Err(OpenError::WrongVersion { found: found.into(), expected: expected.into() });
    }
    let base = header.init_root_module::<base::PluginModule_Ref>().map_err(|e| match e {
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => {
            OpenError::WrongVersion {
                found: version(actual_version),
                expected: version(expected_version),
            }
        }
        LibraryError::AbiInstability(report) => {
            let detail = report.to_string();
            OpenError::Layout { summary: summarize_layout_report(&detail), detail }
        }
        LibraryError::RootModule { err, .. } => OpenError::Init(first_line(&err.to_string())),
        other => OpenError::Init(first_line(&other.to_string())),
    })?;
    // The fields added within the generation: a plugin built before them fails this check
    // (it has fewer fields than the current type) and provides none of the newer kinds; one
    // built between two additions passes the frozen layout of its time
    // (`with_history_bus`, `with_history`, `with_apps`).
    let full = header.check_layout::<PluginModule_Ref>().ok();
    let with_history_bus = match full {
        Some(_) => None,
        None => header.check_layout::<with_history_bus::PluginModule_Ref>().ok(),
    };
    let with_history = match (full, with_history_bus) {
        (None, None) => header.check_layout::<with_history::PluginModule_Ref>().ok(),
        _ => None,
    };
    let with_apps = match (full, with_history_bus, with_history) {
        (None, None, None) => header.check_layout::<with_apps::PluginModule_Ref>().ok(),
        _ => None,
    };
    Ok(Module { base, with_apps, with_history, with_history_bus, full })
}

fn version(v: VersionNumber) -> String {
    format!("{}.{}.{}", v.major, v.minor, v.patch)
}

fn first_line(text: &str) -> String {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error").to_string()
}

/// Reduce abi_stable's layout report (thousands of lines) to one: the last difference it found,
/// with the expected and found values, and the chain of this crate's types that leads to it.
pub fn summarize_layout_report(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let Some(at) = lines.iter().rposition(|l| l.starts_with("Error:")) else {
        return first_line(report);
    };
    let kind = lines[at].trim_start_matches("Error:").trim();
    let value_after = |label: &str| {
        lines[at..]
            .iter()
            .position(|l| *l == label)
            .and_then(|i| lines[at + i + 1..].iter().find(|l| !l.is_empty()))
            .map_or("?", |v| *v)
    };
    let mut summary =
        format!("{kind}: expected {}, found {}", value_after("Expected:"), value_after("Found:"));
    // The chain of types from the root module down to the difference.
    if let Some(inside) = lines[..at].iter().rposition(|l| l.ends_with("error(s)inside:")) {
        let mut chain: Vec<&str> = Vec::new();
        let mut current = "";
        for line in &lines[inside..at] {
            if line.starts_with("Layout of expected type:") {
                break;
            }
            if let Some(ty) = line.strip_prefix("type:") {
                current = ty.trim();
            } else if line.starts_with("package:'sockhost-plugin-api'")
                && chain.last() != Some(&current)
            {
                chain.push(current);
            }
        }
        if !chain.is_empty() {
            summary.push_str(&format!(" (in {})", chain.join(" > ")));
        }
    }
    if summary.len() > 400 {
        summary.truncate(400);
        summary.push_str("...");
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn versions_are_compatible_within_one_generation() {
        let cases = [
            ("0.1.0", "0.1.0", true),
            ("0.1.0", "0.1.7", true),
            ("0.1.3", "0.1.0", true),
            ("0.1.0", "0.2.0", false),
            ("0.2.0", "0.1.0", false),
            ("0.1.0", "1.0.0", false),
            ("1.0.0", "1.4.2", true),
            ("1.0.0", "2.0.0", false),
            ("0.1.0", "garbage", false),
        ];
        for (expected, found, want) in cases {
            assert_eq!(compatible(expected, found), want, "{expected} vs {found}");
        }
    }
}
