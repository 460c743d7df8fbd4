//! A plugin that panics answers errors and the host goes on: through the host's own registry
//! and driver handles, with the real `.so`.

use sockhost::plugins::{DriverChoice, DriverSelection, Drivers, Registry, loader};
use sockhost_plugin_api::ErrorCode;
use sockhost_tests::cdylib;

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.add(loader::load(&cdylib("sockhost_test_panicking"), None).unwrap()).unwrap();
    registry
}

fn selection(transport: &str, cache: &str, queue: &str) -> DriverSelection {
    DriverSelection {
        transport: DriverChoice::named(transport),
        cache: DriverChoice::named(cache),
        queue: DriverChoice::named(queue),
        rate_limiter: DriverChoice::named("none"),
        app_manager: None,
        history: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_driver_methods_become_errors_and_the_driver_stays_usable() {
    let drivers = Drivers::build(&registry(), &selection("panicking", "none", "raw-panicking"))
        .await
        .unwrap();
    let t = &drivers.transport;

    let e = t.try_publish("topic", b"x".to_vec()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PANICKED), "{e}");
    assert!(e.to_string().contains("try_publish panicked on purpose"), "{e}");

    let e = t.publish("topic", b"x".to_vec()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PANICKED), "{e}");
    assert!(e.to_string().contains("publish panicked on purpose while polled"), "{e}");

    let e = t.node_count_hint().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PANICKED), "{e}");

    // A plugin written without the SDK whose future panics in poll: only the host's guard
    // stands between that panic and the host's task.
    let e = drivers.queue.pending("jobs").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PANICKED), "{e}");

    // The same driver objects still work, and so does the runtime that polled them.
    t.subscribe("topic").await.unwrap();
    t.health().await.unwrap();
    drivers.queue.health().await.unwrap();
    let e = t.try_publish("topic", b"again".to_vec()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PANICKED));
    drivers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_constructor_is_a_start_up_error_naming_the_driver() {
    let errors = Drivers::build(&registry(), &selection("panicking", "panicking", "none"))
        .await
        .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.code(), Some(ErrorCode::PANICKED));
    assert!(
        e.to_string().starts_with(
            "cache driver `panicking`: panicked: the cache constructor panicked on purpose"
        ),
        "{e}"
    );
}
