//! Loading plugin libraries: the checks made before a file is opened, then the ABI checks.
//!
//! Opening a shared library runs its initialisers, so everything that can be decided from the
//! file itself (where it is, who may write it, its checksum) is decided first.

use std::{
    io::Read,
    os::unix::fs::{MetadataExt as _, PermissionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};
use sockhost_plugin_api::{PluginInfo, load};

/// Why a plugin file was refused. Prints as one line; the caller prefixes the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or its directory cannot be inspected.
    #[error("cannot be read: {0}")]
    Unreadable(String),
    /// Not a regular file.
    #[error("not a regular file")]
    NotAFile,
    /// Someone other than the owner could replace the code.
    #[error("unsafe permissions: {} is writable by group or others (mode {mode:o}); run chmod go-w on it", .path.display())]
    Permissions {
        /// The file or directory at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by someone who is neither root nor the server's user: they could replace it.
    #[error("untrusted owner: {} belongs to uid {owner}, neither root nor the server's user (uid {server}); chown it", .path.display())]
    Owner {
        /// The file at fault.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The server's effective uid.
        server: u32,
    },
    /// A directory on the way to the file lets anyone replace what is below it.
    #[error("unsafe permissions: {} is writable by anyone (mode {mode:o}) and not sticky, so anyone could replace what is below it; run chmod o-w on it", .path.display())]
    AncestorPermissions {
        /// The directory at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The checksum pinned in the manifest does not match.
    #[error("checksum mismatch: plugins.toml pins sha256 {expected}, the file has {found}")]
    Checksum {
        /// The pinned value.
        expected: String,
        /// The file's value.
        found: String,
    },
    /// The ABI checks refused it.
    #[error("{0}")]
    Abi(#[from] load::OpenError),
}

/// A plugin library that passed every check. Its code stays mapped until the process ends.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// The file it was loaded from (canonical).
    pub path: PathBuf,
    /// What it says about itself; static data inside the library.
    pub info: PluginInfo,
    /// Its constructors.
    pub module: load::Module,
    /// The file's SHA-256, lowercase hex.
    pub sha256: String,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("name", &self.info.name.as_str())
            .field("version", &self.info.version.as_str())
            .finish_non_exhaustive()
    }
}

/// Check that only the server's user or root can change the file at `path` (a plugin library
/// or the manifest that names them), as sshd's StrictModes does: a regular file, owned by root
/// or the server's user, not writable by group or others, in a directory not writable by
/// group or others, below directories up to `/` that are not writable by anyone unless sticky
/// (as `/tmp` is: there nobody can replace another user's entry). The canonical path.
pub fn check_trusted(path: &Path) -> Result<PathBuf, LoadError> {
    let unreadable = |e: std::io::Error| LoadError::Unreadable(e.to_string());
    let path = path.canonicalize().map_err(unreadable)?;
    let meta = std::fs::metadata(&path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile);
    }
    check_not_shared_writable(&path, meta.permissions().mode())?;
    if let Some(server) = server_uid()
        && meta.uid() != 0
        && meta.uid() != server
    {
        return Err(LoadError::Owner { path, owner: meta.uid(), server });
    }
    let mut ancestors = path.ancestors().skip(1);
    if let Some(dir) = ancestors.next() {
        let dir_meta = std::fs::metadata(dir).map_err(unreadable)?;
        check_not_shared_writable(dir, dir_meta.permissions().mode())?;
    }
    for dir in ancestors {
        let mode = std::fs::metadata(dir).map_err(unreadable)?.permissions().mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(LoadError::AncestorPermissions {
                path: dir.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(path)
}

/// The server's effective uid: the owner of its `/proc/self` (Linux); `None` if unknown.
fn server_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Check the file at `path` and load it. `pin` is the manifest's expected SHA-256, if any.
pub fn load(path: &Path, pin: Option<&str>) -> Result<LoadedPlugin, LoadError> {
    let path = check_trusted(path)?;
    let sha256 = file_sha256(&path)?;
    if let Some(expected) = pin
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(LoadError::Checksum { expected: expected.to_string(), found: sha256 });
    }
    let module = load::open(&path)?;
    let info = module.info();
    Ok(LoadedPlugin { path, info, module, sha256 })
}

fn check_not_shared_writable(path: &Path, mode: u32) -> Result<(), LoadError> {
    if mode & 0o022 != 0 {
        return Err(LoadError::Permissions { path: path.to_path_buf(), mode: mode & 0o7777 });
    }
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String, LoadError> {
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::Unreadable(e.to_string()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| LoadError::Unreadable(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
