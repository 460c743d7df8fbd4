//! Tag filters: a subscriber's condition on the tags an event was published with, in the
//! filter language Sockudo's clients send (`data.filter` of a subscribe).
//!
//! A filter is a tree: logical nodes `{"op": "and"|"or"|"not", "nodes": [...]}` over leaves
//! `{"key", "cmp", "val"}` (or `"vals"` for `in` / `nin`). It is compiled once, at subscribe,
//! into [`Filter`], bounded in size, and evaluated per event and subscriber on the receiving
//! node. A missing tag fails every comparison but `neq`, `nin` and `nex`; `gt`, `gte`, `lt`
//! and `lte` compare numbers and fail when either side is not one; text comparisons are exact
//! (case-sensitive). An event without tags is judged as one with an empty set of tags.
//!
//! A filter costs memory to hold and time to evaluate, so besides its node count and depth it
//! is bounded by its size ([`Filter::cost`]: the bytes of its keys and values plus a small
//! charge per node and value), and compiled into a canonical form (and / or children sorted,
//! duplicates and single-child nodes removed) so that filters which mean the same are equal:
//! an [`Interner`] then holds each distinct filter once on the node, however many channels and
//! sockets use it, and a channel evaluates it once per event.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher as _, Hash, Hasher},
    sync::{Arc, Mutex, Weak},
};

use serde_json::{Map, Value};

/// An event's tags: name -> value.
pub type Tags = BTreeMap<String, String>;

/// The most nodes (logical and leaves) in one filter.
pub const MAX_NODES: usize = 128;
/// The deepest a filter may nest (the root is depth 1).
pub const MAX_DEPTH: usize = 16;
/// The longest tag name a filter may test, in bytes.
pub const MAX_KEY: usize = 256;
/// The longest value a filter may compare with, in bytes.
pub const MAX_VALUE: usize = 1024;
/// The most values in one `in` / `nin`.
pub const MAX_VALS: usize = 128;
/// The largest filter, by [`Filter::cost`]: a few comparisons with long values, or a hundred
/// short ones. Holding and evaluating a filter grows with it.
pub const MAX_FILTER_BYTES: usize = 4096;
/// The most filter bytes ([`Filter::cost`]) one connection may hold over all its
/// subscriptions, each distinct filter counted once (equal filters are held once): a filter on
/// every channel a connection may have would otherwise hold the channel bound times the filter
/// bound.
pub const MAX_CONNECTION_FILTER_BYTES: usize = 32 * 1024;
/// What each node costs on top of its bytes (what holding and visiting one takes).
pub const NODE_COST: usize = 24;
/// What each value of an `in` / `nin` costs on top of its bytes.
pub const VALUE_COST: usize = 8;

/// A comparison of one tag. Numbers are finite and `-0` is `0`, so equality is an equivalence
/// and [`Hash`] agrees with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmp {
    /// Equal to the value.
    Eq(String),
    /// Missing, or not equal.
    Neq(String),
    /// One of the values.
    In(Vec<String>),
    /// Missing, or none of the values.
    Nin(Vec<String>),
    /// Present.
    Ex,
    /// Missing.
    Nex,
    /// Starts with.
    Sw(String),
    /// Ends with.
    Ew(String),
    /// Contains.
    Ct(String),
    /// As numbers: greater than.
    Gt(f64),
    /// As numbers: at least.
    Gte(f64),
    /// As numbers: less than.
    Lt(f64),
    /// As numbers: at most.
    Lte(f64),
}

/// A compiled filter, in canonical form (see the module's documentation).
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every node matches.
    And(Vec<Filter>),
    /// Some node matches.
    Or(Vec<Filter>),
    /// The node does not match.
    Not(Box<Filter>),
    /// A comparison of one tag.
    Leaf {
        /// The tag's name.
        key: String,
        /// The comparison.
        cmp: Cmp,
    },
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not a filter's shape.
    #[error("Invalid tags filter shape: {0}")]
    Shape(String),
    /// A rule of the language broken.
    #[error("Invalid tags filter: {0}")]
    Rule(String),
    /// Over a size limit.
    #[error("Invalid subscription filter: {0}")]
    Limit(String),
}

fn shape(message: impl Into<String>) -> FilterError {
    FilterError::Shape(message.into())
}

fn rule(message: impl Into<String>) -> FilterError {
    FilterError::Rule(message.into())
}

/// A comparison value as text: strings as they are, numbers and booleans written out.
fn text(value: &Value) -> Result<String, FilterError> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err(shape("a value must be a string, a number or a boolean")),
    };
    if text.len() > MAX_VALUE {
        return Err(FilterError::Limit(format!("a value is over {MAX_VALUE} bytes")));
    }
    Ok(text)
}

impl Filter {
    /// Compile a filter. Accepts the node itself, or an object whose `tags` is the node (the
    /// reference's combined form; its other parts are not supported here and are refused).
    pub fn compile(value: &Value) -> Result<Self, FilterError> {
        let node = match value.as_object() {
            Some(object) if !object.contains_key("op") && !object.contains_key("key") => {
                if let Some(other) = object.keys().find(|k| *k != "tags") {
                    return Err(shape(format!("`{other}` filters are not supported; use `tags`")));
                }
                object.get("tags").ok_or_else(|| shape("an empty filter"))?
            }
            _ => value,
        };
        let mut budget = Budget::default();
        Self::node(node, 1, &mut budget)
    }

    fn node(value: &Value, depth: usize, budget: &mut Budget) -> Result<Self, FilterError> {
        budget.nodes += 1;
        if budget.nodes > MAX_NODES {
            return Err(FilterError::Limit(format!("tag filter exceeds {MAX_NODES} nodes")));
        }
        budget.spend(NODE_COST)?;
        if depth > MAX_DEPTH {
            return Err(FilterError::Limit(format!(
                "tag filter exceeds the depth limit of {MAX_DEPTH}"
            )));
        }
        let object = value.as_object().ok_or_else(|| shape("a node must be an object"))?;
        match object.get("op") {
            Some(op) => Self::logical(object, op, depth, budget),
            None => Self::comparison(object, budget),
        }
    }

    /// `{"op": "and" | "or" | "not", "nodes": [...]}`.
    fn logical(
        object: &Map<String, Value>,
        op: &Value,
        depth: usize,
        budget: &mut Budget,
    ) -> Result<Self, FilterError> {
        if ["key", "cmp", "val", "vals"].iter().any(|k| object.contains_key(*k)) {
            return Err(shape("a logical node cannot also compare a tag"));
        }
        let op = op.as_str().ok_or_else(|| shape("`op` must be a string"))?;
        let children = object
            .get("nodes")
            .and_then(Value::as_array)
            .ok_or_else(|| shape("a logical node needs `nodes`, an array"))?;
        let mut compiled = Vec::with_capacity(children.len());
        for child in children {
            compiled.push(Self::node(child, depth + 1, budget)?);
        }
        match op {
            "and" | "or" if compiled.is_empty() => {
                Err(rule(format!("{op} operation requires at least one child node")))
            }
            "and" => Ok(Self::canonical(true, compiled)),
            "or" => Ok(Self::canonical(false, compiled)),
            "not" if compiled.len() == 1 => Ok(Self::Not(Box::new(compiled.pop().expect("one")))),
            "not" => Err(rule(format!(
                "not operation requires exactly one child node, got {}",
                compiled.len()
            ))),
            other => Err(rule(format!("unknown op `{other}` (and, or, not)"))),
        }
    }

    /// `{"key": K, "cmp": C, "val": V}` or with `"vals": [...]` for `in` / `nin`.
    fn comparison(object: &Map<String, Value>, budget: &mut Budget) -> Result<Self, FilterError> {
        if object.contains_key("nodes") {
            return Err(shape("a comparison cannot have `nodes`"));
        }
        let key = object.get("key").and_then(Value::as_str).unwrap_or_default();
        if key.is_empty() {
            return Err(rule("a comparison needs a non-empty `key`"));
        }
        if key.len() > MAX_KEY {
            return Err(FilterError::Limit(format!("a key is over {MAX_KEY} bytes")));
        }
        let cmp =
            object.get("cmp").and_then(Value::as_str).ok_or_else(|| shape("`cmp` missing"))?;
        let val = || -> Result<String, FilterError> {
            let val = object.get("val").map(text).transpose()?.unwrap_or_default();
            if val.is_empty() {
                return Err(rule(format!("`{cmp}` needs a non-empty `val`")));
            }
            Ok(val)
        };
        let vals = || -> Result<Vec<String>, FilterError> {
            let list =
                object.get("vals").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            if list.is_empty() {
                return Err(rule(format!("`{cmp}` needs a non-empty `vals`")));
            }
            if list.len() > MAX_VALS {
                return Err(FilterError::Limit(format!("more than {MAX_VALS} vals")));
            }
            let mut out = list.iter().map(text).collect::<Result<Vec<_>, _>>()?;
            out.sort();
            out.dedup();
            Ok(out)
        };
        let number = || -> Result<f64, FilterError> {
            let val = val()?;
            val.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                // -0 and 0 compare the same; one of them, so that equal filters hash the same.
                .map(|n| if n == 0.0 { 0.0 } else { n })
                .ok_or_else(|| rule(format!("`{cmp}` compares numbers; `{val}` is not one")))
        };
        let cmp = match cmp {
            "eq" => Cmp::Eq(val()?),
            "neq" => Cmp::Neq(val()?),
            "in" => Cmp::In(vals()?),
            "nin" => Cmp::Nin(vals()?),
            "ex" => Cmp::Ex,
            "nex" => Cmp::Nex,
            "sw" => Cmp::Sw(val()?),
            "ew" => Cmp::Ew(val()?),
            "ct" => Cmp::Ct(val()?),
            "gt" => Cmp::Gt(number()?),
            "gte" => Cmp::Gte(number()?),
            "lt" => Cmp::Lt(number()?),
            "lte" => Cmp::Lte(number()?),
            other => return Err(rule(format!("unknown cmp `{other}`"))),
        };
        let leaf = Self::Leaf { key: key.to_string(), cmp };
        budget.spend(leaf.cost() - NODE_COST)?;
        Ok(leaf)
    }

    /// `and` (or `or`) over `children`, canonical: nested nodes of the same kind flattened,
    /// children sorted and without duplicates, and a single child standing for itself. The
    /// order is that of the children's debug text, which is deterministic (compiling is at
    /// subscribe, bounded, and never on the event path).
    fn canonical(and: bool, children: Vec<Self>) -> Self {
        let mut flat = Vec::with_capacity(children.len());
        for child in children {
            match child {
                Self::And(inner) if and => flat.extend(inner),
                Self::Or(inner) if !and => flat.extend(inner),
                other => flat.push(other),
            }
        }
        flat.sort_by_cached_key(|c| format!("{c:?}"));
        flat.dedup();
        if flat.len() == 1 {
            return flat.pop().expect("one child");
        }
        if and { Self::And(flat) } else { Self::Or(flat) }
    }

    /// What holding and evaluating the filter costs: the bytes of its keys and values, plus
    /// [`NODE_COST`] a node and [`VALUE_COST`] a value of `in` / `nin`. At most
    /// [`MAX_FILTER_BYTES`] for a filter [`Filter::compile`] accepts.
    pub fn cost(&self) -> usize {
        match self {
            Self::And(nodes) | Self::Or(nodes) => {
                NODE_COST + nodes.iter().map(Self::cost).sum::<usize>()
            }
            Self::Not(node) => NODE_COST + node.cost(),
            Self::Leaf { key, cmp } => {
                let value = match cmp {
                    Cmp::Eq(v) | Cmp::Neq(v) | Cmp::Sw(v) | Cmp::Ew(v) | Cmp::Ct(v) => v.len(),
                    Cmp::In(vs) | Cmp::Nin(vs) => vs.iter().map(|v| v.len() + VALUE_COST).sum(),
                    Cmp::Ex | Cmp::Nex => 0,
                    // As written at most a few dozen bytes; held in eight.
                    Cmp::Gt(_) | Cmp::Gte(_) | Cmp::Lt(_) | Cmp::Lte(_) => 8,
                };
                NODE_COST + key.len() + value
            }
        }
    }

    /// Whether an event with `tags` passes.
    pub fn matches(&self, tags: &Tags) -> bool {
        match self {
            Self::And(nodes) => nodes.iter().all(|n| n.matches(tags)),
            Self::Or(nodes) => nodes.iter().any(|n| n.matches(tags)),
            Self::Not(node) => !node.matches(tags),
            Self::Leaf { key, cmp } => {
                let tag = tags.get(key).map(String::as_str);
                let number = || tag.and_then(|t| t.parse::<f64>().ok());
                match cmp {
                    Cmp::Eq(v) => tag == Some(v),
                    Cmp::Neq(v) => tag != Some(v),
                    Cmp::In(vs) => tag.is_some_and(|t| contains(vs, t)),
                    Cmp::Nin(vs) => tag.is_none_or(|t| !contains(vs, t)),
                    Cmp::Ex => tag.is_some(),
                    Cmp::Nex => tag.is_none(),
                    Cmp::Sw(v) => tag.is_some_and(|t| t.starts_with(v.as_str())),
                    Cmp::Ew(v) => tag.is_some_and(|t| t.ends_with(v.as_str())),
                    Cmp::Ct(v) => tag.is_some_and(|t| t.contains(v.as_str())),
                    Cmp::Gt(v) => number().is_some_and(|n| n > *v),
                    Cmp::Gte(v) => number().is_some_and(|n| n >= *v),
                    Cmp::Lt(v) => number().is_some_and(|n| n < *v),
                    Cmp::Lte(v) => number().is_some_and(|n| n <= *v),
                }
            }
        }
    }

    /// For a filter that is one equality (`key` equals `value`): the pair, so that a channel
    /// can index its subscribers by it and reach them without testing the others.
    pub fn equality(&self) -> Option<(&str, &str)> {
        match self {
            Self::Leaf { key, cmp: Cmp::Eq(value) } => Some((key, value)),
            _ => None,
        }
    }
}

/// The cost of a filter being compiled, counted as it goes so that an oversized one is refused
/// before all of it is built.
#[derive(Default)]
struct Budget {
    nodes: usize,
    bytes: usize,
}

impl Budget {
    fn spend(&mut self, bytes: usize) -> Result<(), FilterError> {
        self.bytes += bytes;
        if self.bytes > MAX_FILTER_BYTES {
            return Err(FilterError::Limit(format!(
                "tag filter exceeds {MAX_FILTER_BYTES} bytes (its keys and values, and \
                 {NODE_COST} a node)"
            )));
        }
        Ok(())
    }
}

impl Eq for Cmp {}

impl Hash for Cmp {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Self::Eq(v) | Self::Neq(v) | Self::Sw(v) | Self::Ew(v) | Self::Ct(v) => v.hash(state),
            Self::In(vs) | Self::Nin(vs) => vs.hash(state),
            Self::Ex | Self::Nex => {}
            // Finite, and never -0 (see `comparison`): equal numbers have equal bits.
            Self::Gt(n) | Self::Gte(n) | Self::Lt(n) | Self::Lte(n) => n.to_bits().hash(state),
        }
    }
}

impl Eq for Filter {}

impl Hash for Filter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Self::And(nodes) | Self::Or(nodes) => nodes.hash(state),
            Self::Not(node) => node.hash(state),
            Self::Leaf { key, cmp } => {
                key.hash(state);
                cmp.hash(state);
            }
        }
    }
}

/// The node's distinct filters, each held once however many subscriptions use it: the
/// same filter on 200 channels of 1,000 sockets is one allocation, and a channel's
/// subscribers with equal filters share one `Arc`, which groups them. Entries are weak, so a
/// filter nobody uses any more is freed; the dead entries are swept as the table grows.
#[derive(Debug, Default)]
pub struct Interner {
    table: Mutex<Table>,
    /// Random keys: a client cannot choose filters that collide.
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<u64, Vec<Weak<Filter>>>,
    /// Filters added since the last sweep.
    added: usize,
}

impl Interner {
    /// The node's shared copy of `filter` (`filter` itself when it is the first).
    pub fn intern(&self, filter: Filter) -> Arc<Filter> {
        let hash = self.hasher.hash_one(&filter);
        let mut table = self.table.lock().expect("interner lock");
        let bucket = table.by_hash.entry(hash).or_default();
        if let Some(found) = bucket.iter().filter_map(Weak::upgrade).find(|f| **f == filter) {
            return found;
        }
        bucket.retain(|f| f.strong_count() > 0);
        let shared = Arc::new(filter);
        bucket.push(Arc::downgrade(&shared));
        table.added += 1;
        // Amortised: a sweep costs the table's size, and at least that many were added since.
        if table.added > table.by_hash.len() / 2 + 64 {
            table.by_hash.retain(|_, bucket| {
                bucket.retain(|f| f.strong_count() > 0);
                !bucket.is_empty()
            });
            table.added = 0;
        }
        shared
    }

    /// Distinct filters in the table, the dead not yet swept included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().expect("interner lock").by_hash.values().map(Vec::len).sum()
    }
}

/// Whether the sorted `values` hold `tag`.
fn contains(values: &[String], tag: &str) -> bool {
    values.binary_search_by(|v| v.as_str().cmp(tag)).is_ok()
}

/// The most tags one event may carry.
pub const MAX_EVENT_TAGS: usize = 64;

/// An event's `tags` from the HTTP API: an object of string values, bounded; the reason if not.
pub fn event_tags(value: &Value) -> Result<Tags, String> {
    let object = value.as_object().ok_or("tags must be an object of strings")?;
    if object.len() > MAX_EVENT_TAGS {
        return Err(format!("at most {MAX_EVENT_TAGS} tags per event"));
    }
    let mut tags = Tags::new();
    for (key, value) in object {
        let Value::String(value) = value else {
            return Err(format!("tags.{key} must be a string"));
        };
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(format!("a tag name must be 1 to {MAX_KEY} bytes"));
        }
        if value.len() > MAX_VALUE {
            return Err(format!("tags.{key} is over {MAX_VALUE} bytes"));
        }
        tags.insert(key.clone(), value.clone());
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn passes(filter: Value, pairs: &[(&str, &str)]) -> bool {
        Filter::compile(&filter).unwrap().matches(&tags(pairs))
    }

    #[test]
    fn every_comparison() {
        let t = [("sym", "BTC-USD"), ("px", "101.5")];
        let leaf = |cmp: &str, val: Value| json!({ "key": "sym", "cmp": cmp, "val": val });
        assert!(passes(leaf("eq", json!("BTC-USD")), &t));
        assert!(!passes(leaf("eq", json!("btc-usd")), &t));
        assert!(passes(leaf("neq", json!("ETH")), &t));
        assert!(passes(json!({ "key": "sym", "cmp": "in", "vals": ["X", "BTC-USD"] }), &t));
        assert!(!passes(json!({ "key": "sym", "cmp": "nin", "vals": ["BTC-USD"] }), &t));
        assert!(passes(json!({ "key": "sym", "cmp": "ex" }), &t));
        assert!(!passes(json!({ "key": "sym", "cmp": "nex" }), &t));
        assert!(passes(leaf("sw", json!("BTC")), &t));
        assert!(passes(leaf("ew", json!("USD")), &t));
        assert!(passes(leaf("ct", json!("C-U")), &t));
        let px = |cmp: &str, val: Value| json!({ "key": "px", "cmp": cmp, "val": val });
        assert!(passes(px("gt", json!(100)), &t));
        assert!(passes(px("gte", json!("101.5")), &t));
        assert!(!passes(px("lt", json!(101.5)), &t));
        assert!(passes(px("lte", json!(101.5)), &t));
        // gt..lte on a tag that is not a number: no match.
        assert!(!passes(leaf("gt", json!(1)), &t));
    }

    #[test]
    fn a_missing_tag_passes_only_negative_comparisons() {
        let none: [(&str, &str); 0] = [];
        for (cmp, expected) in [
            ("eq", false),
            ("neq", true),
            ("sw", false),
            ("ew", false),
            ("ct", false),
            ("gt", false),
            ("gte", false),
            ("lt", false),
            ("lte", false),
        ] {
            assert_eq!(
                passes(json!({ "key": "k", "cmp": cmp, "val": "1" }), &none),
                expected,
                "{cmp}"
            );
        }
        assert!(!passes(json!({ "key": "k", "cmp": "in", "vals": ["1"] }), &none));
        assert!(passes(json!({ "key": "k", "cmp": "nin", "vals": ["1"] }), &none));
        assert!(!passes(json!({ "key": "k", "cmp": "ex" }), &none));
        assert!(passes(json!({ "key": "k", "cmp": "nex" }), &none));
    }

    #[test]
    fn logic_and_the_combined_form() {
        let t = [("a", "1"), ("b", "2")];
        let eq = |k: &str, v: &str| json!({ "key": k, "cmp": "eq", "val": v });
        assert!(passes(json!({ "op": "and", "nodes": [eq("a", "1"), eq("b", "2")] }), &t));
        assert!(!passes(json!({ "op": "and", "nodes": [eq("a", "1"), eq("b", "3")] }), &t));
        assert!(passes(json!({ "op": "or", "nodes": [eq("a", "9"), eq("b", "2")] }), &t));
        assert!(passes(json!({ "op": "not", "nodes": [eq("a", "9")] }), &t));
        assert!(passes(json!({ "tags": eq("a", "1") }), &t));
        let only = Filter::compile(&eq("a", "1")).unwrap();
        assert_eq!(only.equality(), Some(("a", "1")));
        assert_eq!(
            Filter::compile(&json!({ "op": "not", "nodes": [eq("a", "1")] })).unwrap().equality(),
            None
        );
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        let refused = |v: Value| Filter::compile(&v).unwrap_err().to_string();
        assert!(refused(json!({ "op": "not", "nodes": [] })).contains("exactly one child"));
        assert!(refused(json!({ "op": "and", "nodes": [] })).contains("at least one child"));
        assert!(
            refused(json!({ "op": "xor", "nodes": [{ "key": "a", "cmp": "ex" }] }))
                .contains("unknown op")
        );
        assert!(refused(json!({ "key": "a", "cmp": "like", "val": "x" })).contains("unknown cmp"));
        assert!(refused(json!({ "key": "", "cmp": "eq", "val": "x" })).contains("non-empty `key`"));
        assert!(refused(json!({ "key": "a", "cmp": "eq" })).contains("non-empty `val`"));
        assert!(
            refused(json!({ "key": "a", "cmp": "in", "vals": [] })).contains("non-empty `vals`")
        );
        assert!(
            refused(json!({ "key": "a", "cmp": "gt", "val": "x" })).contains("compares numbers")
        );
        assert!(refused(json!({ "expression": "a" })).contains("not supported"));
        assert!(refused(json!("a")).contains("object"));
        let mut deep = json!({ "key": "a", "cmp": "ex" });
        for _ in 0..MAX_DEPTH {
            deep = json!({ "op": "not", "nodes": [deep] });
        }
        assert!(refused(deep).contains("depth limit of 16"));
        let wide: Vec<Value> = (0..MAX_NODES).map(|_| json!({ "key": "a", "cmp": "ex" })).collect();
        assert!(refused(json!({ "op": "or", "nodes": wide })).contains("128 nodes"));
    }

    #[test]
    fn a_filter_is_bounded_by_its_bytes_not_only_its_nodes() {
        // The attack's filter: `or` over 127 `ct` leaves of 470 bytes, 60 KB in a few nodes.
        let leaf = |i: usize| json!({ "key": "k", "cmp": "ct", "val": format!("{i:0470}") });
        let big: Vec<Value> = (0..127).map(leaf).collect();
        let refused = Filter::compile(&json!({ "op": "or", "nodes": big })).unwrap_err();
        assert!(matches!(refused, FilterError::Limit(_)), "{refused}");
        assert!(refused.to_string().contains("4096 bytes"), "{refused}");
        // Just under the bound is accepted, and its cost says so.
        let per_leaf = NODE_COST + 1 + 470;
        let fits: Vec<Value> = (0..(MAX_FILTER_BYTES - NODE_COST) / per_leaf).map(leaf).collect();
        let filter = Filter::compile(&json!({ "op": "or", "nodes": fits })).unwrap();
        assert!(filter.cost() <= MAX_FILTER_BYTES && filter.cost() > MAX_FILTER_BYTES - per_leaf);
    }

    #[test]
    fn filters_that_mean_the_same_compile_the_same_and_are_held_once() {
        let eq = |k: &str, v: &str| json!({ "key": k, "cmp": "eq", "val": v });
        let one = Filter::compile(&json!({ "op": "or", "nodes": [eq("a", "1"), eq("b", "2")] }));
        let other = Filter::compile(&json!({ "op": "or", "nodes": [
            eq("b", "2"), { "op": "or", "nodes": [eq("a", "1"), eq("b", "2")] }
        ] }));
        assert_eq!(one, other);
        let single = Filter::compile(&json!({ "op": "and", "nodes": [eq("a", "1")] })).unwrap();
        assert_eq!(single.equality(), Some(("a", "1")), "one child stands for itself");
        let zero = Filter::compile(&json!({ "key": "p", "cmp": "gt", "val": "-0" })).unwrap();
        assert_eq!(zero, Filter::compile(&json!({ "key": "p", "cmp": "gt", "val": 0 })).unwrap());

        let interner = Interner::default();
        let a = interner.intern(one.unwrap());
        let b = interner.intern(other.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "equal filters share one copy");
        let c = interner.intern(single);
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b, c));
        // Freed once unused; the table forgets them as it grows.
        for i in 0..1000 {
            drop(interner.intern(Filter::compile(&eq("k", &i.to_string())).unwrap()));
        }
        assert!(interner.len() < 200, "dead entries are swept: {}", interner.len());
    }

    #[test]
    fn event_tags_are_strings_and_bounded() {
        assert_eq!(event_tags(&json!({ "a": "1" })), Ok(tags(&[("a", "1")])));
        assert!(event_tags(&json!({ "a": 1 })).unwrap_err().contains("tags.a must be a string"));
        assert!(event_tags(&json!(["a"])).is_err());
        let many: serde_json::Map<String, Value> =
            (0..=MAX_EVENT_TAGS).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(event_tags(&Value::Object(many)).is_err());
    }
}
