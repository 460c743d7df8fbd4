//! Forwarding a plugin's `tracing` events and panics to the host's log.
//!
//! A `cdylib` has its own copy of `tracing`'s global dispatcher, which the host never sets, so
//! without this bridge a plugin's log events vanish. [`install`] sets this plugin's global
//! subscriber to one that formats each event and hands it to [`HostContext::log`](crate::HostContext::log), and a panic
//! hook that does the same for panics (which otherwise print as coming from an unnamed thread).

use std::{fmt::Write as _, sync::OnceLock};

use abi_stable::std_types::RStr;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    Layer, filter::LevelFilter, layer::Context, layer::SubscriberExt as _, registry::Registry,
};

use crate::{HostContextBox, LogLevel};

static SINK: OnceLock<HostContextBox> = OnceLock::new();

/// Route this plugin's log events and panics to `host`. The first call wins; later calls (one
/// per constructed driver) do nothing, since every context of one host logs to the same place.
pub fn install(plugin: &'static str, host: &HostContextBox) {
    if SINK.set(host.clone()).is_err() {
        return;
    }
    let max = host.max_log_level();
    let filter = match max {
        LogLevel::OFF => LevelFilter::OFF,
        LogLevel::ERROR => LevelFilter::ERROR,
        LogLevel::WARN => LevelFilter::WARN,
        LogLevel::INFO => LevelFilter::INFO,
        LogLevel::DEBUG => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let subscriber = Registry::default().with(HostLayer.with_filter(filter));
    // Fails only if the plugin set its own subscriber, which then stays in charge.
    let _ = tracing::subscriber::set_global_default(subscriber);
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
        let message = format!(
            "plugin {plugin} panicked{}: {}",
            location.unwrap_or_default(),
            super::panic_message(info.payload())
        );
        if let Some(sink) = SINK.get() {
            sink.log(LogLevel::ERROR, RStr::from_str("panic"), RStr::from_str(&message));
        }
    }));
}

struct HostLayer;

impl<S: Subscriber> Layer<S> for HostLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(sink) = SINK.get() else { return };
        let mut text = MessageText::default();
        event.record(&mut text);
        let level = match *event.metadata().level() {
            Level::ERROR => LogLevel::ERROR,
            Level::WARN => LogLevel::WARN,
            Level::INFO => LogLevel::INFO,
            Level::DEBUG => LogLevel::DEBUG,
            Level::TRACE => LogLevel::TRACE,
        };
        sink.log(level, RStr::from_str(event.metadata().target()), RStr::from_str(&text.finish()));
    }
}

/// The event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct MessageText {
    message: String,
    fields: String,
}

impl MessageText {
    fn finish(self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.fields,
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }
}

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }
}
