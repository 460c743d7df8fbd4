//! The fuzz corpus, replayed on stable: every file under `fuzz/corpus/<target>/` goes through
//! the same `sockhost::fuzzing` function its cargo-fuzz target calls. What the fuzzers found
//! interesting (and any crash kept there) stays checked in CI without nightly or cargo-fuzz;
//! `scripts/fuzz` grows and minimizes the corpus.

use std::{panic, path::PathBuf};

fn replay(target: &str, run: fn(&[u8])) {
    let dir = sockhost_tests::workspace_root().join("fuzz").join("corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} cannot be read: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    // Run them all and name every input that fails: a panic message alone does not say which.
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path)
                .unwrap_or_else(|e| panic!("{} cannot be read: {e}", path.display()));
            panic::catch_unwind(|| run(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn inbound() {
    replay("inbound", sockhost::fuzzing::inbound);
}

#[test]
fn envelope() {
    replay("envelope", sockhost::fuzzing::envelope);
}

#[test]
fn api_query() {
    replay("api_query", sockhost::fuzzing::api_query);
}

#[test]
fn config() {
    replay("config", sockhost::fuzzing::config);
}
