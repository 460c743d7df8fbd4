//! Plugins built against another `plugin-api` are refused at load with a one-line reason.
//!
//! Each case copies `plugin-api` with one alteration (its version, or a type's layout), builds
//! the fixture plugin in `tests/fixtures/abi-plugin` against the copy with cargo (into
//! `target/abi-fixtures`, shared by the cases and kept between runs), and asks the real
//! `sockhost plugins check` for its verdict.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sockhost_tests::{sockhost, target_dir, text, workspace_root};

/// Build the fixture against a copy of plugin-api at `version`, with `alter` applied to each
/// source file; the built library's path.
fn build_fixture(case: &str, version: &str, alter: impl Fn(&str, String) -> String) -> PathBuf {
    let root = workspace_root();
    let base = target_dir().parent().unwrap().join("abi-fixtures");
    let case_dir = base.join(case);
    let api = case_dir.join("api");
    let plugin = case_dir.join("plugin");
    let _ = std::fs::remove_dir_all(&case_dir);
    std::fs::create_dir_all(api.join("src")).unwrap();
    std::fs::create_dir_all(plugin.join("src")).unwrap();

    copy_tree(&root.join("plugin-api/src"), &api.join("src"), &alter);
    std::fs::write(
        api.join("Cargo.toml"),
        format!(
            r#"[package]
name = "sockhost-plugin-api"
version = "{version}"
edition = "2024"

[features]
sdk = []
conformance = []

[dependencies]
abi_stable = {{ version = "0.11.3", default-features = false }}
async-ffi = {{ version = "0.5.1", features = ["abi_stable"] }}
"#
        ),
    )
    .unwrap();
    let lib_name = format!("sockhost_fixture_{case}");
    std::fs::write(
        plugin.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{}"
version = "0.0.1"
edition = "2024"

[lib]
crate-type = ["cdylib"]
path = "src/lib.rs"

[dependencies]
sockhost-plugin-api = {{ path = "../api" }}
abi_stable = {{ version = "0.11.3", default-features = false }}

[workspace]
"#,
            lib_name.replace('_', "-")
        ),
    )
    .unwrap();
    let fixture = std::fs::read_to_string(root.join("tests/fixtures/abi-plugin/lib.rs")).unwrap();
    std::fs::write(plugin.join("src/lib.rs"), alter("fixture/lib.rs", fixture)).unwrap();
    // The workspace's lock file pins the same abi_stable and async-ffi as the host's build.
    std::fs::copy(root.join("Cargo.lock"), plugin.join("Cargo.lock")).unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet"])
        .current_dir(&plugin)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "building the {case} fixture failed:\n{}", text(&out));
    base.join("target/debug").join(format!("lib{lib_name}.so"))
}

fn copy_tree(from: &Path, to: &Path, alter: &impl Fn(&str, String) -> String) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target, alter);
        } else {
            let name = entry.file_name().to_string_lossy().into_owned();
            let source = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(target, alter(&name, source)).unwrap();
        }
    }
}

fn verdict(library: &Path) -> (Option<i32>, String) {
    let out = sockhost(&workspace_root(), &["plugins", "check", library.to_str().unwrap()]);
    (out.status.code(), text(&out))
}

#[test]
fn a_plugin_built_against_another_minor_version_is_refused() {
    let library = build_fixture("minor", "0.2.0", |_, s| s);
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "refused: wrong ABI version: built against plugin-api 0.2.0, this host speaks 0.1.0"
        ),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn a_plugin_built_against_another_major_version_is_refused() {
    let library = build_fixture("major", "1.0.0", |_, s| s);
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "refused: wrong ABI version: built against plugin-api 1.0.0, this host speaks 0.1.0"
        ),
        "{text}"
    );
}

#[test]
fn a_plugin_whose_types_have_another_layout_is_refused() {
    let library = build_fixture("layout", "0.1.0", |name, s| {
        if name == "info.rs" {
            let altered =
                s.replace("pub struct DriverKind(pub u8);", "pub struct DriverKind(pub u16);");
            assert_ne!(altered, s, "the alteration no longer applies to info.rs");
            altered
        } else {
            s
        }
    });
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "refused: ABI layout mismatch: mismatched type: expected u8, found u16 \
             (in PluginModule > PluginInfo > DriverDecl > DriverKind)"
        ),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "the layout report was not summarised: {text}");
}

#[test]
fn a_plugin_from_a_later_patch_of_the_same_generation_loads() {
    let library = build_fixture("patch", "0.1.9", |_, s| s);
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok: fixture 0.0.1 (transport fixture) built against plugin-api 0.1.9"),
        "{text}"
    );
}

/// The plugin-api before the app-manager kind: its root module ends at `rate_limiter` (the
/// kinds added since, app managers then history stores, taken out).
fn before_app_managers(name: &str, source: String) -> String {
    let altered = match name {
        "root.rs" => without_fields_from(&source, "    /// The app-manager constructor"),
        // The copy's loader is not what is tested (the host's is); it only has to build.
        "load.rs" => without_history_bus(&source)
            .replace("(Some(full), ..) => full.app_manager(),", "(Some(_), ..) => None,")
            .replace("(Some(full), ..) => full.history(),", "(Some(_), ..) => None,"),
        "fixture/lib.rs" => source
            .replace("        app_manager: None, // (the field added after 0.1.0's prefix)\n", "")
            .replace("        history: None,     // (the field added after app managers)\n", "")
            .replace("        history_bus: None, // (the field added after history stores)\n", "")
            .replace("        host_io: None,     // (the field added after history stores' publishing)\n", ""),
        _ => return source,
    };
    assert_ne!(altered, source, "the alteration no longer applies to {name}");
    altered
}

/// root.rs with the root module's fields from the line `from` to the struct's end taken out.
fn without_fields_from(root: &str, from: &str) -> String {
    let start = root.find(from).expect("root.rs has it");
    let end = start + root[start..].find("\n}").expect("the struct ends");
    format!("{}{}", &root[..start], &root[end + 1..])
}

/// The copy's loader without the call to the current layout's `host_io`.
fn without_host_io(load: &str) -> String {
    load.replace("self.full.and_then(|m| m.host_io())", "self.full.and(None)")
}

/// The copy's loader without the calls to the current layout's `history_bus` and `host_io`.
fn without_history_bus(load: &str) -> String {
    without_host_io(load).replace("(Some(full), _) => full.history_bus(),", "(Some(_), _) => None,")
}

#[test]
fn a_plugin_built_before_the_app_manager_kind_still_loads() {
    let library = build_fixture("before_app_managers", "0.1.0", before_app_managers);
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok: fixture 0.0.1 (transport fixture) built against plugin-api 0.1.0"),
        "{text}"
    );
    assert!(text.contains("an earlier layout of its generation: no app managers"), "{text}");
}

/// The plugin-api with app managers and before the history kind: its root module ends at
/// `app_manager`.
fn before_history(name: &str, source: String) -> String {
    let altered = match name {
        "root.rs" => without_fields_from(&source, "    /// The history constructor"),
        "load.rs" => without_history_bus(&source)
            .replace("(Some(full), ..) => full.history(),", "(Some(_), ..) => None,"),
        "fixture/lib.rs" => source
            .replace("        history: None,     // (the field added after app managers)\n", "")
            .replace("        history_bus: None, // (the field added after history stores)\n", "")
            .replace("        host_io: None,     // (the field added after history stores' publishing)\n", ""),
        _ => return source,
    };
    assert_ne!(altered, source, "the alteration no longer applies to {name}");
    altered
}

#[test]
fn a_plugin_built_before_the_history_kind_still_loads_with_its_app_managers() {
    let library = build_fixture("before_history", "0.1.0", before_history);
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok: fixture 0.0.1 (transport fixture) built against plugin-api 0.1.0"),
        "{text}"
    );
    assert!(text.contains("an earlier layout of its generation: no history stores"), "{text}");
    assert!(!text.contains("no app managers"), "{text}");
}

/// The plugin-api with history stores and before their way onto the bus: its root module
/// ends at `history`.
fn before_history_bus(name: &str, source: String) -> String {
    let altered = match name {
        "root.rs" => without_fields_from(
            &source,
            "    /// The constructor of history stores' way onto the bus",
        ),
        "load.rs" => without_history_bus(&source),
        "fixture/lib.rs" => source
            .replace("        history_bus: None, // (the field added after history stores)\n", "")
            .replace("        host_io: None,     // (the field added after history stores' publishing)\n", ""),
        _ => return source,
    };
    assert_ne!(altered, source, "the alteration no longer applies to {name}");
    altered
}

#[test]
fn a_plugin_built_before_history_stores_could_publish_still_loads_with_its_stores() {
    let library = build_fixture("before_history_bus", "0.1.0", before_history_bus);
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok: fixture 0.0.1 (transport fixture) built against plugin-api 0.1.0"),
        "{text}"
    );
    assert!(
        text.contains("an earlier layout of its generation: no history stores' publishing"),
        "{text}"
    );
}

/// The plugin-api with history stores' way onto the bus and before the host lent its runtime:
/// its root module ends at `history_bus`.
fn before_host_io(name: &str, source: String) -> String {
    let altered = match name {
        "root.rs" => without_fields_from(&source, "    /// Takes the host's runtime"),
        "load.rs" => without_host_io(&source),
        "fixture/lib.rs" => source.replace(
            "        host_io: None,     // (the field added after history stores' publishing)\n",
            "",
        ),
        _ => return source,
    };
    assert_ne!(altered, source, "the alteration no longer applies to {name}");
    altered
}

/// A plugin built before the host lent its runtime loads with every kind it has, and keeps
/// its sockets on its own runtime.
#[test]
fn a_plugin_built_before_the_host_lent_its_runtime_still_loads() {
    let library = build_fixture("before_host_io", "0.1.0", before_host_io);
    let (code, text) = verdict(&library);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok: fixture 0.0.1 (transport fixture) built against plugin-api 0.1.0"),
        "{text}"
    );
    assert!(text.contains("an earlier layout of its generation: no host-driven sockets"), "{text}");
    assert!(!text.contains("no history stores"), "{text}");
}
