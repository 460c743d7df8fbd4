//! `plugins.toml`: which plugin files the operator allows the server to load.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A manifest that could not be used; prints as one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No manifest was given and none was found in the usual places.
    #[error("no plugins.toml found (looked in {}); pass --plugins FILE", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<PathBuf>),
    /// The file could not be read.
    #[error("{}: cannot be read: {source}", .path.display())]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Someone other than root or the server's user could change the manifest, and with it
    /// which code the server runs.
    #[error("{}: refused: {reason}", .path.display())]
    Untrusted {
        /// The manifest's path.
        path: PathBuf,
        /// Why, as for a plugin file.
        reason: super::loader::LoadError,
    },
    /// The file is not a valid manifest.
    #[error("{}: {message}", .path.display())]
    Invalid {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// One plugin file the manifest lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEntry {
    /// Where the library is, resolved (relative paths against the executable's directory).
    pub path: PathBuf,
    /// The path as written in the manifest, for messages.
    pub written: String,
    /// The expected SHA-256 of the file, lowercase hex, if pinned.
    pub sha256: Option<String>,
}

/// The parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's own path.
    pub path: PathBuf,
    /// The plugins to load, in order.
    pub plugins: Vec<PluginEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    plugin: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    path: String,
    sha256: Option<String>,
}

impl Manifest {
    /// Find the manifest: `explicit` if given, else `plugins.toml` in the working directory,
    /// else `plugins.toml` next to the executable.
    pub fn locate(explicit: Option<&Path>, exe_dir: &Path) -> Result<PathBuf, ManifestError> {
        if let Some(path) = explicit {
            return Ok(path.to_path_buf());
        }
        let candidates = [PathBuf::from("plugins.toml"), exe_dir.join("plugins.toml")];
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| ManifestError::NotFound(candidates.to_vec()))
    }

    /// Check the manifest at `path` like a plugin file (it decides which code runs), then read
    /// and parse it; relative plugin paths resolve against `exe_dir`.
    pub fn read(path: &Path, exe_dir: &Path) -> Result<Self, ManifestError> {
        super::loader::check_trusted(path)
            .map_err(|reason| ManifestError::Untrusted { path: path.to_path_buf(), reason })?;
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path, exe_dir)
    }

    /// Parse manifest text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, exe_dir: &Path) -> Result<Self, ManifestError> {
        let invalid =
            |message: String| ManifestError::Invalid { path: path.to_path_buf(), message };
        let raw: RawManifest = toml::from_str(text)
            .map_err(|e| invalid(e.message().trim_end_matches('.').to_string()))?;
        let mut plugins = Vec::with_capacity(raw.plugin.len());
        for (i, entry) in raw.plugin.into_iter().enumerate() {
            if entry.path.trim().is_empty() {
                return Err(invalid(format!("plugin[{i}].path is empty")));
            }
            let sha256 = match entry.sha256 {
                None => None,
                Some(pin) => {
                    let pin = pin.trim().to_ascii_lowercase();
                    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(invalid(format!(
                            "plugin[{i}].sha256 must be 64 hexadecimal digits, found {pin:?}"
                        )));
                    }
                    Some(pin)
                }
            };
            let written_path = Path::new(&entry.path);
            let resolved = if written_path.is_absolute() {
                written_path.to_path_buf()
            } else {
                exe_dir.join(written_path)
            };
            plugins.push(PluginEntry { path: resolved, written: entry.path, sha256 });
        }
        Ok(Self { path: path.to_path_buf(), plugins })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(text, Path::new("plugins.toml"), Path::new("/opt/sockhost"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn resolves_relative_paths_against_the_executable() {
        let m = parse(
            "[[plugin]]\npath = \"libsockhost_local.so\"\n\n[[plugin]]\npath = \"/usr/lib/x.so\"\nsha256 = \"AB\"\n"
                .replace("\"AB\"", &format!("\"{}\"", "AB".repeat(32)))
                .as_str(),
        )
        .unwrap();
        assert_eq!(m.plugins[0].path, Path::new("/opt/sockhost/libsockhost_local.so"));
        assert_eq!(m.plugins[1].path, Path::new("/usr/lib/x.so"));
        assert_eq!(m.plugins[1].sha256.as_deref(), Some("ab".repeat(32).as_str()));
    }

    #[test]
    fn refuses_bad_manifests_naming_the_field() {
        let cases = [
            ("[[plugin]]\npath = \"a.so\"\nsha = \"x\"\n", "unknown field `sha`"),
            (
                "[[plugin]]\npath = \"a.so\"\nsha256 = \"xyz\"\n",
                "plugin[0].sha256 must be 64 hexadecimal digits",
            ),
            ("[[plugin]]\npath = \"\"\n", "plugin[0].path is empty"),
            ("[[plugin]]\nsha256 = \"00\"\n", "missing field `path`"),
            ("plugins = 3\n", "unknown field `plugins`"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("plugins.toml: "), "{err}");
            assert!(err.contains(want), "{err:?} does not contain {want:?}");
        }
    }

    #[test]
    fn an_empty_manifest_loads_nothing() {
        assert!(parse("").unwrap().plugins.is_empty());
    }
}
