//! Real backing servers for tests, each a [`Daemon`](crate::daemon::Daemon) on free loopback
//! ports in its own temp dir, stopped when dropped. Never a fixed port, never a shared instance.

mod mariadb;
mod mosquitto;
mod moto;
mod nats;
mod postgres;
mod rabbitmq;
mod redis;
mod redis_cluster;
mod sentinel;
mod tansu;

use std::process::Command;

pub use mariadb::MariaDbServer;
pub use mosquitto::MosquittoServer;
pub use moto::SqsServer;
pub use nats::NatsServer;
pub use postgres::PostgresServer;
pub use rabbitmq::RabbitServer;
pub use redis::{RedisServer, redis_cli};
pub use redis_cluster::{ClusterOptions, RedisCluster};
pub use sentinel::SentinelGroup;
pub use tansu::TansuServer;

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
