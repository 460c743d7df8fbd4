//! `nats-server` of a test's own.

use std::process::Command;

use crate::{
    daemon::{Daemon, binary, tcp_answers},
    private_dir,
    tls::Pki,
};

/// A `nats-server` of our own.
#[derive(Debug)]
pub struct NatsServer {
    daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
    tls: bool,
}

impl NatsServer {
    /// Start one and wait until it is ready.
    ///
    /// # Panics
    /// If `nats-server` is missing (install the `nats-server` package, or set
    /// `NATS_SERVER_BIN`) or it is not ready in time.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start one with more arguments (`--user u --pass p`, `--auth token`, ...).
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn start_with(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
        let daemon = Daemon::new("nats-server", private_dir(), "nats.log", move |dir, ports| {
            let mut command = Command::new(binary("nats-server", "NATS_SERVER_BIN"));
            command.args(["-a", "127.0.0.1", "-p", &ports[0].to_string(), "-l"]);
            command.arg(dir.join("nats.log")).args(&args);
            command
        })
        // A server greets every client with INFO, in plain text even when it requires TLS.
        .answers(|ports| tcp_answers(ports[0], b"", b"INFO "))
        .hint("apt-get install nats-server, or set NATS_SERVER_BIN")
        .start();
        Self { port: daemon.port(), daemon, tls: false }
    }

    /// Start one that requires TLS, with `pki`'s certificate.
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn start_tls(pki: &Pki) -> Self {
        let (cert, key) = (pki.cert(), pki.key());
        let mut server = Self::start_with(&[
            "--tls",
            "--tlscert",
            cert.to_str().unwrap(),
            "--tlskey",
            key.to_str().unwrap(),
        ]);
        server.tls = true;
        server
    }

    /// `nats://127.0.0.1:<port>`, or `tls://` when it requires TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL) and wait for it to exit.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Start it again on the same port.
    ///
    /// # Panics
    /// If it is not ready again.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }
}
