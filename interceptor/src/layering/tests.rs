use std::path::Path;

use super::*;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The test the architecture relies on: no import cycle between top-level modules.
#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = graph(&src()).expect("the crate's sources parse");
    let cycles = cycles(&graph);
    let mut report = String::new();
    for scc in &cycles {
        report.push_str(&format!("cycle among {{{}}}:\n", scc.join(", ")));
        for from in scc {
            let inside: Vec<&str> = graph[from]
                .iter()
                .filter(|to| scc.contains(to))
                .map(String::as_str)
                .collect();
            report.push_str(&format!("  {from} → {}\n", inside.join(", ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{report}"
    );
}

/// The reader sees the forms the crate uses: plain paths, grouped `use` trees, macro bodies;
/// and skips comments, strings and test-only items.
#[test]
fn crate_paths_are_found_in_every_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("a")).expect("mkdir");
    fs::write(
        dir.path().join("a/mod.rs"),
        "use crate::{b::X, c};\n\
         // crate::comment\n\
         fn f() { let _ = \"crate::string\"; println!(\"{}\", crate::d::E); }\n\
         #[cfg(test)] mod t { use crate::testonly; }\n",
    )
    .expect("write");
    fs::write(dir.path().join("a/tests.rs"), "use crate::tests_file;\n").expect("write");
    fs::write(
        dir.path().join("b.rs"),
        "pub(crate) struct X; use crate::a::Y;\n",
    )
    .expect("write");
    fs::write(dir.path().join("main.rs"), "use crate::a;\n").expect("write");
    let graph = graph(dir.path()).expect("graph");
    let names = |m: &str| graph[m].iter().cloned().collect::<Vec<_>>();
    assert_eq!(names("a"), ["b", "c", "d"]);
    assert_eq!(names("b"), ["a"]);
    assert!(!graph.contains_key("main"));
    assert_eq!(cycles(&graph), [["a", "b"]]);
}
