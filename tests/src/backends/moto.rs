//! moto's AWS-compatible server (SQS and DynamoDB among others) of a test's own.

use std::process::Command;

use crate::{
    daemon::{Daemon, binary, tcp_answers},
    private_dir,
};

/// A local AWS-compatible server (moto's, from PyPI: `pip install 'moto[server]'`: SQS and
/// DynamoDB among others) on a free loopback port, stopped when dropped. Never AWS itself.
#[derive(Debug)]
pub struct SqsServer {
    daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// moto's own server program with one thread: requests are answered one at a time.
const SERIAL_MOTO: &str = "import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)";

impl SqsServer {
    /// Start one and wait until it answers HTTP.
    ///
    /// # Panics
    /// If moto is missing or the server does not start in time.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`SqsServer::start`], answering one request at a time. moto's threaded server checks a
    /// DynamoDB condition expression and writes the item in two steps another request can come
    /// between, where DynamoDB does both at once; served one at a time, a conditional write is
    /// atomic, as in DynamoDB. (Not for SQS's long polls, which would hold every other request.)
    ///
    /// # Panics
    /// If moto is missing or the server does not start in time.
    pub fn start_serial() -> Self {
        Self::start_with(true)
    }

    fn start_with(serial: bool) -> Self {
        let daemon = Daemon::new("moto", private_dir(), "moto.log", move |dir, ports| {
            let port = ports[0].to_string();
            let args = if serial {
                vec!["-c", SERIAL_MOTO, "127.0.0.1", &port]
            } else {
                vec!["-m", "moto.server", "-H", "127.0.0.1", "-p", &port]
            };
            let mut command = Command::new(binary("python3", "PYTHON"));
            command.args(args).current_dir(dir);
            command
        })
        .answers(|ports| {
            tcp_answers(ports[0], b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/1.")
        })
        .hint("pip install 'moto[server]'")
        .start();
        Self { port: daemon.port(), daemon }
    }

    /// Stop it at once; everything it held is gone (moto keeps nothing on disk).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Start it again, empty, on the same port.
    ///
    /// # Panics
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
