//! The loader's checks, through the real binary: `sockhost plugins list|check` and start-up.

use std::{os::unix::fs::PermissionsExt, path::Path};

use sockhost_tests::{
    cdylib, copy_with_mode, private_dir, sha256_of, sockhost, text, workspace_root,
};

fn write_manifest(dir: &Path, body: &str) -> String {
    let path = dir.join("plugins.toml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn the_default_manifest_loads_the_local_plugin() {
    let out = sockhost(&workspace_root(), &["plugins", "list"]);
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "loaded  local 0.1.0 (transport local, cache memory, queue memory, rate-limiter memory, history memory)"
        ),
        "{text}"
    );
}

#[test]
fn check_accepts_a_real_plugin_and_names_its_drivers() {
    let out = sockhost(
        &workspace_root(),
        &["plugins", "check", cdylib("sockhost_local").to_str().unwrap()],
    );
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(": ok: local 0.1.0 (transport local"), "{text}");
    assert!(text.contains("built against plugin-api 0.1.0"), "{text}");
}

#[test]
fn a_shared_library_that_is_not_a_plugin_is_refused() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .expect("libc is mapped into this process");
    let out = sockhost(&workspace_root(), &["plugins", "check", libc]);
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    assert!(
        text.contains("refused: not a sockhost plugin: it exports no abi_stable root module"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "the refusal is not one line: {text}");
}

#[test]
fn a_text_file_is_refused() {
    let dir = private_dir();
    let file = dir.path().join("notes.so");
    std::fs::write(&file, "this is not a library\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sockhost(&workspace_root(), &["plugins", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    assert!(text.contains("notes.so: refused: cannot be opened as a shared library"), "{text}");
}

#[test]
fn a_missing_file_is_refused() {
    let out = sockhost(&workspace_root(), &["plugins", "check", "/nonexistent/libnothing.so"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("refused: cannot be read: No such file or directory"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_world_writable_plugin_is_refused_before_it_is_opened() {
    let dir = private_dir();
    let plugin = copy_with_mode(&cdylib("sockhost_local"), dir.path(), "libcopy.so", 0o666);
    let out = sockhost(&workspace_root(), &["plugins", "check", plugin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    assert!(text.contains("refused: unsafe permissions:"), "{text}");
    assert!(text.contains("libcopy.so is writable by group or others (mode 666)"), "{text}");
}

#[test]
fn a_plugin_in_a_group_writable_directory_is_refused() {
    let dir = private_dir();
    let plugin = copy_with_mode(&cdylib("sockhost_local"), dir.path(), "libcopy.so", 0o755);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let out = sockhost(&workspace_root(), &["plugins", "check", plugin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    let dir_name = dir.path().canonicalize().unwrap();
    assert!(
        text.contains(&format!(
            "unsafe permissions: {} is writable by group or others (mode 775)",
            dir_name.display()
        )),
        "{text}"
    );
}

#[test]
fn a_wrong_sha256_pin_is_refused_and_the_right_one_loads() {
    let dir = private_dir();
    let plugin = copy_with_mode(&cdylib("sockhost_local"), dir.path(), "liblocal.so", 0o755);
    let wrong = "0".repeat(64);
    let manifest = write_manifest(
        dir.path(),
        &format!("[[plugin]]\npath = {plugin:?}\nsha256 = \"{wrong}\"\n"),
    );
    let out = sockhost(dir.path(), &["plugins", "list", "--plugins", &manifest]);
    assert_eq!(out.status.code(), Some(1));
    let text_out = text(&out);
    let actual = sha256_of(&plugin);
    assert!(
        text_out.contains(&format!(
            "checksum mismatch: plugins.toml pins sha256 {wrong}, the file has {actual}"
        )),
        "{text_out}"
    );
    assert!(
        text_out.contains(&format!("plugin {}", plugin.display())),
        "the refusal names no file: {text_out}"
    );

    let manifest = write_manifest(
        dir.path(),
        &format!("[[plugin]]\npath = {plugin:?}\nsha256 = \"{actual}\"\n"),
    );
    let out = sockhost(dir.path(), &["plugins", "list", "--plugins", &manifest]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("loaded  local 0.1.0"), "{}", text(&out));
}

#[test]
fn a_second_plugin_with_the_same_driver_is_refused() {
    let dir = private_dir();
    let first = copy_with_mode(&cdylib("sockhost_local"), dir.path(), "libfirst.so", 0o755);
    let second = copy_with_mode(&cdylib("sockhost_local"), dir.path(), "libsecond.so", 0o755);
    let manifest = write_manifest(
        dir.path(),
        &format!("[[plugin]]\npath = {first:?}\n\n[[plugin]]\npath = {second:?}\n"),
    );
    let out = sockhost(dir.path(), &["plugins", "list", "--plugins", &manifest]);
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    assert!(text.contains("loaded  local 0.1.0"), "{text}");
    assert!(
        text.contains(
            "libsecond.so): duplicate driver: transport `local` is already provided by plugin local"
        ),
        "{text}"
    );
}

#[test]
fn relative_paths_resolve_against_the_executable() {
    let dir = private_dir();
    let manifest = write_manifest(dir.path(), "[[plugin]]\npath = \"libsockhost_local.so\"\n");
    let out = sockhost(dir.path(), &["plugins", "list", "--plugins", &manifest]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("loaded  local"), "{}", text(&out));
}

#[test]
fn a_malformed_manifest_is_one_line_naming_the_file_and_field() {
    let dir = private_dir();
    let manifest = write_manifest(dir.path(), "[[plugin]]\npath = \"x.so\"\nchecksum = \"00\"\n");
    let out = sockhost(dir.path(), &["plugins", "list", "--plugins", &manifest]);
    assert!(!out.status.success());
    let text = text(&out);
    assert!(text.contains(&format!("{manifest}: unknown field `checksum`")), "{text}");
}

#[test]
fn the_server_refuses_to_start_with_a_refused_plugin() {
    let dir = private_dir();
    let plugin = copy_with_mode(&cdylib("sockhost_local"), dir.path(), "liblocal.so", 0o777);
    let manifest = write_manifest(dir.path(), &format!("[[plugin]]\npath = {plugin:?}\n"));
    let out = sockhost(dir.path(), &["--plugins", &manifest, "--port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    assert!(text.contains("liblocal.so): unsafe permissions"), "{text}");
}

#[test]
fn the_server_refuses_to_start_without_the_transport_it_needs() {
    let dir = private_dir();
    let manifest = write_manifest(dir.path(), "");
    let out = sockhost(dir.path(), &["--plugins", &manifest, "--port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    assert!(
        text.contains("no loaded plugin provides the transport driver `local` (no transport driver is available); no plugins are loaded"),
        "{text}"
    );
}

#[test]
fn a_manifest_others_could_change_is_refused() {
    let dir = private_dir();
    let manifest = write_manifest(dir.path(), "");
    std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o646)).unwrap();
    let out = sockhost(&workspace_root(), &["plugins", "list", "--plugins", &manifest]);
    let text = text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("plugins.toml: refused: unsafe permissions:"), "{text}");
}

#[test]
fn a_plugin_below_a_directory_anyone_can_write_is_refused_unless_it_is_sticky() {
    let dir = private_dir();
    let open = dir.path().join("open");
    let inner = open.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = copy_with_mode(&cdylib("sockhost_local"), &inner, "libcopy.so", 0o755);
    let check = || sockhost(&workspace_root(), &["plugins", "check", plugin.to_str().unwrap()]);

    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = check();
    let refusal = text(&out);
    assert_eq!(out.status.code(), Some(1), "{refusal}");
    let open_name = open.canonicalize().unwrap();
    assert!(
        refusal.contains(&format!(
            "unsafe permissions: {} is writable by anyone (mode 777) and not sticky",
            open_name.display()
        )),
        "{refusal}"
    );
    // Sticky, as /tmp: nobody can replace another user's entry, so it is safe.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = check();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_plugin_owned_by_another_user_is_refused() {
    let dir = private_dir();
    let plugin = copy_with_mode(&cdylib("sockhost_local"), dir.path(), "libcopy.so", 0o755);
    // Giving a file away needs root (as CI runs); as another user there is no such file to
    // make, and nothing to check.
    if std::os::unix::fs::chown(&plugin, Some(65534), Some(65534)).is_err() {
        eprintln!("not root: cannot give a file to another user; nothing to check");
        return;
    }
    let out = sockhost(&workspace_root(), &["plugins", "check", plugin.to_str().unwrap()]);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("untrusted owner:") && text.contains("belongs to uid 65534"), "{text}");
}
