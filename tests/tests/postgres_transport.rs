//! The out-of-tree transport of `examples/postgres-transport` (its own workspace, built into
//! its own `target/`): the transport conformance kit against its `.so`, and every multi-node
//! scenario with two or three unchanged `sockhost` processes loading it through a manifest,
//! over a real PostgreSQL started for each test (`initdb` + `pg_ctl` on a free port).

use std::path::PathBuf;

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{backends::PostgresServer, cdylib, cluster::Bus, private_dir, workspace_root};

/// The out-of-tree plugin, as `scripts/test` builds it.
fn plugin() -> PathBuf {
    let path =
        workspace_root().join("examples/postgres-transport/target/debug/libsockhost_postgres.so");
    assert!(
        path.is_file(),
        "{} is missing: cargo build --manifest-path examples/postgres-transport/Cargo.toml",
        path.display()
    );
    path
}

/// A manifest with the repository's local plugin, its redis plugin (the history store of the
/// recovery scenario) and the out-of-tree one, by absolute path.
fn manifest() -> (tempfile::TempDir, PathBuf) {
    let dir = private_dir();
    let path = dir.path().join("plugins.toml");
    std::fs::write(
        &path,
        format!(
            "[[plugin]]\npath = \"{}\"\n\n[[plugin]]\npath = \"{}\"\n\n[[plugin]]\npath = \"{}\"\n",
            cdylib("sockhost_local").display(),
            cdylib("sockhost_redis").display(),
            plugin().display()
        ),
    )
    .unwrap();
    (dir, path)
}

/// The PostgreSQL server, the manifest's directory (kept while the test runs), and the bus.
struct Backing {
    postgres: PostgresServer,
    _manifest: tempfile::TempDir,
}

impl sockhost_tests::cluster::Broker for Backing {
    fn kill(&mut self) {
        self.postgres.kill();
    }
    fn restart(&mut self) {
        self.postgres.restart();
    }
}

fn start() -> (Backing, Bus) {
    let postgres = PostgresServer::start();
    let (dir, manifest) = manifest();
    let bus = Bus::postgres(&postgres.url(), manifest);
    (Backing { postgres, _manifest: dir }, bus)
}

sockhost_tests::cluster_scenarios!(start);

fn conformance() -> Target {
    let postgres = PostgresServer::start();
    let config = format!("url = \"{}\"\nprefix = \"conformance\"\n", postgres.url());
    Target::new(plugin(), "postgres", &config).keep(postgres)
}

mod conformance {
    sockhost_plugin_api::transport_suite!(super::conformance);
}
