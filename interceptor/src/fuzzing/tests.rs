//! Replays every regression input and seed of the fuzz targets through the same functions the
//! targets call: a stable `cargo test` keeps fixed crashes fixed, without nightly or cargo-fuzz.

use std::path::{Path, PathBuf};

use super::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly under `dir/<target>/`, in name order (none when it does not exist).
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(dir: &str) -> usize {
    let mut count = 0;
    for (target, run) in TARGETS {
        for path in inputs(dir, target) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{}", path.display());
            run(&data);
            count += 1;
        }
    }
    count
}

#[test]
fn regression_inputs_pass() {
    replay("regressions");
}

#[test]
fn seed_corpora_pass() {
    assert!(
        replay("corpus") > 0,
        "no seed corpus under {}",
        fuzz_dir().display()
    );
}

#[test]
fn every_target_has_a_fuzz_target_and_seeds() {
    for (target, _) in TARGETS {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        assert!(
            !inputs("corpus", target).is_empty(),
            "no seeds for {target}"
        );
    }
}

#[test]
fn json_escapes_mark_the_bytes_of_each_escape_sequence() {
    let text = br#"{"k":"a\f::\u0001b\\c"}"#;
    let marked: String = super::json_escapes(text)
        .iter()
        .map(|&e| if e { '^' } else { ' ' })
        .collect();
    assert_eq!(marked, "       ^^  ^^^^^^ ^^   ");
}
