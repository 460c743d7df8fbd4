//! A Redis master, its replica and three sentinels watching them.

use std::{process::Command, time::Duration};

use super::redis::{RedisServer, redis_answers, redis_cli};
use crate::{
    daemon::{Daemon, binary, poll},
    private_dir,
};

/// A Redis master, one replica of it, and three sentinels watching it as `mymaster` (quorum
/// two; a master silent for 500 ms is down), each on free loopback ports in temp dirs.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The first master.
    pub master: RedisServer,
    /// Its replica, which a failover promotes.
    pub replica: RedisServer,
    sentinels: Vec<Daemon>,
}

/// A sentinel watching the master on `master`.
fn sentinel(master: u16) -> Daemon {
    Daemon::new("redis sentinel", private_dir(), "sentinel.log", move |dir, ports| {
        // Written at each start: the port is known only now (another one on a retry).
        let conf = dir.join("sentinel.conf");
        let text = format!(
            "port {}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor mymaster 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds mymaster 500\n\
             sentinel failover-timeout mymaster 2000\n\
             sentinel parallel-syncs mymaster 1\n",
            ports[0],
            dir.display(),
        );
        std::fs::write(&conf, text).expect("the sentinel's configuration is written");
        let mut command = Command::new(binary("redis-server", "REDIS_SERVER_BIN"));
        command.arg(conf).arg("--sentinel");
        command
    })
    .answers(|ports| redis_answers(ports[0]))
    .hint("apt-get install redis-server, or set REDIS_SERVER_BIN")
    .start()
}

/// Whether the sentinel on `port` knows the replica and both other sentinels.
fn knows_everyone(port: u16) -> Result<(), String> {
    let info = redis_cli(port, None, None, &["SENTINEL", "master", "mymaster"]).unwrap_or_default();
    let lines: Vec<&str> = info.lines().collect();
    let field = |name: &str| lines.iter().position(|l| *l == name).and_then(|p| lines.get(p + 1));
    crate::wait::holds(
        field("num-slaves") == Some(&"1") && field("num-other-sentinels") == Some(&"2"),
        info.replace('\n', " "),
    )
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
        let sentinels = (0..3).map(|_| sentinel(master.port)).collect();
        let group = Self { master, replica, sentinels };
        for sentinel in &group.sentinels {
            let found = poll(Duration::from_secs(30), || knows_everyone(sentinel.port()), || false);
            if let Err(seen) = found {
                panic!(
                    "the sentinels did not find each other and the replica ({seen}):\n{}",
                    sentinel.log()
                );
            }
        }
        group
    }

    /// `sentinels = [...]` for `[database.redis]`.
    pub fn sentinels_toml(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("{{ host = \"127.0.0.1\", port = {} }}", s.port()))
            .collect();
        format!("sentinels = [{}]", list.join(", "))
    }

    /// The master's port, as the first sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let answer = redis_cli(
            self.sentinels[0].port(),
            None,
            None,
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        )?;
        answer.lines().nth(1)?.trim().parse().ok()
    }
}
