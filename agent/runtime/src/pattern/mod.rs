//! EventBridge event patterns: parsing, matching one pattern, and matching many at once.
//!
//! The language is EventBridge's, checked against the cases LocalStack recorded from AWS
//! (`tests/pattern_conformance.rs`):
//!
//! * **Exact values**: `{"source": ["aws.ec2", "app"]}`: strings character by character,
//!   numbers numerically (`300`, `300.0` and `3e2` are equal), `true`, `false`, `null`, `""`.
//!   The array is an OR; when the event's field is an array, any element may match.
//! * **Nested fields**: pattern objects descend into event objects; keys are joined with `.`, so
//!   `{"a.b": [1]}` and `{"a": {"b": [1]}}` are the same condition, and match the event's
//!   `{"a": {"b": 1}}` or `{"a.b": 1}`.
//! * **Operators** (`[{"prefix": "x"}]` …): `prefix`, `suffix` (each also as
//!   `{"prefix": {"equals-ignore-case": "x"}}`), `equals-ignore-case`, `wildcard` (`*` is any
//!   run of characters; `\*` and `\\` escape; `**` and patterns with more than 5 wildcards are
//!   rejected), `anything-but` (a value, a list, or `{"prefix"|"suffix"|"equals-ignore-case"|
//!   "wildcard": value or list}`; it matches any *present* value, `null` included, not excluded),
//!   `numeric` (`[">", 0, "<=", 5]`, `["=", 3.5]`), `exists` (`true`: a leaf value is present;
//!   `false`: none is, within the array element the rest of the pattern matched in; objects are
//!   not leaves), `cidr` (IPv4 and IPv6).
//! * **`$or`**: `{"$or": [{...}, {...}]}` at any level.
//! * **Array consistency**: conditions on fields of objects inside an array must be satisfied by
//!   one element (`{"a": [{"b": 1, "c": 2}, {"b": 3, "c": 4}]}` does not match `b = 1, c = 4`).
//!
//! [`Pattern`] evaluates one pattern; [`RuleSet`] compiles many into one index whose per-event cost
//! depends on the event and on the rules it matches, not on the number of rules, as long as each
//! rule has a selective exact, equals-ignore-case, prefix, suffix, numeric or wildcard (with a
//! literal start or end) condition (see [`RuleSet`]'s module notes in `compile.rs`).
//! [`RuleSet::matches_json_bytes`] (and [`RuleSet::matching_rules_json`]) match event text
//! without building a `serde_json::Value`: one validating pass over the bytes descends only into
//! the fields some rule looks at and hands their values, borrowed from the text, to the index
//! (`scan.rs`); text it does not handle exactly as serde_json does (a repeated key on such a
//! field, nesting deeper than 100, any syntax error) goes through serde_json instead, so the
//! answers and errors are those of parsing the text and calling [`RuleSet::matching_rules`].
//!
//! Limits: patterns nest at most [`parse::MAX_PATTERN_DEPTH`] levels and expand to at most
//! [`parse::MAX_BRANCHES`] `$or` combinations; event values deeper than 256 levels are ignored.
//! Differences from AWS known so far: the wildcard complexity check counts wildcards (more than
//! 5 is "too complex", as in the recorded case) rather than evaluating AWS's automaton
//! complexity; `exists: false` inside an array of objects is judged in the element the other
//! conditions matched in, whatever the order of the keys (event-ruler checks it against the
//! fields it has matched so far, in key order); JSON syntax errors carry serde_json's wording,
//! not Jackson's.
//!
//! ```
//! use outrider_runtime::pattern::Pattern;
//!
//! let p = Pattern::parse(r#"{"detail": {"state": [{"anything-but": "init"}], "n": [{"numeric": [">", 1]}]}}"#)?;
//! assert!(p.matches_json(r#"{"detail": {"state": "run", "n": 2}}"#)?);
//! assert!(!p.matches_json(r#"{"detail": {"state": "init", "n": 2}}"#)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ast;
mod compile;
mod matcher;
pub mod parse;
mod prune;
mod scan;

use std::collections::HashSet;

use serde_json::Value;

pub use compile::{RuleId, RuleSet};
pub use parse::{PatternError, PatternErrorKind};

use ast::Branch;
use matcher::{add_path_prefixes, branch_matches, FlatEvent};

/// A parsed, validated event pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    branches: Vec<Branch>,
    /// The paths the pattern looks at and their `.`-prefixes: the rest of an event is skipped.
    relevant: HashSet<String>,
}

impl Pattern {
    /// Parses and validates pattern text; errors carry AWS's `InvalidEventPatternException`
    /// reason.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        Ok(Pattern::new(parse::parse_str(text)?))
    }

    /// Parses and validates a pattern already read as JSON. Duplicate keys cannot be expressed
    /// here; [`Pattern::parse`] keeps the last of duplicates, as AWS does.
    pub fn from_value(value: &Value) -> Result<Pattern, PatternError> {
        Ok(Pattern::new(parse::parse_value(value)?))
    }

    fn new(branches: Vec<Branch>) -> Pattern {
        let mut relevant = HashSet::new();
        for c in branches.iter().flat_map(|b| &b.conditions) {
            add_path_prefixes(&mut relevant, &c.path);
        }
        Pattern { branches, relevant }
    }

    /// The pattern in disjunctive normal form: it matches when any branch holds.
    pub fn branches(&self) -> &[Branch] {
        &self.branches
    }

    /// Whether the event (EventBridge's JSON view, an object) matches. Non-objects never match.
    pub fn matches(&self, event: &Value) -> bool {
        if !event.is_object() {
            return false;
        }
        let flat = FlatEvent::new(event, Some(&self.relevant));
        self.branches
            .iter()
            .any(|b| branch_matches(b, |_, c| flat.get(&c.path)))
    }

    /// Parses the event text and matches it; only the fields the pattern looks at are kept
    /// while parsing.
    pub fn matches_json(&self, event: &str) -> Result<bool, serde_json::Error> {
        let value = prune::parse_pruned(event, &self.relevant)?;
        Ok(self.matches(&value))
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}
