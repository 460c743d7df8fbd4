//! The harness for black-box tests: where the built binary and plugins are, and helpers that
//! run them.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// `target/<profile>`, where cargo put the binary and the plugin libraries this test was built
/// with.
///
/// # Panics
/// If the test binary's path cannot be read.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The built `sockhost` binary.
///
/// # Panics
/// If it has not been built (`cargo build --workspace` first).
pub fn sockhost_bin() -> PathBuf {
    let bin = target_dir().join("sockhost");
    assert!(bin.is_file(), "{} is missing: run `cargo build --workspace` first", bin.display());
    bin
}

/// The built plugin library `lib<name>.so`.
///
/// # Panics
/// If it has not been built.
pub fn cdylib(name: &str) -> PathBuf {
    let path = sockhost_plugin_api::conformance::cdylib(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace` first", path.display());
    path
}

/// Run `sockhost` with `args` in `cwd` and collect its output.
///
/// # Panics
/// If the binary cannot be started.
pub fn sockhost(cwd: &Path, args: &[&str]) -> Output {
    Command::new(sockhost_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("SOCKHOST_PLUGINS")
        .env("RUST_LOG", "warn")
        .output()
        .expect("sockhost runs")
}

/// Stdout and stderr of `output`, together, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Copy `from` into `dir` as `name` with permission bits `mode`; the new path.
///
/// # Panics
/// If the copy fails.
pub fn copy_with_mode(from: &Path, dir: &Path, name: &str, mode: u32) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).expect("copy");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("chmod");
    to
}

/// A private temporary directory (mode 0700), as plugin directories must not be writable by
/// others.
///
/// # Panics
/// If it cannot be created.
pub fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    dir
}

/// The SHA-256 of a file, lowercase hex.
///
/// # Panics
/// If it cannot be read.
pub fn sha256_of(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

pub mod backends;
pub mod cluster;
pub mod counting;
pub mod daemon;
pub mod deltas;
pub mod pusher;
pub mod server;
pub mod shared_drivers;
pub mod tls;
pub mod wait;
pub mod webhook;
