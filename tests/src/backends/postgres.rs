//! A PostgreSQL server of a test's own.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::is_root;
use crate::daemon::Daemon;

/// A PostgreSQL server of our own: `initdb` into a temp dir, `postgres` on a free loopback port
/// (its socket in the same dir), stopped when dropped. PostgreSQL refuses to run as root, so as
/// root it runs as the `postgres` user.
#[derive(Debug)]
pub struct PostgresServer {
    daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// A PostgreSQL program: on the `PATH`, else in Debian's versioned directory.
fn pg_program(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin").join(name)).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().filter(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{name} is missing: install PostgreSQL (apt-get install postgresql) or set PG_BIN")
    })
}

/// A PostgreSQL program, as `postgres` when we are root.
fn pg_command(name: &str) -> Command {
    let program = pg_program(name);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    }
}

/// Run a PostgreSQL program to its end, as `postgres` when we are root.
fn pg_run(name: &str, args: &[&str]) -> std::process::Output {
    let mut command = pg_command(name);
    command.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `psql` as the `postgres` user against 127.0.0.1:`port`, running `statement`.
fn psql(port: u16, statement: &str) -> std::io::Result<std::process::Output> {
    Command::new(pg_program("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", statement])
        .stdin(Stdio::null())
        .output()
}

impl PostgresServer {
    /// Make a cluster and start it.
    ///
    /// # Panics
    /// If PostgreSQL is missing or does not start.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        if is_root() {
            let owner = Command::new("id").args(["-u", "postgres"]).output().expect("id");
            let group = Command::new("id").args(["-g", "postgres"]).output().expect("id");
            let number = |o: std::process::Output| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .expect("the postgres user exists")
            };
            std::os::unix::fs::chown(dir.path(), Some(number(owner)), Some(number(group))).unwrap();
        }
        let data = dir.path().join("data");
        let data = data.to_str().expect("a UTF-8 temp path");
        let flags = ["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"];
        let output = pg_run("initdb", &[&["-D", data][..], &flags].concat());
        assert!(
            output.status.success(),
            "initdb failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let daemon = Daemon::new("PostgreSQL", dir, "postgres.log", |dir, ports| {
            let mut command = pg_command("postgres");
            command.arg("-D").arg(dir.join("data")).args(["-p", &ports[0].to_string()]);
            command.args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-k"]).arg(dir);
            command
        })
        .answers(|ports| psql(ports[0], "SELECT 1").is_ok_and(|o| o.status.success()))
        // As a crash: no clean shutdown. (As root the process we started is `runuser`.)
        .stop(|dir| {
            let data = dir.join("data");
            let data = data.to_str().expect("a UTF-8 temp path");
            let _ = pg_run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        })
        .hint("apt-get install postgresql, or set PG_BIN")
        .start();
        Self { port: daemon.port(), daemon }
    }

    /// Run SQL with `psql` as the `postgres` user; its output, unaligned, tuples only.
    ///
    /// # Panics
    /// If psql fails.
    pub fn sql(&self, statement: &str) -> String {
        let out = psql(self.port, statement).expect("psql runs");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop it at once (`pg_ctl stop -m immediate`: no clean shutdown, as a crash).
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

    /// The server's log so far (statements too, when `log_statement` asks for them).
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}
