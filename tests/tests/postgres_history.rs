//! The history conformance suite against the `postgres` history store of the built
//! `libsockhost_sql_apps.so` (a real PostgreSQL per case), and channel history on a node that
//! keeps it there.

use sockhost_plugin_api::conformance::Target;
use sockhost_tests::{
    backends::PostgresServer,
    cdylib,
    pusher::{Api, TestApp},
    server::Server,
};

fn postgres() -> Target {
    let server = PostgresServer::start();
    let config = format!(
        "[database]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"postgres\"\n",
        server.port
    );
    Target::new(cdylib("sockhost_sql_apps"), "postgres", &config).keep(server)
}

mod history {
    sockhost_plugin_api::history_suite!(super::postgres);
}

/// A node with `history.backend = "postgres"` (the shared `[database.postgres]` table) gives
/// positions from PostgreSQL and pages its history over HTTP.
#[tokio::test]
async fn a_node_keeps_its_history_in_postgres() {
    let db = PostgresServer::start();
    let server = Server::builder()
        .config(&format!(
            "[connection_recovery]\nenabled = true\n[history]\nenabled = true\nbackend = \"pgsql\"\n\
             [database.postgres]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"postgres\"\n",
            db.port
        ))
        .start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    for n in 1..=3 {
        assert_eq!(api.trigger(&["news"], "tick", &n.to_string()).await.0, 200);
    }
    let (status, page) = api.get("/channels/news/history", &[("direction", "oldest_first")]).await;
    assert_eq!(status, 200, "{page}");
    let serials: Vec<u64> =
        page["items"].as_array().unwrap().iter().map(|i| i["serial"].as_u64().unwrap()).collect();
    assert_eq!(serials, [1, 2, 3]);
    assert_eq!(page["stream_state"]["authoritative_source"], "postgres");
    let kept = db.sql("SELECT count(*) FROM sockhost_history_events");
    assert_eq!(kept.trim(), "3");
}
