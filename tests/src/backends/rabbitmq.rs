//! `rabbitmq-server` of a test's own: its own Erlang node name, ports, data and log
//! directories, and cookie (`HOME`), no plugins. (Erlang's port mapper, epmd, is the machine's
//! one, as every Erlang node on a machine shares it.)

use std::{path::Path, process::Command};

use crate::{
    daemon::{Daemon, tcp_answers},
    private_dir,
};

/// A RabbitMQ node of our own.
#[derive(Debug)]
pub struct RabbitServer {
    daemon: Daemon,
    /// Its AMQP port on 127.0.0.1.
    pub port: u16,
}

/// The packaged server script that runs the broker as the calling user (the one on the PATH
/// switches to the `rabbitmq` user).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

fn kill_node(dir: &Path) {
    // The script waits for the Erlang VM it started: the VM's pid is in the pid file.
    if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
}

impl RabbitServer {
    /// Start one and wait until it speaks AMQP.
    ///
    /// # Panics
    /// If RabbitMQ is missing (install the `rabbitmq-server` package) or does not answer in
    /// time.
    pub fn start() -> Self {
        Self::start_listening(None)
    }

    /// Start one that speaks only AMQP over TLS (`amqps://`), with `pki`'s server certificate,
    /// and wait until its port accepts (RabbitMQ opens its listeners last, once booted).
    ///
    /// # Panics
    /// As [`RabbitServer::start`].
    pub fn start_tls(pki: &crate::tls::Pki) -> Self {
        Self::start_listening(Some(pki))
    }

    fn start_listening(tls: Option<&crate::tls::Pki>) -> Self {
        let listeners = tls.map(|pki| {
            format!(
                "listeners.tcp = none\nssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                pki.ca().display(),
                pki.cert().display(),
                pki.key().display()
            )
        });
        let over_tls = listeners.is_some();
        let daemon =
            Daemon::new("rabbitmq-server", private_dir(), "rabbitmq.log", move |dir, ports| {
                let (amqp, dist) = (ports[0], ports[1]);
                std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
                let conf = match &listeners {
                    None => format!("listeners.tcp.default = 127.0.0.1:{amqp}\n"),
                    Some(tls) => format!("{tls}listeners.ssl.default = 127.0.0.1:{amqp}\n"),
                };
                std::fs::write(dir.join("rabbitmq.conf"), format!("{conf}loopback_users = none\n"))
                    .unwrap();
                let mut command = Command::new(SERVER);
                command
                    .current_dir(dir)
                    .env("HOME", dir)
                    .env("RABBITMQ_NODENAME", format!("sockhost-test-{amqp}@localhost"))
                    .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                    .env("RABBITMQ_NODE_PORT", amqp.to_string())
                    .env("RABBITMQ_DIST_PORT", dist.to_string())
                    .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                    .env("RABBITMQ_LOG_BASE", dir.join("log"))
                    .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
                    .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
                    .env("RABBITMQ_PID_FILE", dir.join("pid"));
                command
            })
            .ports(2)
            .answers(move |ports| match over_tls {
                true => std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_ok(),
                // The AMQP header is answered with connection.start (a method frame, type 1).
                false => tcp_answers(ports[0], b"AMQP\x00\x00\x09\x01", b"\x01\x00\x00"),
            })
            .stop(kill_node)
            .hint("apt-get install rabbitmq-server")
            .start();
        Self { port: daemon.port(), daemon }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@127.0.0.1:<port>/%2f`, for one started with
    /// [`RabbitServer::start_tls`] (its certificate names the address).
    pub fn amqps_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kill it (SIGKILL to the Erlang VM) and wait for it to exit.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Start it again on the same ports.
    ///
    /// # Panics
    /// If it does not answer again.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }

    /// The queues of the broker with their bindings' count and messages, as `rabbitmqctl`
    /// lists them (`name messages`), for checks at the broker.
    pub fn queues(&self) -> String {
        let node = format!("sockhost-test-{}@localhost", self.port);
        let output = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .env("HOME", self.daemon.dir())
            .args(["-n", &node, "-q", "list_queues", "name", "messages"])
            .output()
            .expect("rabbitmqctl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
