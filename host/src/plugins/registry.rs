//! Which loaded plugin provides which driver.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use sockhost_plugin_api::DriverKind;

use super::{
    loader::{self, LoadError, LoadedPlugin},
    manifest::Manifest,
};

/// Who provides a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    /// Built into the host (the `none` drivers).
    Builtin,
    /// The plugin at this index of [`Registry::plugins`].
    Plugin(usize),
}

/// A plugin file that was not loaded: one line naming the manifest, the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: plugin {written} ({}): {reason}", .manifest.display(), .path.display())]
pub struct Refusal {
    /// The manifest that listed it.
    pub manifest: PathBuf,
    /// The path as written there.
    pub written: String,
    /// The resolved path.
    pub path: PathBuf,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// Why a listed plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefusalReason {
    /// The file failed a check.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// It provides a driver another loaded plugin provides already.
    #[error("duplicate driver: {kind} `{name}` is already provided by {other}")]
    Duplicate {
        /// The driver's kind.
        kind: DriverKind,
        /// The driver's name.
        name: String,
        /// Who provides it already.
        other: String,
    },
}

/// The loaded plugins and the drivers they provide, by kind and name.
#[derive(Debug)]
pub struct Registry {
    plugins: Vec<LoadedPlugin>,
    drivers: BTreeMap<(DriverKind, String), Provider>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with only the built-in drivers (`none`, and the app manager `memory`).
    pub fn new() -> Self {
        let mut drivers: BTreeMap<_, _> =
            [DriverKind::CACHE, DriverKind::QUEUE, DriverKind::RATE_LIMITER]
                .into_iter()
                .map(|kind| ((kind, "none".to_string()), Provider::Builtin))
                .collect();
        // The configuration file's apps: served by the host itself.
        drivers.insert((DriverKind::APP_MANAGER, "memory".to_string()), Provider::Builtin);
        Self { plugins: Vec::new(), drivers }
    }

    /// Load every plugin the manifest lists, in order. Returns the refusals; the plugins that
    /// passed are registered either way.
    pub fn load_manifest(&mut self, manifest: &Manifest) -> Vec<Refusal> {
        let mut refusals = Vec::new();
        for entry in &manifest.plugins {
            let outcome = loader::load(&entry.path, entry.sha256.as_deref())
                .map_err(RefusalReason::from)
                .and_then(|plugin| self.add(plugin));
            if let Err(reason) = outcome {
                refusals.push(Refusal {
                    manifest: manifest.path.clone(),
                    written: entry.written.clone(),
                    path: entry.path.clone(),
                    reason,
                });
            }
        }
        refusals
    }

    /// Register a loaded plugin, refusing it whole if any of its drivers is already provided.
    pub fn add(&mut self, plugin: LoadedPlugin) -> Result<(), RefusalReason> {
        let decls = plugin.info.drivers.as_slice();
        for decl in decls {
            if let Some(provider) = self.drivers.get(&(decl.kind, decl.name.to_string())) {
                return Err(RefusalReason::Duplicate {
                    kind: decl.kind,
                    name: decl.name.to_string(),
                    other: self.describe(*provider),
                });
            }
        }
        let index = self.plugins.len();
        for decl in decls {
            self.drivers.insert((decl.kind, decl.name.to_string()), Provider::Plugin(index));
        }
        self.plugins.push(plugin);
        Ok(())
    }

    /// The loaded plugins, in load order.
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// Who provides `kind` `name`, if anyone.
    pub(crate) fn provider(&self, kind: DriverKind, name: &str) -> Option<Provider> {
        self.drivers.get(&(kind, name.to_string())).copied()
    }

    /// The plugin at `index`.
    pub(crate) fn plugin(&self, index: usize) -> &LoadedPlugin {
        &self.plugins[index]
    }

    /// The driver names available for `kind`.
    pub fn names(&self, kind: DriverKind) -> Vec<&str> {
        self.drivers.keys().filter(|(k, _)| *k == kind).map(|(_, n)| n.as_str()).collect()
    }

    /// One line listing the loaded plugins and their drivers, for error messages.
    pub fn summary(&self) -> String {
        if self.plugins.is_empty() {
            return "no plugins are loaded".to_string();
        }
        let plugins: Vec<String> = self.plugins.iter().map(|p| PluginLine(p).to_string()).collect();
        format!("loaded plugins: {}", plugins.join("; "))
    }

    fn describe(&self, provider: Provider) -> String {
        match provider {
            Provider::Builtin => "the host itself".to_string(),
            Provider::Plugin(i) => {
                let p = &self.plugins[i];
                format!("plugin {} ({})", p.info.name, p.path.display())
            }
        }
    }
}

/// `name version (transport local, cache memory)`.
#[derive(Debug)]
pub struct PluginLine<'a>(pub &'a LoadedPlugin);

impl fmt::Display for PluginLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = &self.0.info;
        let drivers: Vec<String> =
            info.drivers.as_slice().iter().map(|d| format!("{} {}", d.kind, d.name)).collect();
        write!(f, "{} {} ({})", info.name, info.version, drivers.join(", "))
    }
}
