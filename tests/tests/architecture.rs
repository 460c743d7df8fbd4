//! The layering of ARCHITECTURE.md, checked from the code's own imports: every `crate::` and
//! `super::` path in a crate's sources names the top-level module it reaches. No two top-level
//! modules of any crate of the workspace may reach each other (directly or around a circle),
//! and in the host a module may reach only its own layer or those below (`HOST_LAYERS`), so
//! the picture stays true without anyone redrawing it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use sockhost_tests::workspace_root;

/// The host's layers, top first. A module imports only from its own layer or a lower one; a
/// new module must be placed here.
const HOST_LAYERS: &[(&str, &[&str])] = &[
    (
        "entry points: the server and the doors for outside callers",
        &["server", "beside", "cli", "inspect", "fuzzing", "benchmarks", "peer"],
    ),
    ("handlers", &["ws", "http_api", "admin", "console"]),
    ("the handlers' shared state", &["ctx", "emit"]),
    (
        "services",
        &[
            "adapter",
            "apps",
            "webhooks",
            "cluster_events",
            "feed",
            "edge",
            "listen",
            "tls",
            "readiness",
            "recovery",
        ],
    ),
    ("metrics", &["metrics"]),
    ("channel state and the cluster layer", &["hub", "delta", "cluster"]),
    ("the plugin boundary", &["plugins"]),
    ("utilities", &["telemetry", "address_counts", "allocator", "wire", "prefetch"]),
    ("configuration and the wire format", &["config", "protocol"]),
];

/// The crates whose modules must not import each other in a circle.
const CRATES: &[&str] = &[
    "host",
    "plugin-api",
    "plugins/local",
    "plugins/redis",
    "plugins/redis-cluster",
    "plugins/redis-drivers",
    "plugins/nats",
    "plugins/sql-apps",
    "plugins/dynamodb-apps",
    "plugins/sqs",
    "tests",
];

/// Edges between a crate's top-level modules: importer -> imported -> where.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn no_module_of_any_crate_imports_another_in_a_circle() {
    let mut circles = Vec::new();
    for krate in CRATES {
        let graph = imports(&workspace_root().join(krate).join("src"));
        assert!(!graph.is_empty(), "{krate}: no modules found");
        for circle in circles_of(&graph) {
            circles.push(format!("{krate}: {}", describe(&graph, &circle)));
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn a_host_module_imports_only_its_own_layer_or_those_below() {
    let rank: BTreeMap<&str, usize> = HOST_LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, modules))| modules.iter().map(move |m| (*m, HOST_LAYERS.len() - i)))
        .collect();
    let graph = imports(&workspace_root().join("host/src"));
    let unplaced: Vec<&String> = graph.keys().filter(|m| !rank.contains_key(m.as_str())).collect();
    assert!(
        unplaced.is_empty(),
        "host modules in no layer (place them in HOST_LAYERS and ARCHITECTURE.md): {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (from, targets) in &graph {
        for (to, files) in targets {
            if rank[to.as_str()] > rank[from.as_str()] {
                upward.push(format!("{from} imports {to}, a layer above it, in {files:?}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that go up:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_sees_the_imports_it_is_meant_to_see() {
    let seen = |path: &[&str], code: &str| -> BTreeSet<String> {
        let modules = ["hub", "delta", "protocol", "config"].map(String::from).into();
        paths_in(code, path, &modules)
    };
    let code = "use crate::{hub::Hub, protocol::{frames, codes}};\n\
                // crate::config is only mentioned here\n\
                let s = \"crate::delta\";\n\
                fn f() -> super::delta::Deltas { todo!() }";
    assert_eq!(seen(&["ws", "session"], code), ["hub", "protocol"].map(String::from).into());
    assert_eq!(seen(&["ws"], code), ["delta", "hub", "protocol"].map(String::from).into());
}

/// The top-level modules of the crate whose sources are in `src` (a file `x.rs` or a
/// directory `x/`, the crate roots left out) with what each imports of the others.
fn imports(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(src, f).first().cloned())
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let path = module_path(src, file);
        let Some(top) = path.first().filter(|m| modules.contains(*m)) else { continue };
        let code = std::fs::read_to_string(file).expect("a source file");
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let edges = graph.entry(top.clone()).or_default();
        for target in paths_in(&code, &path, &modules) {
            if &target != top {
                let name = file.strip_prefix(src).unwrap_or(file).display().to_string();
                edges.entry(target).or_default().insert(name);
            }
        }
    }
    graph
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The module a file holds, as path segments (`a/mod.rs` and `a.rs` are `a`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let mut segments: Vec<String> =
        relative.iter().map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if segments.last().is_some_and(|s| s == "mod") {
        segments.pop();
    }
    segments
}

/// The top-level modules (of `modules`) that the code of module `path` names through
/// `crate::` or enough `super::` to reach the crate root; comments and strings left out.
fn paths_in(code: &str, path: &[&str], modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = without_comments_and_strings(code);
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let starts_word = at == 0 || !is_ident(bytes[at - 1]);
        let (hops, len) = if starts_word && rest.starts_with("crate::") {
            (usize::MAX, "crate::".len())
        } else if starts_word && rest.starts_with("super::") {
            let mut hops = 0;
            let mut len = 0;
            while code[at + len..].starts_with("super::") {
                hops += 1;
                len += "super::".len();
            }
            (hops, len)
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        at += len;
        // `super::` n times from module `path` is its n-th ancestor; the root when n = depth.
        if hops != usize::MAX && hops < path.len() {
            continue;
        }
        for first in first_segments(&code[at..]) {
            if modules.contains(&first) {
                found.insert(first);
            }
        }
    }
    found
}

/// The first segment of each path after `crate::`: one name, or each item of a `{...}` group.
fn first_segments(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    let Some(group) = rest.strip_prefix('{') else {
        return vec![rest.bytes().take_while(|b| is_ident(*b)).map(char::from).collect()];
    };
    let (mut depth, mut item, mut items) = (1, String::new(), Vec::new());
    let mut at_start = true;
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 1 => at_start = true,
            c if depth == 1 && at_start && (c.is_ascii_alphanumeric() || c == '_') => item.push(c),
            _ if depth == 1 && at_start && !item.is_empty() => {
                items.push(std::mem::take(&mut item));
                at_start = false;
            }
            _ => {}
        }
        if depth == 0 {
            break;
        }
    }
    if !item.is_empty() {
        items.push(item);
    }
    items
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `code` with `//` comments and the contents of string literals blanked out.
fn without_comments_and_strings(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    for line in code.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut previous = ' ';
        for c in line.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                    out.push('"');
                }
                continue;
            }
            if c == '/' && previous == '/' {
                out.pop();
                break;
            }
            if c == '"' {
                in_string = true;
            }
            out.push(c);
            previous = c;
        }
        out.push('\n');
    }
    out
}

/// Every circle of `graph` (its strongly connected components of more than one module).
fn circles_of(graph: &Graph) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on its reverse.
    let nodes: BTreeSet<&String> =
        graph.keys().chain(graph.values().flat_map(|t| t.keys())).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for node in &nodes {
        finish(graph, node, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (from, targets) in graph {
        for to in targets.keys() {
            reverse.entry(to).or_default().push(from);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut circles = Vec::new();
    for node in order.iter().rev() {
        if assigned.contains(node) {
            continue;
        }
        let mut component = Vec::new();
        let mut stack = vec![*node];
        assigned.insert(*node);
        while let Some(n) = stack.pop() {
            component.push(n.clone());
            for m in reverse.get(n).into_iter().flatten() {
                if assigned.insert(*m) {
                    stack.push(m);
                }
            }
        }
        if component.len() > 1 {
            component.sort();
            circles.push(component);
        }
    }
    circles
}

fn finish<'a>(
    graph: &'a Graph,
    node: &'a String,
    seen: &mut BTreeSet<&'a String>,
    order: &mut Vec<&'a String>,
) {
    if !seen.insert(node) {
        return;
    }
    for next in graph.get(node).into_iter().flat_map(|t| t.keys()) {
        finish(graph, next, seen, order);
    }
    order.push(node);
}

/// A circle's modules and the imports between them, with the files that make them.
fn describe(graph: &Graph, circle: &[String]) -> String {
    let mut edges = Vec::new();
    for from in circle {
        for (to, files) in graph.get(from).into_iter().flatten() {
            if circle.contains(to) {
                edges.push(format!("{from} -> {to} ({files:?})"));
            }
        }
    }
    format!("{circle:?}: {}", edges.join("; "))
}
