//! `sockhost plugins list`, `check` and `pin`: what an operator runs to see what the server
//! would load, why something is refused, and to pin the files it checked.

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
                "{}: ok: {} built against plugin-api {} (host {API_VERSION}), sha256 {}{}",
                file.display(),
                PluginLine(&plugin),
                plugin.info.api_version,
                plugin.sha256,
                match plugin.module.missing() {
                    [] => String::new(),
                    missing => format!(
                        ", an earlier layout of its generation: no {}",
                        missing.join(", no ")
                    ),
                }
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

/// Check every plugin `manifest` lists as the server would, then write the manifest again with
/// each file's SHA-256 pinned, so another build of a file is refused; `Ok(false)`, and nothing
/// written, if any file is refused.
pub fn pin(manifest: &Manifest, out: &mut impl Write) -> std::io::Result<bool> {
    let mut pinned = Vec::with_capacity(manifest.plugins.len());
    for entry in &manifest.plugins {
        match loader::load(&entry.path, None) {
            Ok(plugin) => {
                writeln!(out, "pinned  {}  sha256 {}", entry.written, plugin.sha256)?;
                pinned.push((entry.written.as_str(), plugin.sha256));
            }
            Err(e) => {
                writeln!(out, "refused {}: {e}", entry.path.display())?;
                return Ok(false);
            }
        }
    }
    let mut text = String::from(
        "# The plugins this server may load, each pinned to the build `sockhost plugins pin`\n\
         # checked: another build of a file is refused. Relative paths resolve against the\n\
         # directory of the `sockhost` executable. Run `sockhost plugins pin` again after an\n\
         # upgrade.\n",
    );
    for (path, sha256) in pinned {
        let path = toml::Value::String(path.to_string());
        text.push_str(&format!("\n[[plugin]]\npath = {path}\nsha256 = \"{sha256}\"\n"));
    }
    replace_file(&manifest.path, &text)?;
    writeln!(out, "wrote {}", manifest.path.display())?;
    Ok(true)
}

/// Replace `path`'s content in one step (a file beside it, renamed over it), keeping its mode.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions();
    let mut temp = path.as_os_str().to_owned();
    temp.push(".pinning");
    let temp = std::path::PathBuf::from(temp);
    std::fs::write(&temp, text)?;
    std::fs::set_permissions(&temp, mode)?;
    std::fs::rename(&temp, path)
}

/// Locate and read the manifest.
pub fn manifest(explicit: Option<&Path>, exe_dir: &Path) -> Result<Manifest, ManifestError> {
    let path = Manifest::locate(explicit, exe_dir)?;
    Manifest::read(&path, exe_dir)
}
