//! A real Redis Cluster: three masters (and, if asked, a replica of each).

use std::{path::PathBuf, process::Command, time::Duration};

use super::redis::{redis_cli, redis_daemon, tls_args};
use crate::{
    daemon::{Daemon, binary, poll},
    tls::Pki,
};

/// How long the cluster may take to agree on a change (a failover, a moved slot).
const AGREEMENT: Duration = Duration::from_secs(30);

/// How to start a [`RedisCluster`].
#[derive(Debug, Default)]
pub struct ClusterOptions<'a> {
    /// Speak only TLS (between the nodes too), with this certificate.
    pub tls: Option<&'a Pki>,
    /// `requirepass` (and `masterauth`) of every node.
    pub password: Option<&'a str>,
    /// More `redis-server` arguments for every node.
    pub extra: Vec<String>,
    /// Give each master a replica (six nodes), so that a master can fail over.
    pub replicas: bool,
}

/// A real Redis Cluster of three masters (and, if asked, a replica of each), each node on a free
/// loopback port with its cluster bus on another, in a temp dir of its own; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Daemon>,
    ca: Option<PathBuf>,
    password: Option<String>,
}

/// The arguments of every node of a cluster with `options`.
fn node_args(options: &ClusterOptions<'_>) -> Vec<String> {
    // A replica on a loaded machine may have missed its master's pings for a while; it must
    // still take over when the master dies (validity factor 0: never too stale to fail over).
    let mut args: Vec<String> = "--cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 2000 --cluster-replica-validity-factor 0 --bind 127.0.0.1 \
        --appendonly no --save"
        .split_whitespace()
        .map(String::from)
        .chain([String::new()])
        .collect();
    if let Some(pki) = options.tls {
        args.extend(tls_args(pki));
        args.extend(["--tls-cluster".into(), "yes".into()]);
    }
    if let Some(password) = options.password {
        args.extend(["--requirepass".into(), password.into()]);
        args.extend(["--masterauth".into(), password.into()]);
    }
    args.extend(options.extra.iter().cloned());
    args
}

impl RedisCluster {
    /// Start three nodes, join them with `redis-cli --cluster create` and wait until every node
    /// says `cluster_state:ok` with all slots served.
    ///
    /// # Panics
    /// If `redis-server`/`redis-cli` are missing or the cluster does not form in time.
    pub fn start() -> Self {
        Self::start_with(ClusterOptions::default())
    }

    /// As [`RedisCluster::start`], with options.
    ///
    /// # Panics
    /// As [`RedisCluster::start`].
    pub fn start_with(options: ClusterOptions<'_>) -> Self {
        let ca = options.tls.map(Pki::ca);
        let password = options.password.map(String::from);
        let count = if options.replicas { 6 } else { 3 };
        let nodes = (0..count).map(|_| node(node_args(&options), ca.clone(), password.clone()));
        let cluster = Self { nodes: nodes.collect(), ca, password };
        let addresses: Vec<String> =
            cluster.ports().iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let mut create = Command::new(binary("redis-cli", "REDIS_CLI_BIN"));
        if let Some(ca) = &cluster.ca {
            create.arg("--tls").arg("--cacert").arg(ca);
        }
        if let Some(password) = &cluster.password {
            create.args(["--no-auth-warning", "-a", password]);
        }
        let output = create
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", if options.replicas { "1" } else { "0" }, "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (apt-get install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_ok();
        cluster
    }

    /// Wait until every running node says the cluster is whole.
    fn wait_until_ok(&self) {
        let whole = || {
            let running = self.nodes.iter().filter(|n| n.is_running());
            for node in running {
                let info = self.cli(node.port(), &["CLUSTER", "INFO"]).unwrap_or_default();
                if !(info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")) {
                    return Err(format!("node {}: {}", node.port(), info.replace('\n', " ")));
                }
            }
            Ok(())
        };
        if let Err(seen) = poll(AGREEMENT, whole, || false) {
            let logs: String = self.nodes.iter().map(Daemon::log).collect();
            panic!("the cluster did not become ok ({seen}):\n{logs}");
        }
    }

    /// Run `redis-cli` against the node on `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        redis_cli(port, self.ca.as_deref(), self.password.as_deref(), args)
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Daemon::port).collect()
    }

    /// A running node's port, to ask about the cluster.
    fn any(&self) -> u16 {
        self.nodes.iter().find(|n| n.is_running()).expect("a running node").port()
    }

    /// Kill (SIGKILL) the node on `port`; with replicas, its replica takes over its slots
    /// once the others agree it is gone. Waits until the cluster is whole again.
    ///
    /// # Panics
    /// If no node has that port, or the cluster does not recover.
    pub fn kill_node(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port() == port).expect("a node on that port").kill();
        // Until the others have marked it failed and moved its slots (CLUSTER NODES lists a
        // node's slots from its ninth field on), the cluster still looks whole.
        let address = format!("127.0.0.1:{port}@");
        let gone = || {
            let nodes = self.cli(self.any(), &["CLUSTER", "NODES"]).unwrap_or_default();
            let failed = nodes.lines().find(|l| l.contains(&address)).is_some_and(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(2).is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
                    && fields.len() <= 8
            });
            crate::wait::holds(failed, nodes)
        };
        if let Err(nodes) = poll(AGREEMENT, gone, || false) {
            panic!("the cluster did not fail the node over:\n{nodes}");
        }
        self.wait_until_ok();
    }

    /// The seed URLs (`rediss://` when it speaks TLS), comma-separated.
    pub fn seeds(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        self.ports()
            .iter()
            .map(|port| format!("{scheme}://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node id (`CLUSTER MYID`) of the node on `port`.
    ///
    /// # Panics
    /// If it does not answer.
    pub fn node_id(&self, port: u16) -> String {
        self.cli(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID")
    }

    /// The port of the master serving `key`'s slot.
    ///
    /// # Panics
    /// If the cluster does not answer.
    pub fn owner_of(&self, key: &str) -> u16 {
        let slot = self.cli(self.any(), &["CLUSTER", "KEYSLOT", key]).expect("KEYSLOT");
        let slot: u16 = slot.parse().expect("a slot number");
        let shards = self.cli(self.any(), &["CLUSTER", "SLOTS"]).expect("SLOTS");
        // redis-cli prints the nested reply one value per line: start, end, then the master's
        // ip, port and id, then any replicas.
        let lines: Vec<&str> = shards.lines().collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && (start..=end).contains(&slot)
                && let Ok(port) = lines[i + 3].parse::<u16>()
            {
                return port;
            }
            i += 1;
        }
        panic!("no master serves slot {slot}:\n{shards}");
    }

    /// Move the slot of `key` (which holds no keys) to the master on `to`, as a resharding
    /// does, and tell every node.
    ///
    /// # Panics
    /// If a step is refused.
    pub fn move_slot_of(&self, key: &str, to: u16) {
        let from = self.owner_of(key);
        let slot = self.cli(to, &["CLUSTER", "KEYSLOT", key]).expect("KEYSLOT");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let step = |port: u16, args: &[&str]| {
            let answer = self.cli(port, args);
            assert_eq!(answer.as_deref(), Some("OK"), "{args:?} on {port}");
        };
        step(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        step(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        step(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        step(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for port in self.ports() {
            if port != from && port != to {
                step(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
        self.wait_until_ok();
    }

    /// Kill every node (SIGKILL).
    pub fn kill(&mut self) {
        self.nodes.iter_mut().for_each(Daemon::kill);
    }

    /// Kill every node and start them again on the same ports with the same cluster state.
    ///
    /// # Panics
    /// If a node does not come back or the cluster does not become ok.
    pub fn restart(&mut self) {
        self.kill();
        self.nodes.iter_mut().for_each(Daemon::restart);
        self.wait_until_ok();
    }
}

/// One node: its clients' port, then its cluster bus's; answering PING as the cluster's
/// clients would (over TLS trusting `ca`, with `password`).
fn node(args: Vec<String>, ca: Option<PathBuf>, password: Option<String>) -> Daemon {
    let tls = ca.is_some();
    let args = move |ports: &[u16]| {
        let (port, bus) = (ports[0].to_string(), ports[1].to_string());
        // Over TLS only: the plain port closed, the TLS one on ours.
        let flags: &[&str] = if tls {
            &["--tls-port", &port, "--port", "0", "--cluster-port", &bus]
        } else {
            &["--port", &port, "--cluster-port", &bus]
        };
        flags.iter().map(|f| (*f).to_string()).chain(args.iter().cloned()).collect()
    };
    let answers = move |ports: &[u16]| {
        redis_cli(ports[0], ca.as_deref(), password.as_deref(), &["PING"]).as_deref()
            == Some("PONG")
    };
    redis_daemon("a redis cluster node", args, answers).ports(2).start()
}
