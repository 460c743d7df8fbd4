use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use super::*;
use crate::protocol::{Broadcast, codes, filter::Tags};

fn conn(id: &str, frames: usize, bytes: usize) -> (Conn, Outbound, Arc<Closer>) {
    let (closer, rx) = Closer::open(frames, bytes, 50);
    (Conn::new(id.into(), closer.clone()), rx, closer)
}

#[test]
fn a_queue_is_bounded_in_bytes_and_says_when_it_is_behind() {
    let (conn, _rx, closer) = conn("1.1", 100, 100);
    let frame = Utf8Bytes::from("x".repeat(20));
    assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
    assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
    assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: true });
    assert!(conn.send(&frame) && conn.send(&frame));
    assert_eq!(closer.requested(), None);
    assert_eq!(conn.deliver(&frame), Delivery::Refused);
    assert_eq!(closer.requested(), Some(codes::OVER_CAPACITY));
}

#[test]
fn a_queue_is_bounded_in_frames() {
    let (conn, mut rx, closer) = conn("1.1", 4, 0);
    let frame = Utf8Bytes::from("x");
    assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
    assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: false });
    assert_eq!(conn.deliver(&frame), Delivery::Queued { behind: true });
    assert!(conn.send(&frame));
    assert!(!conn.send(&frame));
    assert_eq!(closer.requested(), Some(codes::OVER_CAPACITY));
    assert!(rx.try_recv().is_some());
}

#[test]
fn a_channel_is_congested_only_when_most_subscribers_are_behind() {
    let hub = Hub::default();
    let (fast, mut fast_rx, fast_closer) = conn("1.1", 4, 0);
    let (slow, _slow_rx, _) = conn("1.2", 4, 0);
    let (third, mut third_rx, third_closer) = conn("1.3", 4, 0);
    for c in [&fast, &slow, &third] {
        hub.subscribe("app", "ch", c, None, Wants::default(), |_| vec![Utf8Bytes::from("ack")])
            .unwrap();
    }
    let frame = Utf8Bytes::from("e");
    // The acknowledgement and two events: three of four places taken everywhere.
    hub.broadcast(&Broadcast::to("app", "ch"), &frame);
    hub.broadcast(&Broadcast::to("app", "ch"), &frame);
    assert!(hub.congested("app", "ch", false));
    // Two readers catch up; one behind of three is not congestion.
    for (rx, closer) in [(&mut fast_rx, &fast_closer), (&mut third_rx, &third_closer)] {
        while let Some(f) = rx.try_recv() {
            closer.dequeued(if closer.counts(f.len()) { f.len() } else { 0 });
        }
    }
    assert!(!hub.congested("app", "ch", true));
    assert!(!hub.congested("app", "ch", false));
}

#[test]
fn tagged_events_reach_the_subscribers_whose_filter_passes_them() {
    use crate::protocol::filter::{Filter, Tags};
    let hub = Hub::default();
    let filter = |v: serde_json::Value| Some(Arc::new(Filter::compile(&v).unwrap()));
    let (plain, mut plain_rx, _) = conn("1.1", 16, 0);
    let (btc, mut btc_rx, _) = conn("1.2", 16, 0);
    let (dear, mut dear_rx, _) = conn("1.3", 16, 0);
    let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| vec![Utf8Bytes::from("ack")];
    hub.subscribe("app", "ch", &plain, None, Wants::default(), ack).unwrap();
    let eq = serde_json::json!({ "key": "sym", "cmp": "eq", "val": "BTC" });
    hub.subscribe("app", "ch", &btc, None, Wants { filter: filter(eq), delta: None }, ack).unwrap();
    let gt = serde_json::json!({ "key": "px", "cmp": "gt", "val": 100 });
    hub.subscribe("app", "ch", &dear, None, Wants { filter: filter(gt), delta: None }, ack)
        .unwrap();
    for rx in [&mut plain_rx, &mut btc_rx, &mut dear_rx] {
        assert_eq!(rx.try_recv().unwrap().as_str(), "ack");
    }
    let tags = |pairs: &[(&str, &str)]| -> Tags {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let send = |name: &str, t: Tags| {
        hub.broadcast(&Broadcast::to("app", "ch").tagged(Some(&t)), &Utf8Bytes::from(name))
    };
    assert_eq!(send("btc", tags(&[("sym", "BTC"), ("px", "5")])), 2);
    assert_eq!(send("eth", tags(&[("sym", "ETH"), ("px", "500")])), 2);
    // Protocol frames (no tags) reach everyone.
    assert_eq!(hub.broadcast(&Broadcast::to("app", "ch"), &Utf8Bytes::from("internal")), 3);
    let got = |rx: &mut Outbound| -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv()).map(|f| f.as_str().to_string()).collect()
    };
    assert_eq!(got(&mut plain_rx), ["btc", "eth", "internal"]);
    assert_eq!(got(&mut btc_rx), ["btc", "internal"]);
    assert_eq!(got(&mut dear_rx), ["eth", "internal"]);
    // Leaving empties the groups; the last filter gone, the channel is plain again.
    hub.unsubscribe("app", "ch", "1.2", None);
    hub.unsubscribe("app", "ch", "1.3", None);
    assert_eq!(send("after", tags(&[("sym", "BTC")])), 1);
    assert_eq!(got(&mut plain_rx), ["after"]);
}

#[test]
fn subscribers_with_equal_filters_share_one_group_and_one_copy() {
    let hub = Hub::default();
    let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| vec![Utf8Bytes::from("ack")];
    let compile = |v: serde_json::Value| Filter::compile(&v).unwrap();
    let dear = || {
        serde_json::json!({ "op": "or", "nodes": [
        { "key": "px", "cmp": "gt", "val": 100 }, { "key": "sym", "cmp": "nex" }
    ] })
    };
    // The same filter written in another order is the same filter.
    let dear_too = serde_json::json!({ "op": "or", "nodes": [
        { "key": "sym", "cmp": "nex" }, { "key": "px", "cmp": "gt", "val": "100" }
    ] });
    let cheap = serde_json::json!({ "key": "px", "cmp": "lt", "val": 10 });
    let mut rxs = Vec::new();
    for (i, (channel, filter)) in
        [("ch", dear()), ("ch", dear_too), ("ch", dear()), ("ch", cheap.clone()), ("other", dear())]
            .into_iter()
            .enumerate()
    {
        let (c, rx, _) = conn(&format!("1.{i}"), 16, 0);
        let wants = Wants { filter: Some(hub.intern(compile(filter))), delta: None };
        hub.subscribe("app", channel, &c, None, wants, ack).unwrap();
        rxs.push(rx);
    }
    {
        let app = hub.existing("app").unwrap();
        let channels = app.channels.read().unwrap();
        let ch = channels["ch"].filtered.as_ref().unwrap();
        let sizes: Vec<usize> = {
            let mut s: Vec<usize> = ch.groups.values().map(|g| g.members.len()).collect();
            s.sort_unstable();
            s
        };
        assert_eq!(sizes, [1, 3], "one group per distinct filter");
        let other = channels["other"].filtered.as_ref().unwrap();
        let shared = ch.groups.values().find(|g| g.members.len() == 3).unwrap();
        let elsewhere = other.groups.values().next().unwrap();
        assert!(Arc::ptr_eq(&shared.filter, &elsewhere.filter), "held once on the node");
    }
    let tags: Tags = [("px".to_string(), "500".to_string())].into();
    assert_eq!(
        hub.broadcast(&Broadcast::to("app", "ch").tagged(Some(&tags)), &Utf8Bytes::from("e")),
        3
    );
    let got: Vec<usize> =
        rxs.iter_mut().map(|rx| std::iter::from_fn(|| rx.try_recv()).count()).collect();
    assert_eq!(got, [2, 2, 2, 1, 1], "acks, and the event for the three that passed it");
    // The group goes with its last member.
    for i in 0..3 {
        hub.unsubscribe("app", "ch", &format!("1.{i}"), None);
    }
    let app = hub.existing("app").unwrap();
    assert_eq!(app.channels.read().unwrap()["ch"].filtered.as_ref().unwrap().groups.len(), 1);
}

#[test]
fn presence_counts_users_not_sockets_and_holds_its_limit() {
    let hub = Hub::default();
    let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| vec![Utf8Bytes::from("ack")];
    let join = |user: &str| Join {
        user_id: user.into(),
        user_info: serde_json::json!({ "name": user }),
        max_members: 2,
        elsewhere: HashSet::new(),
    };
    let (a1, _a1_rx, _) = conn("1.1", 8, 0);
    let (a2, _a2_rx, _) = conn("1.2", 8, 0);
    let (b, _b_rx, _) = conn("1.3", 8, 0);
    let (c, _c_rx, _) = conn("1.4", 8, 0);
    let first =
        hub.subscribe("app", "presence-x", &a1, Some(join("a")), Wants::default(), ack).unwrap();
    assert_eq!(first, Subscribed { new_subscriber: true, occupied: true, first_for_user: true });
    let again =
        hub.subscribe("app", "presence-x", &a2, Some(join("a")), Wants::default(), ack).unwrap();
    assert!(again.new_subscriber && !again.occupied && !again.first_for_user);
    hub.subscribe("app", "presence-x", &b, Some(join("b")), Wants::default(), ack).unwrap();
    // Two users, two allowed: a third user is refused, a known one is not.
    let refused = hub.subscribe("app", "presence-x", &c, Some(join("c")), Wants::default(), ack);
    assert_eq!(refused, Err(ChannelFull { max: 2 }));
    assert_eq!(hub.user_ids("app", "presence-x").len(), 2);
    assert_eq!(hub.subscription_count("app", "presence-x"), 3);
    // A user leaves with their last socket, the channel with its last subscriber.
    let left = hub.unsubscribe("app", "presence-x", "1.1", Some("a"));
    assert_eq!(left, Unsubscribed { was_subscribed: true, vacated: false, removed_user: None });
    let left = hub.unsubscribe("app", "presence-x", "1.2", Some("a"));
    assert_eq!(left.removed_user.as_deref(), Some("a"));
    let last = hub.unsubscribe("app", "presence-x", "1.3", Some("b"));
    assert!(last.vacated && last.removed_user.as_deref() == Some("b"));
    assert_eq!(hub.subscription_count("app", "presence-x"), 0);
    assert!(hub.occupied_channels().is_empty());
}

#[test]
fn a_full_queue_closes_its_connection_with_4100_and_others_still_get_the_event() {
    let hub = Hub::default();
    let ack = |_: &mut dyn Iterator<Item = (&str, &Value)>| vec![Utf8Bytes::from("ack")];
    let (slow, _slow_rx, slow_closer) = conn("1.1", 2, 0);
    let (fast, mut fast_rx, fast_closer) = conn("1.2", 8, 0);
    hub.subscribe("app", "ch", &slow, None, Wants::default(), ack).unwrap();
    hub.subscribe("app", "ch", &fast, None, Wants::default(), ack).unwrap();
    let frame = Utf8Bytes::from("e");
    assert_eq!(hub.broadcast(&Broadcast::to("app", "ch"), &frame), 2);
    // The slow reader's queue (two frames: the ack and one event) is full now.
    assert_eq!(hub.broadcast(&Broadcast::to("app", "ch"), &frame), 1);
    assert_eq!(slow_closer.requested(), Some(codes::OVER_CAPACITY));
    assert_eq!(fast_closer.requested(), None);
    let got: Vec<Utf8Bytes> = std::iter::from_fn(|| fast_rx.try_recv()).collect();
    assert_eq!(got.len(), 3);
    // The socket named in `except` is skipped.
    assert_eq!(hub.broadcast(&Broadcast::to("app", "ch").except(Some("1.2")), &frame), 0);
}
