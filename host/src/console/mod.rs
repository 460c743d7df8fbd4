//! The debug console: a web page on the admin listener (the same token) showing an app's
//! figures and live log from every node, and a form that sends an event.
//!
//! - `pages`: the page, script and style (built into the binary) and the sign-in that trades
//!   the token for a cookie (`session`).
//! - `live`: the figures, the log (server-sent events) and the form's publish.
//!
//! What the log records and the figures are kept by the `feed` service below.

use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post},
};

pub(crate) mod live;
mod pages;
pub(crate) mod session;

use crate::ctx::Ctx;

/// The console's routes that need no sign-in (they show the sign-in form).
pub(crate) fn public() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/", get(pages::root))
        .route("/console", get(pages::console))
        .route("/console/sign-in", post(pages::sign_in_with))
        .route("/console/sign-out", post(pages::sign_out))
        // The style holds no data; the sign-in form needs it.
        .route("/console/console.css", get(pages::style))
}

/// The console's routes behind the token or its cookie.
pub(crate) fn signed(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    router
        .route("/console/console.js", get(pages::script))
        .route("/apps/{id}/figures", get(live::figures))
        .route("/apps/{id}/log", get(live::log))
        .route("/apps/{id}/events", post(live::send))
}
