//! `mosquitto` of a test's own: a listener on a free loopback port, anonymous, no persistence.

use std::process::Command;

use crate::{
    daemon::{Daemon, binary, tcp_answers},
    private_dir,
};

/// A Mosquitto broker of our own.
#[derive(Debug)]
pub struct MosquittoServer {
    daemon: Daemon,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// An MQTT 3.1.1 CONNECT (clean session, client id "t"), answered with a CONNACK.
const CONNECT: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01t";

impl MosquittoServer {
    /// Start one and wait until it answers CONNECT.
    ///
    /// # Panics
    /// If `mosquitto` is missing (install the `mosquitto` package, or set `MOSQUITTO_BIN`)
    /// or does not answer in time.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Start one with more lines of configuration (`message_size_limit 1000`, ...).
    ///
    /// # Panics
    /// As [`MosquittoServer::start`].
    pub fn start_with(extra: &str) -> Self {
        Self::start_listening(extra, |ports| tcp_answers(ports[0], CONNECT, b"\x20\x02"))
    }

    /// Start one whose listener speaks TLS only, with `pki`'s server certificate; `mqtts_url`
    /// is its address. Ready once its port accepts (it answers nothing in plain MQTT).
    ///
    /// # Panics
    /// As [`MosquittoServer::start`].
    pub fn start_tls(pki: &crate::tls::Pki) -> Self {
        // Run as root, Mosquitto drops to its own user before it reads the key, which is in
        // our private dir: it stays who started it.
        let tls = format!(
            "user root\ncertfile {}\nkeyfile {}\ntls_version tlsv1.2\n",
            pki.cert().display(),
            pki.key().display()
        );
        Self::start_listening(&tls, |ports| {
            std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_ok()
        })
    }

    fn start_listening(
        extra: &str,
        answers: impl Fn(&[u16]) -> bool + Send + Sync + 'static,
    ) -> Self {
        let extra = extra.to_string();
        let daemon = Daemon::new("mosquitto", private_dir(), "mosquitto.log", move |dir, ports| {
            let conf = format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n{extra}\n",
                ports[0]
            );
            std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
            let mut command = Command::new(binary("mosquitto", "MOSQUITTO_BIN"));
            command.arg("-c").arg(dir.join("mosquitto.conf"));
            command
        })
        .answers(answers)
        .hint("apt-get install mosquitto, or set MOSQUITTO_BIN")
        .start();
        Self { port: daemon.port(), daemon }
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mqtts://127.0.0.1:<port>`, for one started with [`MosquittoServer::start_tls`].
    pub fn mqtts_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
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
}
