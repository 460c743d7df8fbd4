//! A MariaDB server of a test's own.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::is_root;
use crate::{daemon::Daemon, private_dir};

/// A MariaDB server of our own: `mariadb-install-db` into a temp dir, `mariadbd` on a free
/// loopback port with its socket and pid file there, stopped when dropped. `root` without a
/// password from 127.0.0.1; the database `sockudo` exists.
#[derive(Debug)]
pub struct MariaDbServer {
    daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// A MariaDB program: on the `PATH`, else in `/usr/sbin` or `/usr/bin`.
fn mariadb_program(name: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is missing: install MariaDB (apt-get install mariadb-server)")
        })
}

/// The `mariadb` client as `root` against 127.0.0.1:`port`, unaligned, without headers.
fn client(port: u16) -> Command {
    let mut client = Command::new(mariadb_program("mariadb"));
    client.args(["--no-defaults", "-h", "127.0.0.1", "-u", "root", "--batch"]);
    client.arg("--skip-column-names").arg(format!("--port={port}")).stdin(Stdio::null());
    client
}

impl MariaDbServer {
    /// Make a data directory and start the server.
    ///
    /// # Panics
    /// If MariaDB is missing or does not start.
    pub fn start() -> Self {
        let dir = private_dir();
        let data = dir.path().join("data");
        // Its own temp dir: the bootstrap's temporary tables otherwise live in the shared
        // /tmp, where another bootstrap or a cleaner can take them from under it.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("a MariaDB temp dir");
        let mut install = Command::new(mariadb_program("mariadb-install-db"));
        install
            .args(["--no-defaults", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()));
        if is_root() {
            install.arg("--user=root");
        }
        let out = install.stdin(Stdio::null()).output().expect("mariadb-install-db runs");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let daemon = Daemon::new("MariaDB", dir, "error.log", |dir, ports| {
            let mut command = Command::new(mariadb_program("mariadbd"));
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg(format!("--tmpdir={}", dir.join("tmp").display()))
                .arg(format!("--port={}", ports[0]))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
                .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
                .arg(format!("--log-error={}", dir.join("error.log").display()))
                .args(["--skip-log-bin", "--innodb-flush-log-at-trx-commit=0"]);
            if is_root() {
                command.arg("--user=root");
            }
            command
        })
        .answers(|ports| {
            let answer = client(ports[0]).args(["-e", "SELECT 1"]).stderr(Stdio::null()).output();
            answer.is_ok_and(|o| o.status.success())
        })
        .hint("apt-get install mariadb-server")
        .start();
        let created = client(daemon.port()).args(["-e", "CREATE DATABASE sockudo"]).output();
        assert!(created.is_ok_and(|o| o.status.success()), "creating the database failed");
        Self { port: daemon.port(), daemon }
    }

    /// Run SQL in the database `sockudo`; its output, tab-separated, without headers.
    ///
    /// # Panics
    /// If the statement fails.
    pub fn sql(&self, statement: &str) -> String {
        let out = client(self.port).args(["-D", "sockudo", "-e", statement]).output();
        let out = out.expect("mariadb runs");
        assert!(out.status.success(), "mariadb failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stop it at once (SIGKILL, as a crash).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Start it again on the same port.
    ///
    /// # Panics
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }
}
