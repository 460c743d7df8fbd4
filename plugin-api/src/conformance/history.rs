//! The history suite. Expand it with [`history_suite!`](crate::history_suite).

use std::sync::Arc;

use abi_stable::std_types::{RStr, RVec};

use super::{Target, eventually, holds, ok};
use crate::{ErrorCode, HistoryBox, Outgoing, Page, Retention};

fn s(text: &str) -> RStr<'_> {
    RStr::from_str(text)
}

/// Generous bounds, for the cases that are not about them.
const KEEP: Retention = Retention { max_events: 1000, max_age_ms: 600_000 };

fn records(records: &[&[u8]]) -> RVec<RVec<u8>> {
    records.iter().map(|r| RVec::from(r.to_vec())).collect()
}

async fn append(
    h: &HistoryBox,
    channel: &str,
    record: &[u8],
    retention: Retention,
) -> (String, u64) {
    let appended =
        ok("append", h.append(s("app-1"), s(channel), records(&[record]), retention).await);
    (appended.stream_id.into_string(), appended.serial)
}

async fn read(h: &HistoryBox, channel: &str, after: u64, limit: u32, retention: Retention) -> Page {
    ok("read", h.read(s("app-1"), s(channel), after, limit, retention).await)
}

fn serials(page: &Page) -> Vec<u64> {
    page.events.iter().map(|e| e.serial).collect()
}

/// Serials are dense from 1 on one stream; a read after a serial answers the records after it
/// in order, as appended, and the head.
pub async fn appends_get_dense_serials_and_read_back(target: &Target) {
    let h = target.history().await;
    let fresh = read(&h, "conformance-dense", 0, 10, KEEP).await;
    assert_eq!((fresh.head, fresh.events.len()), (0, 0), "a new stream is not empty");
    let mut stream = None;
    for i in 1..=5u64 {
        let (id, serial) =
            append(&h, "conformance-dense", format!("event {i}").as_bytes(), KEEP).await;
        assert_eq!(serial, i, "the serials are not dense");
        assert_eq!(*stream.get_or_insert_with(|| id.clone()), id, "the stream id changed");
    }
    assert_eq!(stream.as_deref(), Some(fresh.stream_id.as_str()), "read and append disagree");
    let page = read(&h, "conformance-dense", 2, 10, KEEP).await;
    assert_eq!(page.head, 5);
    assert_eq!(serials(&page), [3, 4, 5]);
    assert_eq!(page.events[0].record.as_slice(), b"event 3");
    let limited = read(&h, "conformance-dense", 0, 2, KEEP).await;
    assert_eq!(serials(&limited), [1, 2]);
    let head_only = read(&h, "conformance-dense", 0, 0, KEEP).await;
    assert_eq!((head_only.head, head_only.events.len()), (5, 0));
    // Channels and apps are separate streams.
    let (_, other) = append(&h, "conformance-other", b"x", KEEP).await;
    assert_eq!(other, 1);
    let other = h.append(s("app-2"), s("conformance-dense"), records(&[b""]), KEEP).await;
    assert_eq!(
        ok("append", other).serial,
        1,
        "another app's channel of the same name shares its stream"
    );
}

/// A publishing append (when the plugin has a way onto the bus) appends as `append` does:
/// on the same stream, with the serials after it, and reads back the records, not the bus
/// messages; whether it also published is the store's to say.
pub async fn a_publishing_append_is_an_append(target: &Target) {
    let Some(bus) = target.history_bus().await else { return };
    let h = target.history().await;
    let channel = "conformance-bus";
    let (stream, first) = append(&h, channel, b"plain", KEEP).await;
    let events: RVec<Outgoing> = [&b"one"[..], b"two"]
        .iter()
        .map(|record| Outgoing {
            record: RVec::from(record.to_vec()),
            message: RVec::from(b"a bus message".to_vec()),
        })
        .collect();
    let done =
        bus.append_publishing(s("app-1"), s(channel), s("conformance-topic"), events, KEEP).await;
    let done = ok("append_publishing", done);
    assert_eq!(done.appended.serial, first + 1, "not the serial after the plain append");
    assert_eq!(done.appended.stream_id.as_str(), stream, "another stream");
    let page = read(&h, channel, 0, 10, KEEP).await;
    assert_eq!(serials(&page), [first, first + 1, first + 2]);
    let kept: Vec<&[u8]> = page.events.iter().map(|e| e.record.as_slice()).collect();
    assert_eq!(kept, [&b"plain"[..], b"one", b"two"], "the records were not kept as given");
    let none = bus.append_publishing(s("app-1"), s(channel), s("t"), RVec::new(), KEEP).await;
    assert_eq!(none.into_result().map(|_| ()).unwrap_err().code, ErrorCode::REJECTED);
}

/// Several records appended in one call get consecutive serials in their order, the answer
/// naming the first; an append of none is refused.
pub async fn a_batch_gets_consecutive_serials_in_order(target: &Target) {
    let h = target.history().await;
    append(&h, "conformance-batch", b"before", KEEP).await;
    let batch = records(&[b"one", b"two", b"three"]);
    let appended = ok("append", h.append(s("app-1"), s("conformance-batch"), batch, KEEP).await);
    assert_eq!(appended.serial, 2, "the answer names the batch's first serial");
    let page = read(&h, "conformance-batch", 0, 10, KEEP).await;
    assert_eq!(serials(&page), [1, 2, 3, 4]);
    let kept: Vec<&[u8]> = page.events.iter().map(|e| e.record.as_slice()).collect();
    assert_eq!(kept, [&b"before"[..], b"one", b"two", b"three"]);
    let none = h.append(s("app-1"), s("conformance-batch"), RVec::new(), KEEP).await;
    assert!(none.into_result().is_err(), "an append of nothing was taken");
}

/// Appends from many callers at once never get the same serial, and leave no hole.
pub async fn concurrent_appends_get_distinct_serials(target: &Target) {
    let h = Arc::new(target.history().await);
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            append(&h, "conformance-race", &i.to_be_bytes(), KEEP).await.1
        }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("an append task"));
    }
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<u64>>());
    assert_eq!(serials(&read(&h, "conformance-race", 0, 100, KEEP).await).len(), 50);
}

/// Past `max_events` the oldest go; past `max_age_ms` an event is not answered.
pub async fn retention_bounds_what_is_kept(target: &Target) {
    let h = target.history().await;
    let few = Retention { max_events: 3, max_age_ms: 600_000 };
    for i in 0..10u32 {
        append(&h, "conformance-few", &i.to_be_bytes(), few).await;
    }
    let page = read(&h, "conformance-few", 0, 100, few).await;
    assert_eq!(page.head, 10);
    assert_eq!(serials(&page), [8, 9, 10], "more than max_events kept, or a hole");
    let brief = Retention { max_events: 100, max_age_ms: 100 };
    append(&h, "conformance-brief", b"soon gone", brief).await;
    eventually("an event older than max_age_ms is no longer answered", async || {
        let page = read(&h, "conformance-brief", 0, 10, brief).await;
        holds(page.events.is_empty(), "still answered")
    })
    .await;
}

/// A page holds what is kept: events older than `max_age_ms` do not take its places, and a
/// read from past the head (any number, the largest too) answers nothing, without an error.
pub async fn a_page_holds_only_kept_events(target: &Target) {
    let h = target.history().await;
    let brief = Retention { max_events: 100, max_age_ms: 1500 };
    for i in 1..=3u32 {
        append(&h, "conformance-aged", &i.to_be_bytes(), brief).await;
    }
    eventually("events older than max_age_ms are no longer answered", async || {
        let page = read(&h, "conformance-aged", 0, 10, brief).await;
        holds(page.events.is_empty(), "still answered")
    })
    .await;
    for i in 4..=6u32 {
        append(&h, "conformance-aged", &i.to_be_bytes(), brief).await;
    }
    let page = read(&h, "conformance-aged", 0, 2, brief).await;
    assert_eq!(serials(&page), [4, 5], "aged events took a page's places");
    assert_eq!(page.head, 6);
    for after in [6, 7, u64::MAX] {
        let past = read(&h, "conformance-aged", after, 10, brief).await;
        assert!(past.events.is_empty(), "a read after {after} answered events");
        assert_eq!(past.head, 6, "a read after {after}");
    }
}

/// Records of any bytes, and awkward channel names, round-trip.
pub async fn stores_any_bytes_under_awkward_names(target: &Target) {
    let h = target.history().await;
    let record: Vec<u8> = (0..64 * 1024).map(|i: u32| (i % 251) as u8).collect();
    for channel in ["private-a:b", "{tag}:x}", "presence-ünï", "#server-to-user-1"] {
        append(&h, channel, &record, KEEP).await;
        let page = read(&h, channel, 0, 10, KEEP).await;
        assert_eq!(page.events.len(), 1, "{channel:?}");
        assert!(page.events[0].record.as_slice() == record.as_slice(), "{channel:?} altered it");
    }
}

/// A reset starts the stream again: a new id, serials from 1.
pub async fn reset_starts_a_new_stream(target: &Target) {
    let h = target.history().await;
    let (before, _) = append(&h, "conformance-reset", b"one", KEEP).await;
    append(&h, "conformance-reset", b"two", KEEP).await;
    ok("reset", h.reset(s("app-1"), s("conformance-reset")).await);
    let (after, serial) = append(&h, "conformance-reset", b"three", KEEP).await;
    assert_ne!(before, after, "the stream id survived a reset");
    assert_eq!(serial, 1);
    assert_eq!(serials(&read(&h, "conformance-reset", 0, 10, KEEP).await), [1]);
}

/// Health answers Ok; shutdown is idempotent and later calls answer UNAVAILABLE.
pub async fn health_and_shutdown(target: &Target) {
    let h = target.history().await;
    ok("health", h.health().await);
    ok("shutdown", h.shutdown().await);
    ok("second shutdown", h.shutdown().await);
    let e = h.read(s("app-1"), s("c"), 0, 1, KEEP).await.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::UNAVAILABLE);
}

/// Expand the history suite for the [`Target`] that `$target()` returns.
#[macro_export]
macro_rules! history_suite {
    ($target:path) => {
        $crate::__conformance_cases!(
            history,
            $target,
            [
                appends_get_dense_serials_and_read_back,
                concurrent_appends_get_distinct_serials,
                a_batch_gets_consecutive_serials_in_order,
                retention_bounds_what_is_kept,
                a_page_holds_only_kept_events,
                a_publishing_append_is_an_append,
                stores_any_bytes_under_awkward_names,
                reset_starts_a_new_stream,
                health_and_shutdown,
            ]
        );
    };
}
