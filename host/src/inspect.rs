//! `sockhost plugins list` and `sockhost plugins check`: what an operator runs to see what
//! the server would load, and why something is refused.

use std::{io::Write, path::Path};

use sockhost_plugin_api::API_VERSION;

use crate::plugins::{Manifest, ManifestError, PluginLine, Registry, loader};

/// Print what `manifest` loads; `Ok(false)` if anything was refused.
pub fn list(manifest: &Manifest, out: &mut impl Write) -> std::io::Result<bool> {
    let mut registry = Registry::new();
    let refusals = registry.load_manifest(manifest);
    writeln!(out, "manifest {} (host plugin-api {API_VERSION})", manifest.path.display())?;
    for plugin in registry.plugins() {
        writeln!(out, "loaded  {}  {}", PluginLine(plugin), plugin.path.display())?;
    }
    for refusal in &refusals {
        writeln!(out, "refused {refusal}")?;
    }
    if registry.plugins().is_empty() && refusals.is_empty() {
        writeln!(out, "the manifest lists no plugins")?;
    }
    Ok(refusals.is_empty())
}

/// Print the verdict on one file; `Ok(false)` if it is refused.
pub fn check(file: &Path, out: &mut impl Write) -> std::io::Result<bool> {
    match loader::load(file, None) {
        Ok(plugin) => {
            writeln!(
                out,
                "{}: ok: {} built against plugin-api {} (host {API_VERSION}), sha256 {}",
                file.display(),
                PluginLine(&plugin),
                plugin.info.api_version,
                plugin.sha256
            )?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "{}: refused: {e}", file.display())?;
            if let Some(detail) = match &e {
                loader::LoadError::Abi(abi) => abi.detail(),
                _ => None,
            } {
                tracing::debug!(report = detail, "Full ABI layout report.");
            }
            Ok(false)
        }
    }
}

/// Locate and read the manifest.
pub fn manifest(explicit: Option<&Path>, exe_dir: &Path) -> Result<Manifest, ManifestError> {
    let path = Manifest::locate(explicit, exe_dir)?;
    Manifest::read(&path, exe_dir)
}
