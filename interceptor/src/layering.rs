//! The import graph between the crate's top-level modules, and the test that keeps it acyclic.
//!
//! Why: a module that imports a module that imports it back cannot be understood, tested or
//! replaced alone, and each new protocol would deepen such knots. So the top-level modules form
//! layers (docs/architecture.md draws them) and this test fails, naming the cycle, when an
//! import goes upward.
//!
//! What counts: an edge A → B when a file under A (`src/A.rs` or `src/A/**`) names `crate::B`,
//! in a `use` line, a path or a macro's tokens. Test-only code (`tests.rs` files and items under
//! `#[cfg(test)]`) does not count: tests may reach across layers to build real components.
//! `main.rs` and `lib.rs` sit above everything and are not part of the graph.
//!
//! It reads the sources with `syn` (Rust's grammar, so comments and strings never count) and
//! finds cycles as strongly connected components with `petgraph`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

#[cfg(test)]
mod tests;

/// Module name → the modules it imports (never itself).
pub(crate) type Graph = BTreeMap<String, BTreeSet<String>>;

/// Builds the graph from the crate's `src` directory.
pub(crate) fn graph(src: &Path) -> Result<Graph, String> {
    let mut graph = Graph::new();
    let entries = fs::read_dir(src).map_err(|e| format!("{}: {e}", src.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(module) = top_level_module(&path) else {
            continue;
        };
        let imports = graph.entry(module.clone()).or_default();
        for file in rust_files(&path)? {
            let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let parsed = syn::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            for item in parsed.items.iter().filter(|item| !is_test_only(item)) {
                crate_modules(item.to_token_stream(), imports);
            }
        }
        imports.remove(&module);
    }
    Ok(graph)
}

/// The strongly connected components with more than one module: each one is a cycle (or
/// several intertwined), listed with its members sorted.
pub(crate) fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut g = petgraph::graph::DiGraph::<&str, ()>::new();
    let mut index = BTreeMap::new();
    for module in graph.keys().chain(graph.values().flatten()) {
        index
            .entry(module.as_str())
            .or_insert_with(|| g.add_node(module.as_str()));
    }
    for (from, tos) in graph {
        for to in tos {
            g.add_edge(index[from.as_str()], index[to.as_str()], ());
        }
    }
    let mut sccs: Vec<Vec<String>> = petgraph::algo::tarjan_scc(&g)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let mut names: Vec<String> = scc.iter().map(|n| g[*n].to_owned()).collect();
            names.sort();
            names
        })
        .collect();
    sccs.sort();
    sccs
}

/// `src/foo.rs` and `src/foo/` are module `foo`; `main.rs`, `lib.rs` and anything that is not
/// Rust are not modules of the graph.
fn top_level_module(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if path.is_dir() {
        return Some(name.to_owned());
    }
    let stem = name.strip_suffix(".rs")?;
    (stem != "main" && stem != "lib").then(|| stem.to_owned())
}

/// The Rust files of a module: the file itself, or every `.rs` below its directory, without
/// `tests.rs` files.
fn rust_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let entries = fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            files.push(path);
        }
    }
    Ok(files)
}

/// An item under `#[cfg(test)]`.
fn is_test_only(item: &syn::Item) -> bool {
    let attrs = match item {
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Use(u) => &u.attrs,
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Impl(i) => &i.attrs,
        _ => return false,
    };
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

/// Collects B for every `crate::B` (and every B in `crate::{B::…, C}`) in the tokens, at any
/// depth, macro bodies included.
fn crate_modules(tokens: TokenStream, into: &mut BTreeSet<String>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            TokenTree::Group(group) => crate_modules(group.stream(), into),
            TokenTree::Ident(ident) if ident == "crate" => {
                let is_path = matches!(
                    (tokens.get(i + 1), tokens.get(i + 2)),
                    (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                        if a.as_char() == ':' && b.as_char() == ':'
                );
                match tokens.get(i + 3) {
                    Some(TokenTree::Ident(module)) if is_path => {
                        into.insert(module.to_string());
                    }
                    Some(TokenTree::Group(group))
                        if is_path && group.delimiter() == Delimiter::Brace =>
                    {
                        // `crate::{a::X, b}`: the first name of each comma-separated part.
                        let mut first = true;
                        for tree in group.stream() {
                            match tree {
                                TokenTree::Ident(module) if first => {
                                    into.insert(module.to_string());
                                    first = false;
                                }
                                TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                                _ => first = false,
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}
