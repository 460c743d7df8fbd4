//! The debug console on the admin listener, against the real binary: its live log's places are
//! never used up by viewers that came and went (under traffic), and signing out ends the
//! session on the server (an old cookie is refused) and needs the console's own header (no
//! other site can sign a user out).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use reqwest::{StatusCode, header, redirect};
use sockhost_tests::{
    pusher::{Api, TestApp},
    server::{Server, free_port},
};

const TOKEN: &str = "a-console-test-admin-token-of-32-chars";
/// More open-and-close cycles than the node has places for live logs (64).
const CYCLES: usize = 80;

fn with_admin(port: u16) -> Server {
    let config = format!(
        "[admin]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\ntoken = \"{TOKEN}\"\n"
    );
    Server::builder().config(&config).start()
}

/// A client that shows redirects instead of following them, and keeps no connection.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Open the app's live log and read it up to its `hello`; the open response.
async fn open_log(http: &reqwest::Client, admin: &str) -> reqwest::Response {
    let mut response =
        http.get(format!("{admin}/apps/app-1/log")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.text().await);
    let mut seen = String::new();
    while !seen.contains("event: hello") {
        let chunk = response.chunk().await.unwrap().expect("the log goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    response
}

#[tokio::test]
async fn live_logs_opened_and_closed_under_traffic_never_use_up_the_places() {
    let port = free_port();
    let server = with_admin(port);
    let admin = format!("http://127.0.0.1:{port}");
    let api = Api::new(&server.http_url(), &TestApp::main());
    // Traffic: events on the app for as long as the cycles last, so each log has entries to
    // show (and a viewer that left is found gone when one is shown to it).
    let done = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let done = done.clone();
        async move {
            let mut sent = 0u64;
            while !done.load(Ordering::Relaxed) {
                let (status, answer) = api.trigger(&["traffic"], "tick", "{}").await;
                assert_eq!(status, 200, "{answer}");
                sent += 1;
            }
            sent
        }
    });
    let http = browser();
    for _ in 0..CYCLES {
        let log = open_log(&http, &admin).await;
        drop(log);
        // The viewer's place is given back once the node sees it gone.
        server.wait_for_metric("sockhost_console_viewers", |open| open == 0.0).await;
    }
    let last = open_log(&http, &admin).await;
    done.store(true, Ordering::Relaxed);
    assert!(traffic.await.unwrap() > 0);
    drop(last);
}

/// Sign in with the token; the cookie (`name=value`).
async fn sign_in(http: &reqwest::Client, admin: &str) -> String {
    let response = http
        .post(format!("{admin}/console/sign-in"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// The status of `GET path` with `cookie`.
async fn get(http: &reqwest::Client, url: &str, cookie: &str) -> StatusCode {
    http.get(url).header(header::COOKIE, cookie).send().await.unwrap().status()
}

#[tokio::test]
async fn signing_out_ends_the_session_and_only_the_console_can_do_it() {
    let port = free_port();
    let _server = with_admin(port);
    let admin = format!("http://127.0.0.1:{port}");
    let http = browser();
    let (page, apps) = (format!("{admin}/console"), format!("{admin}/apps"));
    let cookie = sign_in(&http, &admin).await;
    assert_eq!(get(&http, &page, &cookie).await, StatusCode::OK);
    assert_eq!(get(&http, &apps, &cookie).await, StatusCode::OK);
    let sign_out = format!("{admin}/console/sign-out");

    // Another site's form sends the cookie but cannot add the console's header.
    let cross_site = http.post(&sign_out).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    assert_eq!(get(&http, &page, &cookie).await, StatusCode::OK, "still signed in");
    // Without a session, a sign-out ends nobody's.
    let stranger = http.post(&sign_out).header("x-sockhost-console", "1").send().await.unwrap();
    assert_eq!(stranger.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&http, &page, &cookie).await, StatusCode::OK, "still signed in");

    // The console signs out: the browser's cookie is removed, and a copy of it is refused.
    let out = http
        .post(&sign_out)
        .header(header::COOKIE, &cookie)
        .header("x-sockhost-console", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let removed = out.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(removed.contains("Max-Age=0"), "{removed}");
    assert_eq!(get(&http, &page, &cookie).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&http, &apps, &cookie).await, StatusCode::UNAUTHORIZED);
    let write = http
        .post(format!("{admin}/apps/app-1/events"))
        .header(header::COOKIE, &cookie)
        .header("x-sockhost-console", "1")
        .body(r#"{"name":"e","channel":"c","data":"{}"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), StatusCode::UNAUTHORIZED);

    // Signing in again works at once.
    let again = sign_in(&http, &admin).await;
    assert_ne!(again, cookie);
    assert_eq!(get(&http, &page, &again).await, StatusCode::OK);
}
