//! `redis-server` of a test's own, plain or TLS only, and `redis-cli` against any of them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{
    daemon::{Daemon, binary, tcp_answers},
    private_dir,
    tls::Pki,
};

/// A `redis-server` of our own.
#[derive(Debug)]
pub struct RedisServer {
    daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA file, when it speaks TLS only.
    tls: Option<PathBuf>,
}

/// Whether a plain Redis on `port` answers `PING`.
pub(super) fn redis_answers(port: u16) -> bool {
    tcp_answers(port, b"PING\r\n", b"+PONG\r\n")
}

/// `redis-server` with the arguments `args` gives for its ports (and `--dir` its temp dir),
/// answering as `answers` says.
pub(super) fn redis_daemon(
    name: &'static str,
    args: impl Fn(&[u16]) -> Vec<String> + Send + Sync + 'static,
    answers: impl Fn(&[u16]) -> bool + Send + Sync + 'static,
) -> Daemon {
    Daemon::new(name, private_dir(), "redis.log", move |dir, ports| {
        let mut command = Command::new(binary("redis-server", "REDIS_SERVER_BIN"));
        command.args(args(ports)).arg("--dir").arg(dir);
        command
    })
    .answers(answers)
    .hint("apt-get install redis-server, or set REDIS_SERVER_BIN")
}

impl RedisServer {
    /// Start one and wait until it answers PING.
    ///
    /// # Panics
    /// If `redis-server` is missing (install the `redis-server` package, or set
    /// `REDIS_SERVER_BIN`) or does not answer in time.
    pub fn start() -> Self {
        Self::start_with(None, &[])
    }

    /// Start one that keeps its data across a kill and a restart (an append-only file synced
    /// on every write), as a history store in production would.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_durable() -> Self {
        let args = ["--appendonly", "yes", "--appendfsync", "always"];
        Self::start_with(None, &args.map(String::from))
    }

    /// Start one that speaks only TLS, with the certificate of `pki`.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_tls(pki: &Pki) -> Self {
        let mut args = vec!["--port".to_string(), "0".to_string()];
        args.extend(tls_args(pki));
        Self::start_with(Some(pki.ca()), &args)
    }

    /// Start one with more `redis-server` arguments (`--replicaof ...`).
    pub(super) fn start_with(tls: Option<PathBuf>, extra: &[String]) -> Self {
        let flag = if tls.is_some() { "--tls-port" } else { "--port" };
        let extra = extra.to_vec();
        let args = move |ports: &[u16]| {
            let port = ports[0].to_string();
            let args = [flag, &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
            args.into_iter().map(String::from).chain(extra.iter().cloned()).collect()
        };
        let ca = tls.clone();
        let daemon = redis_daemon("redis-server", args, move |ports| match &ca {
            None => redis_answers(ports[0]),
            Some(ca) => redis_cli(ports[0], Some(ca), None, &["PING"]).is_some_and(|a| a == "PONG"),
        })
        .start();
        Self { port: daemon.port(), daemon, tls }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` when it speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `PUBLISH` raw bytes to `channel`, as anyone with access to this Redis could (plain
    /// connections only).
    ///
    /// # Panics
    /// If Redis does not answer with a subscriber count.
    pub async fn publish_raw(&self, channel: &str, payload: &[u8]) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut command = format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
            channel.len(),
            payload.len()
        )
        .into_bytes();
        command.extend_from_slice(payload);
        command.extend_from_slice(b"\r\n");
        stream.write_all(&command).await.unwrap();
        let mut reply = [0u8; 64];
        let n = stream.read(&mut reply).await.unwrap();
        assert!(reply[..n].starts_with(b":"), "{}", String::from_utf8_lossy(&reply[..n]));
    }

    /// Kill it (SIGKILL) and wait for it to exit.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Start it again on the same port.
    ///
    /// # Panics
    /// If it does not answer again.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.daemon.dir()
    }
}

/// `redis-server` arguments that make it speak TLS with `pki`'s certificate (clients need no
/// certificate of their own).
pub(super) fn tls_args(pki: &Pki) -> Vec<String> {
    let path = |p: PathBuf| p.to_str().expect("a UTF-8 temp path").to_string();
    vec![
        "--tls-cert-file".into(),
        path(pki.cert()),
        "--tls-key-file".into(),
        path(pki.key()),
        "--tls-ca-cert-file".into(),
        path(pki.ca()),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

/// Run `redis-cli` against 127.0.0.1:`port` (over TLS trusting `ca`, with `password`); its
/// trimmed output, or `None` if it failed.
pub fn redis_cli(
    port: u16,
    ca: Option<&Path>,
    password: Option<&str>,
    args: &[&str],
) -> Option<String> {
    let mut command = Command::new(binary("redis-cli", "REDIS_CLI_BIN"));
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(ca) = ca {
        command.arg("--tls").arg("--cacert").arg(ca);
    }
    if let Some(password) = password {
        command.args(["--no-auth-warning", "-a", password]);
    }
    let output = command.args(args).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !text.starts_with("ERR") && !text.contains("Could not connect"))
        .then_some(text)
}
