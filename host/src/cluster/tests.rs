use std::time::Duration;

use serde_json::json;

use super::*;

fn cluster() -> Arc<Cluster> {
    let settings = ClusterSettings {
        heartbeat_interval: Duration::from_millis(200),
        node_timeout: Duration::from_secs(2),
        cleanup_interval: Duration::from_millis(100),
        requests_timeout: Duration::from_millis(300),
        socket_counting: true,
        secret: None,
    };
    Cluster::new(Arc::new(Transport::nowhere()), settings, Counter::default())
}

fn info(name: &str) -> Option<Value> {
    Some(json!({ "name": name }))
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_expires_after_the_node_timeout_and_leaves_nothing_behind() {
    let cluster = cluster();
    assert!(cluster.saw(7) && !cluster.saw(7));
    cluster.apply_presence(7, 1, "app".into(), "presence-a".into(), "u".into(), info("u"));
    cluster.apply_connections(7, HashMap::from([("app".to_string(), 3)]));
    assert_eq!(cluster.remote_connections("app"), 3);
    tokio::time::advance(Duration::from_millis(1900)).await;
    assert!(cluster.expired().is_empty());
    // Heard again: the timeout starts over.
    cluster.saw(7);
    tokio::time::advance(Duration::from_millis(1900)).await;
    assert!(cluster.expired().is_empty());
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(cluster.expired(), [7]);
    let departed = cluster.forget(7);
    assert_eq!(departed.members, [("app".into(), "presence-a".into(), "u".into())]);
    assert!(cluster.peers().is_empty() && cluster.remote_connections("app") == 0);
    assert!(cluster.remote_members("app", "presence-a").is_empty());
}

#[tokio::test(start_paused = true)]
async fn changes_older_than_a_full_state_are_ignored() {
    let cluster = cluster();
    let (app, channel) = ("app".to_string(), "presence-a".to_string());
    cluster.apply_presence(7, 5, app.clone(), channel.clone(), "early".into(), info("e"));
    // A full state sent at seq 10 replaces everything before it.
    let state = json!({ "app": { "presence-a": { "synced": { "name": "s" } } } });
    let changes = cluster.apply_presence_sync(7, 10, state);
    let mut changed: Vec<(String, bool)> = changes
        .iter()
        .flat_map(|c| c.members.iter().map(|(u, i)| (u.clone(), i.is_some())))
        .collect();
    changed.sort();
    assert_eq!(changed, [("early".to_string(), false), ("synced".to_string(), true)]);
    // A change sent before the state (arriving late) is already in it: ignored.
    cluster.apply_presence(7, 9, app.clone(), channel.clone(), "late".into(), info("l"));
    assert!(!cluster.present_elsewhere("app", "presence-a", "late"));
    // One sent after it applies.
    cluster.apply_presence(7, 11, app.clone(), channel.clone(), "after".into(), info("a"));
    assert!(cluster.present_elsewhere("app", "presence-a", "after"));
    cluster.apply_presence(7, 12, app, channel, "synced".into(), None);
    let members = cluster.remote_members("app", "presence-a");
    assert_eq!(members.keys().collect::<Vec<_>>(), ["after"]);
}

#[tokio::test(start_paused = true)]
async fn a_member_on_two_nodes_is_no_change_when_one_syncs_it_away() {
    let cluster = cluster();
    let both = |user: &str| json!({ "app": { "presence-a": { user: { "n": 1 } } } });
    cluster.apply_presence_sync(7, 1, both("u"));
    cluster.apply_presence_sync(8, 1, both("u"));
    // Node 7 no longer has the user, node 8 still does: nobody left.
    let changes = cluster.apply_presence_sync(7, 2, json!({}));
    assert!(changes.is_empty(), "{changes:?}");
    assert!(cluster.present_elsewhere("app", "presence-a", "u"));
    let changes = cluster.apply_presence_sync(8, 2, json!({}));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].members, [("u".to_string(), None)]);
}

#[tokio::test(start_paused = true)]
async fn the_leader_is_the_lowest_live_id() {
    let cluster = cluster();
    assert!(cluster.is_leader());
    cluster.saw(cluster.node_id + 1);
    assert!(cluster.is_leader());
    cluster.saw(cluster.node_id - 1);
    assert!(!cluster.is_leader());
    cluster.forget(cluster.node_id - 1);
    assert!(cluster.is_leader());
}
