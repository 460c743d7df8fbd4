//! The cache, queue, rate-limiter and history conformance suites against the built `libsockhost_redis.so`
//! (a real `redis-server` per case) and `libsockhost_redis_cluster.so` (a real three-master
//! Redis Cluster per case), and the history store publishing where the plugin's transport
//! publishes.

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{
    backends::{RedisCluster, RedisServer, redis_cli},
    cdylib,
};

/// Quick retries and polling, so the retry case does not wait a second.
const QUEUE: &str = "retry_base_delay_ms = 10\nretry_max_delay_ms = 50\npoll_interval_ms = 20\n";

fn on_server(driver_config: &str) -> Target {
    let server = RedisServer::start();
    let config = format!("url_override = \"{}\"\n{driver_config}", server.url());
    Target::new(cdylib("sockhost_redis"), "redis", &config).keep(server)
}

/// The redis plugin's drivers on the server at `url`, which the caller keeps (to stop it, or
/// to reach it besides).
fn at(url: &str) -> Target {
    Target::new(cdylib("sockhost_redis"), "redis", &format!("url_override = \"{url}\""))
}

fn on_cluster(driver_config: &str) -> Target {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.seeds().split(',').map(|s| format!("{s:?}")).collect();
    let config = format!("nodes = [{}]\n{driver_config}", nodes.join(", "));
    Target::new(cdylib("sockhost_redis_cluster"), "redis-cluster", &config).keep(cluster)
}

mod server {
    use super::*;

    fn plain() -> Target {
        on_server("")
    }

    fn queue() -> Target {
        on_server(QUEUE)
    }

    mod cache {
        sockhost_plugin_api::cache_suite!(super::plain);
    }
    mod queue {
        sockhost_plugin_api::queue_suite!(super::queue);
    }
    mod rate_limiter {
        sockhost_plugin_api::rate_limiter_suite!(super::plain);
    }
    mod history {
        sockhost_plugin_api::history_suite!(super::plain);
    }
}

mod cluster {
    use super::*;

    fn plain() -> Target {
        on_cluster("")
    }

    fn queue() -> Target {
        on_cluster(QUEUE)
    }

    mod cache {
        sockhost_plugin_api::cache_suite!(super::plain);
    }
    mod queue {
        sockhost_plugin_api::queue_suite!(super::queue);
    }
    mod rate_limiter {
        sockhost_plugin_api::rate_limiter_suite!(super::plain);
    }
    mod history {
        sockhost_plugin_api::history_suite!(super::plain);
    }
}

/// A history store on the server its plugin's transport publishes on publishes each event to
/// the transport's topic in the script that positions it: the host's message with the stream
/// id, the serial's digits and one byte each for their lengths after it, in serial order. The
/// transport's subscriber gets it as any message. Without that transport, it only appends.
#[tokio::test]
async fn the_history_store_publishes_where_its_transport_does() {
    use sockhost_plugin_api::{
        Outgoing, Retention,
        abi::{RStr, RVec},
    };
    let server = RedisServer::start();
    let url = server.url();
    let store = at(&url).history_bus().await.expect("the redis plugin has a way onto the bus");
    let keep = Retention { max_events: 100, max_age_ms: 60_000 };
    let events = |records: &[&str]| -> RVec<Outgoing> {
        let outgoing = |r: &&str| Outgoing {
            record: RVec::from(r.as_bytes().to_vec()),
            message: RVec::from(format!("message {r}").into_bytes()),
        };
        records.iter().map(outgoing).collect()
    };
    let s = RStr::from_str;
    let alone = store.append_publishing(s("app"), s("news"), s("t"), events(&["0"]), keep).await;
    let alone = alone.into_result().expect("appended");
    assert_eq!((alone.appended.serial, alone.published), (1, false));

    let config = format!("url = \"{url}\"\nprefix = \"bus:\"\n");
    let (transport, host) =
        Target::new(cdylib("sockhost_redis"), "redis", &config).transport().await;
    transport.subscribe(s("topic-1")).await.into_result().expect("subscribed");
    let done =
        store.append_publishing(s("app"), s("news"), s("topic-1"), events(&["1", "2"]), keep);
    let done = done.await.into_result().expect("appended");
    assert_eq!((done.appended.serial, done.published), (2, true));
    let id = done.appended.stream_id.as_str();
    assert_eq!(id, alone.appended.stream_id.as_str());
    for (record, serial) in [("1", "2"), ("2", "3")] {
        let got = host.next().await;
        assert_eq!(got.topic, "topic-1");
        let mut expected = format!("message {record}{id}{serial}").into_bytes();
        expected.extend([u8::try_from(id.len()).unwrap(), 1]);
        assert_eq!(got.payload, expected, "{}", String::from_utf8_lossy(&got.payload));
    }
    // A user the server no longer lets publish on the bus's channels: the script checks
    // before it appends, so it appends without publishing (the node then publishes, or
    // learns why it cannot) instead of failing with its appends made.
    let revoked =
        redis_cli(server.port, None, None, &["ACL", "SETUSER", "default", "resetchannels"]);
    assert_eq!(revoked.as_deref(), Some("OK"));
    let refused = store.append_publishing(s("app"), s("news"), s("topic-1"), events(&["3"]), keep);
    let refused = refused.await.into_result().expect("appended");
    assert_eq!((refused.appended.serial, refused.published), (4, false));
    let allowed = redis_cli(server.port, None, None, &["ACL", "SETUSER", "default", "allchannels"]);
    assert_eq!(allowed.as_deref(), Some("OK"));
    transport.shutdown().await.into_result().expect("shut down");
    let after = store.append_publishing(s("app"), s("news"), s("topic-1"), events(&["4"]), keep);
    let after = after.await.into_result().expect("appended");
    assert_eq!((after.appended.serial, after.published), (5, false), "published with no transport");
}

/// The single-server history store, one connection shared by every call: many appends at once
/// on several channels are each answered, with every channel's serials dense; after its server
/// is killed, appends fail as unavailable (or time out), and once the server is back (on the
/// same port, its data gone) an append succeeds again on a new stream, without the store being
/// made again.
#[tokio::test]
async fn the_history_store_answers_many_calls_at_once_and_connects_again() {
    use sockhost_plugin_api::{
        ErrorCode, Retention,
        abi::{RStr, RVec},
    };
    let mut server = RedisServer::start();
    let store = at(&server.url()).history().await;
    let keep = Retention { max_events: 1_000, max_age_ms: 60_000 };
    let s = RStr::from_str;
    let record = || RVec::from(vec![RVec::from(b"r".to_vec())]);
    let channels = ["c0", "c1", "c2", "c3", "c4"];
    let appends = (0..200).map(|i| {
        let channel = channels[i % channels.len()];
        let store = &store;
        async move {
            let appended = store.append(s("app"), s(channel), record(), keep).await;
            (channel, appended.into_result().expect("appended").serial)
        }
    });
    let answered = futures_util::future::join_all(appends).await;
    for channel in channels {
        let mut serials: Vec<u64> =
            answered.iter().filter(|(c, _)| *c == channel).map(|(_, s)| *s).collect();
        serials.sort_unstable();
        assert_eq!(serials, (1..=40).collect::<Vec<_>>(), "{channel}");
    }
    let before = store.append(s("app"), s("c0"), record(), keep).await;
    let before = before.into_result().expect("appended").stream_id.to_string();

    server.kill();
    let down = store.append(s("app"), s("c0"), record(), keep).await.into_result();
    let error = down.expect_err("appended with the server gone");
    assert!(error.code == ErrorCode::UNAVAILABLE || error.code == ErrorCode::TIMEOUT, "{error:?}");
    server.restart();
    // The first attempts may meet the lost connection while it is being made again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        match store.append(s("app"), s("c0"), record(), keep).await.into_result() {
            Ok(appended) => break appended,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.code == ErrorCode::UNAVAILABLE || e.code == ErrorCode::TIMEOUT, "{e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no append within 10 s of the server's restart: {e:?}"),
        }
    };
    assert_eq!(after.serial, 1, "the restarted server kept nothing");
    assert_ne!(after.stream_id.as_str(), before, "a new stream, which resumes are told");
}

/// An append whose `XADD` fails (the channel's log key holds another type) gives its serial
/// back: once the log is writable again, the next append takes the very next serial, so no
/// serial is left without its entry (a gap subscribers would see and no repair could fill).
#[tokio::test]
async fn a_failed_append_leaves_no_serial_behind() {
    use sockhost_plugin_api::{
        Retention,
        abi::{RStr, RVec},
    };
    let server = RedisServer::start();
    let store = at(&server.url()).history().await;
    let keep = Retention { max_events: 100, max_age_ms: 60_000 };
    let s = RStr::from_str;
    let records = |n: usize| RVec::from(vec![RVec::from(b"r".to_vec()); n]);
    let first = store.append(s("app"), s("news"), records(1), keep).await;
    assert_eq!(first.into_result().expect("appended").serial, 1);

    let log = "sockhost_history:{3:app:news}:log";
    assert_eq!(redis_cli(server.port, None, None, &["SET", log, "spoiled"]).as_deref(), Some("OK"));
    let failed = store.append(s("app"), s("news"), records(2), keep).await.into_result();
    assert!(failed.is_err(), "appended to a log that is not a stream: {failed:?}");
    assert_eq!(redis_cli(server.port, None, None, &["DEL", log]).as_deref(), Some("1"));

    let next = store.append(s("app"), s("news"), records(1), keep).await;
    assert_eq!(next.into_result().expect("appended").serial, 2, "a failed append kept serials");
}

/// The history store's connection to a plain server (over a socket the host drives: see
/// `plugins/redis-drivers/src/driven.rs`) signs in as the URL's user and selects the URL's
/// database; a wrong password is refused at construction with the server's reason.
#[tokio::test]
async fn the_history_store_signs_in_as_the_urls_user_in_its_database() {
    use sockhost_plugin_api::{
        Retention,
        abi::{RStr, RVec},
        conformance::TestHost,
    };
    let server = RedisServer::start();
    let acl = ["ACL", "SETUSER", "keeper", "on", ">kept-secret", "~*", "&*", "+@all"];
    assert_eq!(redis_cli(server.port, None, None, &acl).as_deref(), Some("OK"));
    let url = format!("redis://keeper:kept-secret@127.0.0.1:{}/3", server.port);
    let store = at(&url).history().await;
    let keep = Retention { max_events: 100, max_age_ms: 60_000 };
    let s = RStr::from_str;
    let record = RVec::from(vec![RVec::from(b"r".to_vec())]);
    let appended = store.append(s("app"), s("news"), record, keep).await;
    assert_eq!(appended.into_result().expect("appended").serial, 1);
    let meta = "sockhost_history:{3:app:news}:meta";
    let in_three = redis_cli(server.port, None, None, &["-n", "3", "HGET", meta, "s"]);
    assert_eq!(in_three.as_deref(), Some("1"));
    assert_eq!(redis_cli(server.port, None, None, &["EXISTS", meta]).as_deref(), Some("0"));

    let wrong = format!("redis://keeper:not-the-secret@127.0.0.1:{}/3", server.port);
    let ctor = at(&wrong).module().history().expect("the plugin has history stores");
    let config = format!("url_override = \"{wrong}\"");
    let made = ctor(s("redis"), s(&config), TestHost::default().boxed()).await.into_result();
    let Err(error) = made else { panic!("a wrong password was taken") };
    assert!(error.message().contains("authentication failed"), "{error}");
    assert!(!error.message().contains("not-the-secret"), "the password is shown: {error}");
}
