//! The conformance suites, run against the built `libsockhost_local.so` through the loader's
//! ABI checks.

use sockhost_plugin_api::conformance::{Target, cdylib};

fn local() -> Target {
    Target::new(cdylib("sockhost_local"), "local", "")
}

fn memory() -> Target {
    Target::new(cdylib("sockhost_local"), "memory", "")
}

fn quick_memory_queue() -> Target {
    Target::new(
        cdylib("sockhost_local"),
        "memory",
        "retry_base_delay_ms = 10\nretry_max_delay_ms = 100",
    )
}

mod transport {
    sockhost_plugin_api::transport_suite!(super::local);
}

mod cache {
    sockhost_plugin_api::cache_suite!(super::memory);
}

mod queue {
    sockhost_plugin_api::queue_suite!(super::quick_memory_queue);
}

mod rate_limiter {
    sockhost_plugin_api::rate_limiter_suite!(super::memory);
}

mod history {
    sockhost_plugin_api::history_suite!(super::memory);
}

/// Past `max_streams`, the app that holds the most streams forgets its least recently used:
/// an app opening channel after channel does not push out another app's history.
#[test]
fn a_full_memory_store_forgets_the_biggest_apps_streams() {
    use sockhost_plugin_api::{
        Retention,
        abi::{RStr, RVec},
        conformance::{ok, run},
    };
    let target = Target::new(cdylib("sockhost_local"), "memory", "max_streams = 3");
    run(async {
        let h = target.history().await;
        let keep = Retention { max_events: 10, max_age_ms: 60_000 };
        let append = async |app: &str, channel: &str| {
            let records = RVec::from(vec![RVec::from(b"event".to_vec())]);
            let answer = h.append(RStr::from_str(app), RStr::from_str(channel), records, keep);
            ok("append", answer.await)
        };
        let theirs = append("app-2", "theirs").await;
        for channel in ["a", "b", "c", "d"] {
            append("app-1", channel).await;
        }
        let read = async |app: &str, channel: &str| {
            let answer = h.read(RStr::from_str(app), RStr::from_str(channel), 0, 10, keep);
            ok("read", answer.await)
        };
        let kept = read("app-2", "theirs").await;
        assert_eq!((kept.stream_id, kept.head), (theirs.stream_id, 1), "another app's stream went");
        assert_eq!(read("app-1", "d").await.head, 1, "the newest stream went");
        // Reads of new channels make streams too: they push out app-1's, never app-2's.
        for channel in ["e", "f", "g"] {
            assert_eq!(read("app-1", channel).await.head, 0);
        }
        assert_eq!(read("app-2", "theirs").await.head, 1, "another app's stream went");
    });
}
