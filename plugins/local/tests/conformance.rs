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
