//! Real backing servers for tests, each on a free loopback port in its own temp dir, stopped
//! when dropped. Never a fixed port, never a shared instance.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{private_dir, server::free_port, tls::Pki};

/// A `redis-server` of our own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    /// The CA file, when it speaks TLS only.
    tls: Option<PathBuf>,
    extra: Vec<String>,
}

fn binary(name: &str, env: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| name.to_string())
}

/// Send `PING` and read the answer; whether it was `+PONG`.
fn redis_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
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

    /// Start one that speaks only TLS, with the certificate of `pki`.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_tls(pki: &Pki) -> Self {
        let mut args = vec!["--port".to_string(), "0".to_string()];
        args.extend(tls_args(pki));
        Self::start_with(Some(pki.ca()), &args)
    }

    fn start_with(tls: Option<PathBuf>, extra: &[String]) -> Self {
        let dir = private_dir();
        let extra = extra.to_vec();
        let mut server = Self { child: None, port: 0, dir, tls, extra };
        // redis-server cannot pick its own port: take a free one, and another if a concurrent
        // test took it in between.
        for _ in 0..5 {
            server.port = free_port();
            if server.try_spawn() {
                return server;
            }
        }
        panic!("redis-server would not start:\n{}", server.log());
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server did not start on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// Start on `self.port`; whether it answered (false if it exited, e.g. the port was taken).
    fn try_spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let port = if self.tls.is_some() { "--tls-port" } else { "--port" };
        let child = Command::new(binary("redis-server", "REDIS_SERVER_BIN"))
            .args([
                port,
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is installed (apt-get install redis-server, or set REDIS_SERVER_BIN)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let answers = |port| match &self.tls {
            None => redis_answers(port),
            Some(ca) => redis_cli(port, Some(ca), None, &["PING"]).is_some_and(|a| a == "PONG"),
        };
        while !answers(self.port) {
            let exited = self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` arguments that make it speak TLS with `pki`'s certificate (clients need no
/// certificate of their own).
fn tls_args(pki: &Pki) -> Vec<String> {
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

/// A Redis master, one replica of it, and three sentinels watching it as `mymaster` (quorum
/// two; a master silent for 500 ms is down), each on free loopback ports in temp dirs.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The first master.
    pub master: RedisServer,
    /// Its replica, which a failover promotes.
    pub replica: RedisServer,
    sentinels: Vec<(Child, u16, tempfile::TempDir)>,
}

impl SentinelGroup {
    /// Start them, and wait until every sentinel knows the replica and the other sentinels.
    ///
    /// # Panics
    /// If a server does not start or the sentinels do not find each other in time.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::start_with(
            None,
            &["--replicaof".into(), "127.0.0.1".into(), master.port.to_string()],
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = private_dir();
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 500\n\
                     sentinel failover-timeout mymaster 2000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir.path().display(),
                    master.port
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("sentinel.log")).unwrap();
            let child = Command::new(binary("redis-server", "REDIS_SERVER_BIN"))
                .arg(&conf)
                .arg("--sentinel")
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            sentinels.push((child, port, dir));
        }
        let group = Self { master, replica, sentinels };
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, port, dir) in &group.sentinels {
            loop {
                let info = redis_cli(*port, None, None, &["SENTINEL", "master", "mymaster"]);
                let knows = info.as_deref().is_some_and(|i| {
                    let lines: Vec<&str> = i.lines().collect();
                    let field = |name: &str| {
                        lines.iter().position(|l| *l == name).and_then(|p| lines.get(p + 1))
                    };
                    field("num-slaves") == Some(&"1") && field("num-other-sentinels") == Some(&"2")
                });
                if knows {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the sentinels did not find each other and the replica:\n{}",
                    std::fs::read_to_string(dir.path().join("sentinel.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        group
    }

    /// `sentinels = [...]` for `[database.redis]`.
    pub fn sentinels_toml(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|(_, port, _)| format!("{{ host = \"127.0.0.1\", port = {port} }}"))
            .collect();
        format!("sentinels = [{}]", list.join(", "))
    }

    /// The master's port, as the first sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let answer = redis_cli(
            self.sentinels[0].1,
            None,
            None,
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        )?;
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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

/// One node of a [`RedisCluster`].
#[derive(Debug)]
struct ClusterNode {
    child: Option<Child>,
    port: u16,
    bus: u16,
    dir: PathBuf,
}

/// A real Redis Cluster of three masters (and, if asked, a replica of each), each node on a free
/// loopback port with its cluster bus on another, in one temp dir; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    args: Vec<String>,
    ca: Option<PathBuf>,
    password: Option<String>,
    _dir: tempfile::TempDir,
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
        let dir = private_dir();
        let mut args = vec![
            "--cluster-enabled".to_string(),
            "yes".into(),
            "--cluster-config-file".into(),
            "nodes.conf".into(),
            "--cluster-node-timeout".into(),
            "2000".into(),
            // A replica on a loaded machine may have missed its master's pings for a while; it
            // must still take over when the master dies (0: never too stale to fail over).
            "--cluster-replica-validity-factor".into(),
            "0".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        if let Some(pki) = options.tls {
            args.extend(tls_args(pki));
            args.extend(["--tls-cluster".into(), "yes".into()]);
        }
        if let Some(password) = options.password {
            args.extend(["--requirepass".into(), password.into()]);
            args.extend(["--masterauth".into(), password.into()]);
        }
        args.extend(options.extra);
        let mut cluster = Self {
            nodes: Vec::new(),
            args,
            ca: options.tls.map(Pki::ca),
            password: options.password.map(String::from),
            _dir: dir,
        };
        let count = if options.replicas { 6 } else { 3 };
        for i in 0..count {
            let node_dir = cluster._dir.path().join(format!("node{i}"));
            std::fs::create_dir(&node_dir).unwrap();
            let mut node = ClusterNode { child: None, port: 0, bus: 0, dir: node_dir };
            // Ports are picked, not given by the server: retry if a concurrent test took one.
            let started = (0..5).any(|_| {
                node.port = free_port();
                node.bus = free_port();
                cluster.spawn(&mut node)
            });
            assert!(started, "a cluster node would not start:\n{}", node.log());
            cluster.nodes.push(node);
        }
        let addresses: Vec<String> =
            cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
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

    /// Start `node` on its ports; whether it answered.
    fn spawn(&self, node: &mut ClusterNode) -> bool {
        let log = std::fs::File::create(node.dir.join("redis.log")).unwrap();
        let (port_flag, plain_port) = if self.ca.is_some() {
            ("--tls-port", vec!["--port".to_string(), "0".into()])
        } else {
            ("--port", Vec::new())
        };
        let child = Command::new(binary("redis-server", "REDIS_SERVER_BIN"))
            .args([port_flag, &node.port.to_string(), "--cluster-port", &node.bus.to_string()])
            .args(plain_port)
            .args(&self.args)
            .arg("--dir")
            .arg(&node.dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(node.port, &["PING"]).as_deref() != Some("PONG") {
            let exited = node.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                node.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Wait until every running node says the cluster is whole.
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let whole = self.nodes.iter().filter(|n| n.child.is_some()).all(|node| {
                self.cli(node.port, &["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
            });
            if whole {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok:\n{}",
                self.nodes.iter().map(ClusterNode::log).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run `redis-cli` against the node on `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        redis_cli(port, self.ca.as_deref(), self.password.as_deref(), args)
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// A running node's port, to ask about the cluster.
    fn any(&self) -> u16 {
        self.nodes.iter().find(|n| n.child.is_some()).expect("a running node").port
    }

    /// Kill (SIGKILL) the node on `port`; with replicas, its replica takes over its slots
    /// once the others agree it is gone. Waits until the cluster is whole again.
    ///
    /// # Panics
    /// If no node has that port, or the cluster does not recover.
    pub fn kill_node(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node on that port").kill();
        // Until the others have marked it failed and moved its slots (CLUSTER NODES lists a
        // node's slots from its ninth field on), the cluster still looks whole.
        let address = format!("127.0.0.1:{port}@");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = self.cli(self.any(), &["CLUSTER", "NODES"]).unwrap_or_default();
            let gone = nodes.lines().find(|l| l.contains(&address)).is_some_and(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(2).is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
                    && fields.len() <= 8
            });
            if gone {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster did not fail the node over:\n{nodes}");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_until_ok();
    }

    /// The seed URLs (`rediss://` when it speaks TLS), comma-separated.
    pub fn seeds(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
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
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Kill every node and start them again on the same ports with the same cluster state.
    ///
    /// # Panics
    /// If a node does not come back or the cluster does not become ok.
    pub fn restart(&mut self) {
        self.kill();
        let mut nodes = std::mem::take(&mut self.nodes);
        for node in &mut nodes {
            assert!(self.spawn(node), "a cluster node did not come back:\n{}", node.log());
        }
        self.nodes = nodes;
        self.wait_until_ok();
    }
}

impl ClusterNode {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server` of our own, on a port it picks itself (read from its log).
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    tls: bool,
    dir: tempfile::TempDir,
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
        let mut server = Self {
            child: None,
            port: 0,
            args: args.iter().map(|a| (*a).to_string()).collect(),
            tls: false,
            dir: private_dir(),
        };
        server.spawn();
        server
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

    fn spawn(&mut self) {
        let log = self.dir.path().join("nats.log");
        let _ = std::fs::remove_file(&log);
        // Port -1: the server picks a free one. On a restart, the same port again.
        let port = if self.port == 0 { "-1".to_string() } else { self.port.to_string() };
        let child = Command::new(binary("nats-server", "NATS_SERVER_BIN"))
            .args(["-a", "127.0.0.1", "-p", &port, "-l"])
            .arg(&log)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "nats-server is installed (apt-get install nats-server, or set NATS_SERVER_BIN)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                let listening = text
                    .lines()
                    .find(|l| l.contains("Listening for client connections on"))
                    .and_then(|l| l.rsplit(':').next())
                    .and_then(|p| p.trim().parse().ok());
                self.port = listening.expect("the client port in nats-server's log");
                return;
            }
            let exited = self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            assert!(!exited && Instant::now() < deadline, "nats-server did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `nats://127.0.0.1:<port>`, or `tls://` when it requires TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL) and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server of our own: `initdb` into a temp dir, `pg_ctl start` on a free loopback
/// port (its socket in the same dir), stopped when dropped. PostgreSQL refuses to run as root,
/// so as root it runs as the `postgres` user.
#[derive(Debug)]
pub struct PostgresServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
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

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Run a PostgreSQL program, as `postgres` when we are root.
fn pg_run(name: &str, args: &[&str]) -> std::process::Output {
    let program = pg_program(name);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    command.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{name}: {e}"))
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
        let output = pg_run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            output.status.success(),
            "initdb failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut server = Self { port: 0, dir, running: false };
        for _ in 0..5 {
            server.port = free_port();
            if server.try_start() {
                return server;
            }
        }
        panic!("PostgreSQL would not start:\n{}", server.log());
    }

    fn try_start(&mut self) -> bool {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let output = pg_run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        self.running = output.status.success();
        self.running
    }

    /// Run SQL with `psql` as the `postgres` user; its output, unaligned, tuples only.
    ///
    /// # Panics
    /// If psql fails.
    pub fn sql(&self, statement: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(pg_program("psql"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres"])
            .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", statement])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop it at once (`pg_ctl stop -m immediate`: no clean shutdown, as a crash).
    pub fn kill(&mut self) {
        if self.running {
            let data = self.dir.path().join("data");
            let _ =
                pg_run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    /// Start it again on the same port.
    ///
    /// # Panics
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.try_start(), "PostgreSQL did not come back:\n{}", self.log());
    }

    /// The server's log so far (statements too, when `log_statement` asks for them).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local AWS-compatible server (moto's, from PyPI: `pip install 'moto[server]'`: SQS and
/// DynamoDB among others) on a free loopback port, stopped when dropped. Never AWS itself.
#[derive(Debug)]
pub struct SqsServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    serial: bool,
    _dir: tempfile::TempDir,
}

/// moto's own server program with one thread: requests are answered one at a time.
const SERIAL_MOTO: &str = "import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)";

/// Whether an HTTP server answers on `port`.
fn http_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"HTTP/1."
}

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
        let mut server = Self { child: None, port: 0, serial, _dir: private_dir() };
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return server;
            }
        }
        panic!(
            "the AWS-compatible server (moto) would not start; install it with pip install 'moto[server]':\n{}",
            std::fs::read_to_string(server._dir.path().join("moto.log")).unwrap_or_default()
        );
    }

    fn launch(&mut self) -> bool {
        let log = std::fs::File::create(self._dir.path().join("moto.log")).unwrap();
        let port = self.port.to_string();
        let args = if self.serial {
            vec!["-c", SERIAL_MOTO, "127.0.0.1", &port]
        } else {
            vec!["-m", "moto.server", "-H", "127.0.0.1", "-p", &port]
        };
        let mut child = Command::new(binary("python3", "PYTHON"))
            .args(args)
            .current_dir(self._dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_answers(self.port) {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it at once; everything it held is gone (moto keeps nothing on disk).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again, empty, on the same port.
    ///
    /// # Panics
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.launch(), "moto did not come back");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SqsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A MariaDB server of our own: `mariadb-install-db` into a temp dir, `mariadbd` on a free
/// loopback port with its socket and pid file there, stopped when dropped. `root` without a
/// password from 127.0.0.1; the database `sockudo` exists.
#[derive(Debug)]
pub struct MariaDbServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
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
        let mut server = Self { child: None, port: 0, dir };
        for _ in 0..5 {
            server.port = free_port();
            if server.try_start() {
                let created = server.client().args(["-e", "CREATE DATABASE sockudo"]).output();
                assert!(created.is_ok_and(|o| o.status.success()), "creating the database failed");
                return server;
            }
        }
        panic!("MariaDB would not start:\n{}", server.log());
    }

    fn try_start(&mut self) -> bool {
        let dir = self.dir.path();
        let mut command = Command::new(mariadb_program("mariadbd"));
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args(["--skip-log-bin", "--innodb-flush-log-at-trx-commit=0"]);
        if is_root() {
            command.arg("--user=root");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.answers() {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self) -> Command {
        let mut client = Command::new(mariadb_program("mariadb"));
        client.args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "--batch",
            "--skip-column-names",
        ]);
        client.arg(format!("--port={}", self.port));
        client
    }

    fn answers(&self) -> bool {
        self.client()
            .args(["-e", "SELECT 1"])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Run SQL in the database `sockudo`; its output, tab-separated, without headers.
    ///
    /// # Panics
    /// If the statement fails.
    pub fn sql(&self, statement: &str) -> String {
        let out =
            self.client().args(["-D", "sockudo", "-e", statement]).output().expect("mariadb runs");
        assert!(out.status.success(), "mariadb failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stop it at once (SIGKILL, as a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port.
    ///
    /// # Panics
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.try_start(), "MariaDB did not come back:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.kill();
    }
}
