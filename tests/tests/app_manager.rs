//! Apps from a database: the `postgres` and `mysql` app managers of the `sql-apps` plugin over
//! a real PostgreSQL (`initdb` + `pg_ctl`) and a real MariaDB (`mariadb-install-db` +
//! `mariadbd`), each on a free port, and the admin API that edits them, with real `sockhost`
//! processes (two of them over a real Redis for what crosses nodes). Every scenario runs
//! against both databases.

use serde_json::{Value, json};
use sockhost_tests::{
    backends::{MariaDbServer, PostgresServer, RedisServer, SqsServer},
    cluster::{Bus, node},
    pusher::{Api, Client, TestApp},
    server::{Server, free_port},
    wait::{eventually, holds},
};

const TOKEN: &str = "an-admin-token-of-at-least-32-characters";

/// A database of apps.
enum Db {
    Postgres(PostgresServer),
    Maria(MariaDbServer),
    /// moto's DynamoDB.
    Dynamo(SqsServer),
}

impl Db {
    fn postgres() -> Self {
        Self::Postgres(PostgresServer::start())
    }

    fn mariadb() -> Self {
        Self::Maria(MariaDbServer::start())
    }

    fn dynamodb() -> Self {
        Self::Dynamo(SqsServer::start_serial())
    }

    /// The config that points a node at this database for its apps (through the reference's
    /// driver names), with the admin API on `admin` and apps trusted for `ttl` seconds.
    fn config(&self, admin: u16, ttl: u64) -> String {
        let (driver, table) = match self {
            Self::Postgres(pg) => (
                "pgsql",
                format!(
                    "[database.postgres]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"postgres\"\ndatabase = \"postgres\"\n",
                    pg.port
                ),
            ),
            Self::Maria(db) => (
                "mysql",
                format!(
                    "[database.mysql]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"root\"\n",
                    db.port
                ),
            ),
            Self::Dynamo(moto) => (
                "dynamodb",
                format!(
                    "[database.dynamodb]\nendpoint_url = \"{}\"\nregion = \"eu-west-1\"\n\
                     aws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\n",
                    moto.url()
                ),
            ),
        };
        format!(
            "[app_manager]\ndriver = \"{driver}\"\nlookup_timeout_ms = 1000\n[app_manager.cache]\nttl = {ttl}\n\
             {table}[admin]\nenabled = true\nhost = \"127.0.0.1\"\nport = {admin}\ntoken = \"{TOKEN}\"\n"
        )
    }

    /// Run SQL; `None` for DynamoDB.
    fn sql(&self, statement: &str) -> Option<String> {
        match self {
            Self::Postgres(pg) => Some(pg.sql(statement)),
            Self::Maria(db) => Some(db.sql(&statement.replace("\"key\"", "`key`"))),
            Self::Dynamo(_) => None,
        }
    }

    /// Write an app into the table directly, as another tool would.
    async fn insert_app(&self, id: &str, key: &str, secret: &str) {
        let Self::Dynamo(moto) = self else {
            self.sql(&format!(
                "INSERT INTO applications (id, \"key\", secret, max_connections, enable_client_messages, \
                 enabled, max_client_events_per_second, created_at) \
                 VALUES ('{id}', '{key}', '{secret}', 0, true, true, 10, now())"
            ));
            return;
        };
        // DynamoDB's JSON protocol; moto reads the credential scope, not the signature.
        let item = json!({
            "TableName": "sockudo-applications",
            "Item": {
                "id": { "S": id }, "key": { "S": key }, "secret": { "S": secret },
                "enabled": { "BOOL": true }, "enable_client_messages": { "BOOL": true },
                "max_connections": { "N": "0" }, "webhooks": { "S": "[]" },
            },
        });
        let answer = reqwest::Client::new()
            .post(moto.url())
            .header("X-Amz-Target", "DynamoDB_20120810.PutItem")
            .header("Content-Type", "application/x-amz-json-1.0")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/eu-west-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(item.to_string())
            .send()
            .await
            .expect("moto answers");
        assert!(
            answer.status().is_success(),
            "PutItem: {}",
            answer.text().await.unwrap_or_default()
        );
    }

    fn kill(&mut self) {
        match self {
            Self::Postgres(pg) => pg.kill(),
            Self::Maria(db) => db.kill(),
            Self::Dynamo(moto) => moto.kill(),
        }
    }

    fn restart(&mut self) {
        match self {
            Self::Postgres(pg) => pg.restart(),
            Self::Maria(db) => db.restart(),
            Self::Dynamo(moto) => moto.restart(),
        }
    }
}

/// The repository's plugin manifest (its paths resolve against the built executable's directory).
fn manifest() -> String {
    sockhost_tests::workspace_root().join("plugins.toml").to_string_lossy().into_owned()
}

/// The admin API of one node.
struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the admin API answers");
        let status = response.status().as_u16();
        // A live log streams until closed: its status is the answer.
        let content_type = response.headers().get(reqwest::header::CONTENT_TYPE);
        if content_type.is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")) {
            return (status, Value::Null);
        }
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, body, TOKEN).await
    }
}

fn app_of(record: &Value) -> TestApp {
    TestApp::new(
        record["id"].as_str().unwrap(),
        record["key"].as_str().unwrap(),
        record["secret"].as_str().unwrap(),
    )
}

/// Whether a connection with `key` is refused, and with which code.
async fn refusal(server: &Server, key: &str) -> Option<u16> {
    let mut client = Client::connect_raw(&server.ws_url(key)).await;
    match client.expect_any().await {
        first if first["event"] == "pusher:error" => {
            let data = match first["data"].as_str() {
                Some(text) => serde_json::from_str(text).unwrap_or_default(),
                None => first["data"].clone(),
            };
            data["code"].as_u64().and_then(|c| u16::try_from(c).ok())
        }
        _ => None,
    }
}

async fn an_app_only_in_the_database_connects_publishes_and_signs(db: Db) {
    let admin_port = free_port();
    let server = Server::builder().config(&db.config(admin_port, 300)).start();
    // Written as the incumbent's dashboard would: straight into its table.
    db.insert_app("db-1", "db-key", "db-secret").await;
    let app = TestApp::new("db-1", "db-key", "db-secret");
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "private-ledger").await;
    let (status, _) =
        Api::new(&server.http_url(), &app).trigger(&["private-ledger"], "entry", "1").await;
    assert_eq!(status, 200);
    assert_eq!(client.expect("entry").await["data"], "1");

    assert_eq!(refusal(&server, "no-such-key").await, Some(4001));
    let other = TestApp::new("db-1", "db-key", "wrong-secret");
    let (status, _) = Api::new(&server.http_url(), &other).trigger(&["ledger"], "e", "1").await;
    assert_eq!(status, 401);
    assert!(server.labelled_metric("sockhost_app_lookups_total{outcome=\"unknown\"}").await >= 1.0);
}

async fn the_admin_api_needs_its_token_and_checks_what_it_is_given(db: Db) {
    let admin_port = free_port();
    let _server = Server::builder().config(&db.config(admin_port, 300)).start();
    let admin = Admin::new(admin_port);

    assert_eq!(admin.call("GET", "/apps", None, "").await.0, 401);
    assert_eq!(admin.call("GET", "/apps", None, &TOKEN.replace('a', "b")).await.0, 401);
    let (status, body) = admin.send("POST", "/apps", Some(json!({ "max_conections": 5 }))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_conections"), "{body}");
    let (status, body) =
        admin.send("POST", "/apps", Some(json!({ "max_event_batch_size": 0 }))).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = admin.send("POST", "/apps", Some(json!({ "previous_secret": "x" }))).await;
    assert_eq!(status, 400);
    // A number the table's INTEGER columns cannot hold is the request's mistake, not a 409.
    let huge = json!({ "max_connections": 3_000_000_000_u64 });
    let (status, body) = admin.send("POST", "/apps", Some(huge)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_connections"), "{body}");

    let (status, made) =
        admin.send("POST", "/apps", Some(json!({ "id": "a1", "key": "k1" }))).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!((made["id"].as_str(), made["key"].as_str()), (Some("a1"), Some("k1")));
    assert!(made["secret"].as_str().unwrap().len() >= 32);
    let (status, _) = admin.send("POST", "/apps", Some(json!({ "id": "a2", "key": "k1" }))).await;
    assert_eq!(status, 409, "a taken key");
    admin.send("POST", "/apps", Some(json!({ "id": "a2" }))).await;

    let (_, page) = admin.send("GET", "/apps?limit=1", None).await;
    assert_eq!(page["apps"][0]["id"], "a1");
    assert!(page["apps"][0].get("secret").is_none(), "lists carry no secrets: {page}");
    let (_, rest) = admin
        .send("GET", &format!("/apps?after={}", page["next_after"].as_str().unwrap()), None)
        .await;
    assert_eq!(rest["apps"][0]["id"], "a2");
    let (status, _) = admin.send("PATCH", "/apps/a1", Some(json!({ "id": "other" }))).await;
    assert_eq!(status, 400);
    let (_, changed) = admin.send("PATCH", "/apps/a1", Some(json!({ "max_connections": 7 }))).await;
    assert_eq!(changed["max_connections"], 7);
    if let Some(stored) = db.sql("SELECT max_connections FROM applications WHERE id = 'a1'") {
        assert_eq!(stored, "7", "the database holds the change");
    }
    assert_eq!(admin.send("DELETE", "/apps/a2", None).await.0, 204);
    assert_eq!(admin.send("GET", "/apps/a2", None).await.0, 404);
}

async fn every_documented_route_answers_as_documented(db: Db) {
    let admin_port = free_port();
    let _server = Server::builder().config(&db.config(admin_port, 300)).start();
    let admin = Admin::new(admin_port);
    admin.send("POST", "/apps", Some(json!({ "id": "doc", "key": "doc-key" }))).await;

    let (status, spec) = admin.send("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    let checked: Value = serde_json::from_str(
        &std::fs::read_to_string(sockhost_tests::workspace_root().join("docs/admin-api.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(spec, checked, "the served description is the checked-in one");
    let mut operations = 0;
    // Deletion last, so every other route finds the app.
    let mut routes: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method != "parameters" {
                routes.push((
                    path.replace("{id}", "doc"),
                    method.to_uppercase(),
                    operation.clone(),
                ));
            }
        }
    }
    routes.sort_by_key(|(_, method, _)| method == "DELETE");
    for (path, method, operation) in routes {
        let body = matches!(method.as_str(), "POST" | "PATCH").then(|| json!({}));
        let (status, answer) = admin.send(&method, &path, body).await;
        let documented = &operation["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, not documented: {answer}"
        );
        assert_eq!(admin.call(&method, &path, None, "wrong").await.0, 401, "{method} {path}");
        operations += 1;
    }
    assert_eq!(operations, 12);
}

async fn admin_changes_reach_every_node_at_once(db: Db) {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "apps");
    let (port_a, port_b) = (free_port(), free_port());
    // A day-long cache: only the bus can make node B see the changes. Started together, as a
    // deployment does: both prepare the empty database's table at the same moment.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| node(&bus, &db.config(port_a, 86_400)));
        let b = s.spawn(|| node(&bus, &db.config(port_b, 86_400)));
        (a.join().expect("node A starts"), b.join().expect("node B starts"))
    });
    for server in [&a, &b] {
        server.wait_for_metric("sockhost_cluster_nodes", |n| n as usize == 2).await;
    }
    let admin = Admin::new(port_a);
    let (_, made) = admin.send("POST", "/apps", Some(json!({ "id": "t1" }))).await;
    let app = app_of(&made);

    // Node B learns the app and keeps it.
    let mut on_b = Client::connect(&b.ws_url(&app.key)).await;
    on_b.subscribe(&app, "private-room").await;

    // Rotation: node B accepts the new secret at once, and the old one during the overlap.
    let (status, rotated) =
        admin.send("POST", "/apps/t1/rotate-secret", Some(json!({ "overlap_seconds": 2 }))).await;
    assert_eq!(status, 200, "{rotated}");
    let new = app_of(&rotated);
    assert_ne!(new.secret, app.secret);
    let new_api = Api::new(&b.http_url(), &new);
    eventually("node B accepts the new secret", async || {
        let (status, _) = new_api.trigger(&["private-room"], "e", "new").await;
        holds(status == 200, status)
    })
    .await;
    on_b.expect("e").await;
    let mut late = Client::connect(&b.ws_url(&app.key)).await;
    late.subscribe(&new, "private-room").await;
    let old_api = Api::new(&b.http_url(), &app);
    let (status, _) = old_api.trigger(&["private-room"], "e", "old").await;
    assert_eq!(status, 200, "the old secret signs during the overlap");
    eventually("the old secret stops signing after the overlap", async || {
        let (status, _) = old_api.trigger(&["private-room"], "e", "old").await;
        holds(status == 401, status)
    })
    .await;

    // Disabling on node A closes node B's connections with 4003 and refuses new ones.
    let (status, _) = admin.send("POST", "/apps/t1/disable", None).await;
    assert_eq!(status, 200);
    assert_eq!(on_b.expect_close().await.0, 4003);
    assert_eq!(late.expect_close().await.0, 4003);
    assert_eq!(refusal(&b, &app.key).await, Some(4003));
    admin.send("POST", "/apps/t1/enable", None).await;
    // The answer comes before the bus message reaches node B: wait for it there.
    eventually("node B admits the app again", async || {
        let refused = refusal(&b, &app.key).await;
        holds(refused.is_none(), format!("{refused:?}"))
    })
    .await;

    // A new app made on node A connects on node B.
    let (_, second) = admin.send("POST", "/apps", Some(json!({ "id": "t2" }))).await;
    Client::connect(&b.ws_url(second["key"].as_str().unwrap())).await;
}

async fn with_the_database_down_known_apps_keep_working_and_new_keys_are_refused(mut db: Db) {
    let admin_port = free_port();
    // A one-second trust, so lookups go to the database while it is down.
    let server = Server::builder().config(&db.config(admin_port, 1)).start();
    let admin = Admin::new(admin_port);
    let (_, made) = admin.send("POST", "/apps", Some(json!({ "id": "k1" }))).await;
    let app = app_of(&made);
    Client::connect(&server.ws_url(&app.key)).await;

    db.kill();
    eventually("the cached app is served stale while the database is down", async || {
        let _ = Client::connect(&server.ws_url(&app.key)).await;
        let stale = server.labelled_metric("sockhost_app_lookups_total{outcome=\"stale\"}").await;
        holds(stale >= 1.0, stale)
    })
    .await;
    let (status, _) = Api::new(&server.http_url(), &app).trigger(&["news"], "e", "1").await;
    assert_eq!(status, 200);
    // Not 4001: the key may well exist, and pusher-js reconnects after 4100, not after 4001.
    assert_eq!(refusal(&server, "unknown-key").await, Some(4100));
    assert!(server.labelled_metric("sockhost_app_lookups_total{outcome=\"failed\"}").await >= 1.0);
    assert_eq!(admin.send("POST", "/apps", Some(json!({ "id": "k2" }))).await.0, 503);

    db.restart();
    let made = eventually("the admin API works again once the database is back", async || {
        let (status, made) = admin.send("POST", "/apps", Some(json!({ "id": "k2" }))).await;
        holds(status == 201, format!("{status} {made}")).map(|()| made)
    })
    .await;
    Client::connect(&server.ws_url(made["key"].as_str().unwrap())).await;
}

/// One admin request, sent again while it answers the documented "retry" 409: what a client
/// does, so the final state says whether any request's effect was lost.
async fn settled(admin: &Admin, method: &str, path: &str, body: Option<Value>) -> Value {
    loop {
        let (status, answer) = admin.send(method, path, body.clone()).await;
        match status {
            200 => return answer,
            409 if answer["retry"] == true => continue,
            other => panic!("{method} {path} answered {other}: {answer}"),
        }
    }
}

/// Whether `secret` signs HTTP API requests of the app now.
async fn signs(server: &Server, id: &str, key: &str, secret: &str) -> bool {
    let app = TestApp::new(id, key, secret);
    Api::new(&server.http_url(), &app).trigger(&["race"], "e", "1").await.0 == 200
}

async fn racing_admin_writes_never_undo_each_other(db: Db) {
    let admin_port = free_port();
    let server = Server::builder().config(&db.config(admin_port, 300)).start();
    let admin = Admin::new(admin_port);
    let (status, made) =
        admin.send("POST", "/apps", Some(json!({ "id": "race", "key": "race-key" }))).await;
    assert_eq!(status, 201, "{made}");
    let path = "/apps/race";
    for round in 1..=40_u64 {
        // Two PATCHes of different fields: both stay applied.
        let (a, b) = tokio::join!(
            settled(&admin, "PATCH", path, Some(json!({ "max_connections": round }))),
            settled(&admin, "PATCH", path, Some(json!({ "max_read_requests_per_second": round }))),
        );
        drop((a, b));
        let (_, now) = admin.send("GET", path, None).await;
        assert_eq!(now["max_connections"], round, "round {round}: a PATCH was lost: {now}");
        assert_eq!(now["max_read_requests_per_second"], round, "round {round}: {now}");

        // A disable racing a PATCH: disabled, and the PATCH applied.
        settled(&admin, "POST", "/apps/race/enable", None).await;
        let patch = json!({ "max_presence_members_per_channel": round });
        tokio::join!(
            settled(&admin, "POST", "/apps/race/disable", None),
            settled(&admin, "PATCH", path, Some(patch)),
        );
        let (_, now) = admin.send("GET", path, None).await;
        assert_eq!(now["enabled"], false, "round {round}: the disable was undone: {now}");
        assert_eq!(now["max_presence_members_per_channel"], round, "round {round}: {now}");
        settled(&admin, "POST", "/apps/race/enable", None).await;

        // A rotation racing a PATCH: the rotated secret is the current one, the PATCH applied.
        let (rotated, _) = tokio::join!(
            settled(&admin, "POST", "/apps/race/rotate-secret", None),
            settled(&admin, "PATCH", path, Some(json!({ "max_connections": round + 1000 }))),
        );
        let (_, now) = admin.send("GET", path, None).await;
        assert_eq!(now["secret"], rotated["secret"], "round {round}: the rotation was undone");
        assert_eq!(now["max_connections"], round + 1000, "round {round}: {now}");

        // Two rotations: each answered secret signs (as the current or the previous one).
        let (first, second) = tokio::join!(
            settled(&admin, "POST", "/apps/race/rotate-secret", None),
            settled(&admin, "POST", "/apps/race/rotate-secret", None),
        );
        for rotated in [&first, &second] {
            let secret = rotated["secret"].as_str().unwrap();
            // The answer follows this node's refresh, which a loaded database may need a
            // second try for: wait for the node, not for time.
            eventually(format!("round {round}: both rotated secrets sign"), async || {
                holds(signs(&server, "race", "race-key", secret).await, secret)
            })
            .await;
        }
    }
}

async fn odd_ids_and_keys_are_unknown_without_a_query(db: Db) {
    let admin_port = free_port();
    let server = Server::builder().config(&db.config(admin_port, 300)).start();
    let http = reqwest::Client::new();
    for id in ["x%00abcdef", "x%2Fy", "x%20y", "%C3%A9t%C3%A9", "x%27y", "a..b%00"] {
        let answer = http
            .post(format!("{}/apps/{id}/events", server.http_url()))
            .body(r#"{"name":"e","channel":"c","data":"1"}"#)
            .header("Content-Type", "application/json")
            .send()
            .await
            .expect("the HTTP API answers");
        assert_eq!(answer.status().as_u16(), 404, "POST /apps/{id}/events");
    }
    for key in ["x%00y", "k%2Fey", "%C3%A9", "a%20b"] {
        assert_eq!(refusal(&server, key).await, Some(4001), "key {key}");
    }
    let failed = server.labelled_metric("sockhost_app_lookups_total{outcome=\"failed\"}").await;
    assert_eq!(failed, 0.0, "odd input is not an outage");
    assert!(!server.log().contains("did not answer"), "{}", server.log());
}

async fn token_guessing_is_slowed_down_and_logged_on(db: Db) {
    let admin_port = free_port();
    let server = Server::builder().config(&db.config(admin_port, 300)).start();
    let admin = Admin::new(admin_port);
    let wrong = TOKEN.replace('a', "b");
    let mut statuses = Vec::new();
    for _ in 0..22 {
        statuses.push(admin.call("GET", "/apps", None, &wrong).await.0);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[20..], [429, 429], "{statuses:?}");
    let refused = admin
        .http
        .get(format!("{}/apps", admin.base))
        .bearer_auth(&wrong)
        .send()
        .await
        .expect("the admin API answers");
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().contains_key(reqwest::header::RETRY_AFTER));
    let body: Value = refused.json().await.expect("a JSON refusal");
    assert!(body["error"].is_string(), "{body}");
    assert!(server.log().contains("without a valid token"), "{}", server.log());
    eventually("the right token works again after the backoff", async || {
        let (status, _) = admin.send("GET", "/apps", None).await;
        holds(status == 200, status)
    })
    .await;
}

async fn every_refusal_is_json_and_absurd_fields_are_refused_on(db: Db) {
    let admin_port = free_port();
    let _server = Server::builder().config(&db.config(admin_port, 300)).start();
    let admin = Admin::new(admin_port);
    let bad_bodies = [
        json!({ "id": "x/y" }),
        json!({ "key": "k\u{0}ey" }),
        json!({ "secret": "short" }),
        json!({ "channel_delta_compression": { "c": { "max_conflation_keys": 100_000_000 } } }),
        json!({ "max_event_payload_in_kb": 2_000_000 }),
    ];
    for body in bad_bodies {
        let (status, answer) = admin.send("POST", "/apps", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, made) = admin
        .send("POST", "/apps", Some(json!({ "id": "j.s-1_a", "secret": "s".repeat(16) })))
        .await;
    assert_eq!(status, 201, "{made}");
    let huge = format!(r#"{{"max_connections": 1, "x": "{}"}}"#, "a".repeat(70 * 1024));
    let over_limit = admin
        .http
        .patch(format!("{}/apps/j.s-1_a", admin.base))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .body(huge);
    let odd = [
        ("over the body limit", over_limit, 413),
        ("a bad query", admin.http.get(format!("{}/apps?limit=many", admin.base)), 400),
        ("invalid UTF-8 in the path", admin.http.get(format!("{}/apps/%FF%FE", admin.base)), 400),
        ("a wrong method", admin.http.put(format!("{}/apps", admin.base)), 405),
        ("an unknown route", admin.http.get(format!("{}/no/such/route", admin.base)), 404),
    ];
    for (what, request, expected) in odd {
        let answer = request.bearer_auth(TOKEN).send().await.expect("the admin API answers");
        assert_eq!(answer.status().as_u16(), expected, "{what}");
        let text = answer.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(body["error"].is_string(), "{what}: not a JSON error: {text:?}");
    }
}

/// Repeating one unknown id costs the database one query per 2 s, not one per request:
/// counted in PostgreSQL's statement log.
#[tokio::test]
async fn repeated_unknown_ids_are_asked_once_per_two_seconds() {
    let pg = PostgresServer::start();
    pg.sql("ALTER SYSTEM SET log_statement = 'all'");
    pg.sql("SELECT pg_reload_conf()");
    eventually("PostgreSQL logs every statement", async || {
        let setting = pg.sql("SHOW log_statement");
        holds(setting == "all", setting)
    })
    .await;
    let db = Db::Postgres(pg);
    let server = Server::builder().config(&db.config(free_port(), 300)).start();
    let Db::Postgres(pg) = &db else { unreachable!() };
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let requests = 300;
    for _ in 0..requests {
        let answer = http
            .post(format!("{}/apps/ghost-app-7/events", server.http_url()))
            .body("{}")
            .send()
            .await
            .expect("the HTTP API answers");
        assert_eq!(answer.status().as_u16(), 404);
    }
    let windows = started.elapsed().as_secs() / 2 + 1;
    let queries = pg.log().matches("'ghost-app-7'").count();
    assert!(queries >= 1, "the first request asks the database");
    assert!(
        queries as u64 <= windows,
        "{queries} queries for {requests} requests in {windows} windows of 2 s"
    );
    let unknown = server.labelled_metric("sockhost_app_lookups_total{outcome=\"unknown\"}").await;
    assert!(unknown >= f64::from(requests), "every request is counted: {unknown}");
}

#[tokio::test]
async fn made_up_ids_cost_one_address_a_bounded_number_of_queries() {
    let db = Db::Postgres(PostgresServer::start());
    let server = Server::builder().config(&db.config(free_port(), 300)).start();
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..80 {
        let answer = http
            .post(format!("{}/apps/made-up-{i}/events", server.http_url()))
            .body("{}")
            .send()
            .await
            .expect("the HTTP API answers");
        statuses.push(answer.status().as_u16());
    }
    // Every id is new, so each would be a query; past the address's budget none is.
    let asked = statuses.iter().filter(|s| **s == 404).count();
    assert!((1..=50).contains(&asked), "{asked} lookups reached the database: {statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let refused =
        server.labelled_metric("sockhost_app_lookups_total{outcome=\"over_budget\"}").await;
    assert!(refused >= 30.0, "{refused}");
}

/// Every scenario above, against one database.
macro_rules! against {
    ($name:ident, $start:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn an_app_only_in_the_database_connects_publishes_and_signs() {
                super::an_app_only_in_the_database_connects_publishes_and_signs($start).await;
            }

            #[tokio::test]
            async fn the_admin_api_needs_its_token_and_checks_what_it_is_given() {
                super::the_admin_api_needs_its_token_and_checks_what_it_is_given($start).await;
            }

            #[tokio::test]
            async fn every_documented_route_answers_as_documented() {
                super::every_documented_route_answers_as_documented($start).await;
            }

            #[tokio::test]
            async fn admin_changes_reach_every_node_at_once() {
                super::admin_changes_reach_every_node_at_once($start).await;
            }

            #[tokio::test]
            async fn racing_admin_writes_never_undo_each_other() {
                super::racing_admin_writes_never_undo_each_other($start).await;
            }

            #[tokio::test]
            async fn odd_ids_and_keys_are_unknown_without_a_query() {
                super::odd_ids_and_keys_are_unknown_without_a_query($start).await;
            }

            #[tokio::test]
            async fn with_the_database_down_known_apps_keep_working_and_new_keys_are_refused() {
                super::with_the_database_down_known_apps_keep_working_and_new_keys_are_refused(
                    $start,
                )
                .await;
            }
        }
    };
}

against!(postgres, Db::postgres());
against!(mariadb, Db::mariadb());
against!(dynamodb, Db::dynamodb());

#[tokio::test]
async fn token_guessing_is_slowed_down_and_logged() {
    token_guessing_is_slowed_down_and_logged_on(Db::postgres()).await;
}

#[tokio::test]
async fn every_refusal_is_json_and_absurd_fields_are_refused() {
    every_refusal_is_json_and_absurd_fields_are_refused_on(Db::postgres()).await;
}

#[test]
fn an_admin_api_without_a_token_is_a_one_line_refusal() {
    let dir = sockhost_tests::private_dir();
    let path = dir.path().join("sockhost.toml");
    std::fs::write(&path, "[admin]\nenabled = true\n").unwrap();
    let (code, text) = sockhost_tests::server::run_to_exit(
        dir.path(),
        &["--config", path.to_str().unwrap(), "--plugins", &manifest()],
        &[("PORT", "0"), ("METRICS_ENABLED", "false")],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("admin.token: required when the admin API is enabled"), "{text}");
}

#[test]
fn an_app_manager_that_cannot_reach_its_database_is_a_one_line_refusal() {
    let dir = sockhost_tests::private_dir();
    let path = dir.path().join("sockhost.toml");
    let nobody = free_port();
    std::fs::write(
        &path,
        format!(
            "[app_manager]\ndriver = \"postgres\"\n[app_manager.postgres]\ntimeout_ms = 2000\n\
             [database.postgres]\nhost = \"127.0.0.1\"\nport = {nobody}\n"
        ),
    )
    .unwrap();
    let (code, text) = sockhost_tests::server::run_to_exit(
        dir.path(),
        &["--config", path.to_str().unwrap(), "--plugins", &manifest()],
        &[("PORT", "0"), ("METRICS_ENABLED", "false")],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("app-manager driver `postgres`"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
}
