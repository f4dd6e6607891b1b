//! Many patterns compiled into one matcher ([`RuleSet`]).
//!
//! Every branch of every rule (a conjunction of conditions, one per combination of `$or`
//! alternatives) is a *sub-rule*. Each sub-rule is indexed under one *anchor* condition, the most
//! selective one it has (access-predicate indexing): by field path, then by operator:
//!
//! * exact values: hash maps (strings, numbers by their `f64` value, `true`/`false`/`null`);
//! * `equals-ignore-case`: a hash map on the lower-cased value;
//! * prefixes and suffixes (and their ignore-case forms): byte tries (suffixes reversed);
//! * `numeric` ranges: each range is split into at most 128 aligned blocks of an
//!   order-preserving 64-bit encoding of `f64` (a segment tree over the number line, like
//!   event-ruler's range automaton), so a value finds every range holding it with one lookup per
//!   block size in use;
//! * `wildcard`: in the prefix trie under its literal text before the first `*`, or else in the
//!   suffix trie under its literal text after the last `*` (the sub-rule is then confirmed
//!   whole);
//! * other operators (`anything-but`, `cidr`, `exists: true`, wildcards that start and end with
//!   `*`): a list per path, evaluated on each value of that path only.
//!
//! Anchors are chosen among indexed conditions before listed ones, the one whose bucket holds the
//! fewest sub-rules so far (hash before trie or range on ties), so a rule with one selective exact or prefix condition is
//! found by a lookup whatever else it shares with other rules. Sub-rules whose conditions all
//! admit absence (`exists: false`) or that have no conditions are candidates for every event.
//!
//! For each leaf of the event the lookups give candidate sub-rules, and candidates are confirmed
//! with the exact single-pattern semantics (array consistency, `exists: false`), so a [`RuleSet`]
//! answers exactly as evaluating each [`Pattern`] alone. The cost per event depends on the event's
//! size and the number of candidates, not on the number of rules, except for rules anchored on a
//! listed operator (their cost grows with the rules on the same path) and rules whose only
//! selective-looking condition is shared by many others.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::ast::{Condition, Literal, Matcher, NumericRange, Wildcard, WildcardToken};
use super::matcher::{add_path_prefixes, branch_matches, lower, FlatEvent, Leaf, Scalar};
use super::scan::{scan, FxBuild, PathTrie};
use super::{Pattern, PatternError};

/// The name of a rule in a [`RuleSet`].
pub type RuleId = String;

#[derive(Debug, Clone, Default)]
struct TrieNode {
    next: Vec<(u8, u32)>,
    conds: Vec<u32>,
}

/// A byte trie mapping keys to the conditions registered at them.
#[derive(Debug, Clone, Default)]
struct Trie {
    nodes: Vec<TrieNode>,
}

impl Trie {
    fn insert(&mut self, key: impl Iterator<Item = u8>, cond: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0usize;
        for b in key {
            let found = self.nodes[at].next.binary_search_by_key(&b, |&(k, _)| k);
            at = match found {
                Ok(i) => self.nodes[at].next[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].next.insert(i, (b, id as u32));
                    id
                }
            };
        }
        self.nodes[at].conds.push(cond);
    }

    /// Calls `hit` for the conditions of every key that is a prefix of `input`.
    fn walk(&self, input: impl Iterator<Item = u8>, hit: &mut impl FnMut(u32)) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        node.conds.iter().for_each(|&c| hit(c));
        for b in input {
            match node.next.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(i) => match self.nodes.get(node.next[i].1 as usize) {
                    Some(n) => node = n,
                    None => return,
                },
                Err(_) => return,
            }
            node.conds.iter().for_each(|&c| hit(c));
        }
    }

    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// How many entries are registered at exactly `key`.
    fn count_at(&self, key: impl Iterator<Item = u8>) -> usize {
        let Some(mut node) = self.nodes.first() else {
            return 0;
        };
        for b in key {
            match node.next.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(i) => match self.nodes.get(node.next[i].1 as usize) {
                    Some(n) => node = n,
                    None => return 0,
                },
                Err(_) => return 0,
            }
        }
        node.conds.len()
    }
}

/// The conditions on one field path.
#[derive(Debug, Clone)]
struct PathIndex {
    /// Nothing is registered here (the path only serves other conditions of sub-rules).
    empty: bool,
    strings: HashMap<String, Vec<u32>, FxBuild>,
    numbers: HashMap<u64, Vec<u32>, FxBuild>,
    trues: Vec<u32>,
    falses: Vec<u32>,
    nulls: Vec<u32>,
    ignore_case: HashMap<String, Vec<u32>, FxBuild>,
    prefix: Trie,
    prefix_ic: Trie,
    suffix: Trie,
    suffix_ic: Trie,
    present: Vec<u32>,
    scan: Vec<(u32, Matcher)>,
    /// Numeric ranges, as dyadic intervals of [`order_key`]s: (depth, key prefix) → entries.
    ranges: HashMap<(u8, u64), Vec<u32>, FxBuild>,
    /// Bit d set: some range uses depth d.
    range_depths: u128,
    /// How many entries each distinct range has (for anchor costs).
    range_counts: HashMap<(u64, u64), usize>,
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex {
            empty: true,
            strings: HashMap::default(),
            numbers: HashMap::default(),
            trues: Vec::new(),
            falses: Vec::new(),
            nulls: Vec::new(),
            ignore_case: HashMap::default(),
            prefix: Trie::default(),
            prefix_ic: Trie::default(),
            suffix: Trie::default(),
            suffix_ic: Trie::default(),
            present: Vec::new(),
            scan: Vec::new(),
            ranges: HashMap::default(),
            range_depths: 0,
            range_counts: HashMap::new(),
        }
    }
}

/// Maps a finite `f64` to a `u64` with the same order (`-0.0` and `0.0` map alike).
fn order_key(x: f64) -> u64 {
    let bits = if x == 0.0 { 0 } else { x.to_bits() };
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// A numeric range as an inclusive interval of [`order_key`]s, `None` if empty.
fn range_keys(r: &NumericRange) -> Option<(u64, u64)> {
    let lo = match r.lower {
        None => 0,
        Some(b) if b.inclusive => order_key(b.value),
        Some(b) => order_key(b.value).checked_add(1)?,
    };
    let hi = match r.upper {
        None => u64::MAX,
        Some(b) if b.inclusive => order_key(b.value),
        Some(b) => order_key(b.value).checked_sub(1)?,
    };
    (lo <= hi).then_some((lo, hi))
}

/// Calls `f(depth, prefix)` for the aligned power-of-two blocks that exactly cover `[lo, hi]`
/// (at most 128 of them): a block at depth `d` holds the keys whose top `d` bits are `prefix`.
fn dyadic_cover(lo: u64, hi: u64, mut f: impl FnMut(u8, u64)) {
    let (mut a, b) = (u128::from(lo), u128::from(hi));
    while a <= b {
        let mut k = if a == 0 {
            64
        } else {
            a.trailing_zeros().min(64)
        };
        while a + (1u128 << k) - 1 > b {
            k -= 1;
        }
        let depth = 64 - k;
        let prefix = if k == 64 { 0 } else { (a >> k) as u64 };
        f(depth as u8, prefix);
        a += 1u128 << k;
    }
}

/// The literal text a wildcard's matches must start or end with.
enum Affix {
    Prefix(String),
    Suffix(String),
}

/// The literal characters before a wildcard's first `*` (or, when there are none, after its
/// last): every string it matches has them as a prefix (suffix). `None` if both are empty.
fn wildcard_key(w: &Wildcard) -> Option<Affix> {
    let literal = |tokens: &mut dyn Iterator<Item = &WildcardToken>| -> String {
        tokens
            .map_while(|t| match t {
                WildcardToken::Char(c) => Some(*c),
                WildcardToken::Star => None,
            })
            .collect()
    };
    let prefix = literal(&mut w.tokens.iter());
    if !prefix.is_empty() {
        return Some(Affix::Prefix(prefix));
    }
    let suffix: String = literal(&mut w.tokens.iter().rev()).chars().rev().collect();
    (!suffix.is_empty()).then_some(Affix::Suffix(suffix))
}

fn number_key(x: f64) -> u64 {
    if x == 0.0 {
        0
    } else {
        x.to_bits()
    }
}

impl PathIndex {
    /// How good an anchor the matcher would be here: (rank, entries sharing its bucket); lower
    /// is better. Rank 0: hash lookup, 1: trie walk, 2: evaluated for every value of the path.
    fn cost(&self, m: &Matcher) -> (u8, usize) {
        let len = |v: Option<&Vec<u32>>| v.map_or(0, Vec::len);
        match m {
            Matcher::Exact(Literal::String(s)) => (0, len(self.strings.get(s.as_str()))),
            Matcher::Exact(Literal::Number(n)) => match n.as_f64() {
                Some(x) => (0, len(self.numbers.get(&number_key(x)))),
                None => (2, self.scan.len()),
            },
            Matcher::Exact(Literal::Bool(true)) => (0, self.trues.len()),
            Matcher::Exact(Literal::Bool(false)) => (0, self.falses.len()),
            Matcher::Exact(Literal::Null) => (0, self.nulls.len()),
            Matcher::EqualsIgnoreCase(s) => (0, len(self.ignore_case.get(s.as_str()))),
            Matcher::Prefix(p) => (1, self.prefix.count_at(p.bytes())),
            Matcher::PrefixIgnoreCase(p) => (1, self.prefix_ic.count_at(p.bytes())),
            Matcher::Suffix(p) => (1, self.suffix.count_at(p.bytes().rev())),
            Matcher::SuffixIgnoreCase(p) => (1, self.suffix_ic.count_at(p.bytes().rev())),
            Matcher::Numeric(r) => (
                1,
                range_keys(r).map_or(0, |k| self.range_counts.get(&k).copied().unwrap_or(0)),
            ),
            Matcher::Wildcard(w) => match wildcard_key(w) {
                Some(Affix::Prefix(p)) => (1, self.prefix.count_at(p.bytes())),
                Some(Affix::Suffix(p)) => (1, self.suffix.count_at(p.bytes().rev())),
                None => (2, self.scan.len() + self.present.len()),
            },
            _ => (2, self.scan.len() + self.present.len()),
        }
    }

    fn add(&mut self, cond: u32, m: &Matcher) {
        self.empty = false;
        match m {
            Matcher::Exact(Literal::String(s)) => {
                self.strings.entry(s.clone()).or_default().push(cond)
            }
            Matcher::Exact(Literal::Number(n)) => match n.as_f64() {
                Some(x) => self.numbers.entry(number_key(x)).or_default().push(cond),
                None => self.scan.push((cond, m.clone())),
            },
            Matcher::Exact(Literal::Bool(true)) => self.trues.push(cond),
            Matcher::Exact(Literal::Bool(false)) => self.falses.push(cond),
            Matcher::Exact(Literal::Null) => self.nulls.push(cond),
            Matcher::EqualsIgnoreCase(s) => {
                self.ignore_case.entry(s.clone()).or_default().push(cond)
            }
            Matcher::Prefix(p) => self.prefix.insert(p.bytes(), cond),
            Matcher::PrefixIgnoreCase(p) => self.prefix_ic.insert(p.bytes(), cond),
            Matcher::Suffix(p) => self.suffix.insert(p.bytes().rev(), cond),
            Matcher::SuffixIgnoreCase(p) => self.suffix_ic.insert(p.bytes().rev(), cond),
            Matcher::Exists(true) => self.present.push(cond),
            Matcher::Numeric(r) => {
                // An empty range never matches: nothing to register.
                if let Some((lo, hi)) = range_keys(r) {
                    *self.range_counts.entry((lo, hi)).or_default() += 1;
                    dyadic_cover(lo, hi, |depth, prefix| {
                        self.range_depths |= 1u128 << depth;
                        self.ranges.entry((depth, prefix)).or_default().push(cond);
                    });
                }
            }
            // A wildcard is found by its literal start (or end) and confirmed whole with the
            // rest of its sub-rule.
            Matcher::Wildcard(w) => match wildcard_key(w) {
                Some(Affix::Prefix(p)) => self.prefix.insert(p.bytes(), cond),
                Some(Affix::Suffix(p)) => self.suffix.insert(p.bytes().rev(), cond),
                None => self.scan.push((cond, m.clone())),
            },
            // Handled by the absent-field check.
            Matcher::Exists(false) => {}
            other => self.scan.push((cond, other.clone())),
        }
    }

    fn lookup(&self, value: &Scalar<'_>, hit: &mut impl FnMut(u32)) {
        if self.empty {
            return;
        }
        self.present.iter().for_each(|&c| hit(c));
        match value {
            Scalar::Str(s) => {
                if !self.strings.is_empty() {
                    if let Some(cs) = self.strings.get(s.as_ref()) {
                        cs.iter().for_each(|&c| hit(c));
                    }
                }
                self.prefix.walk(s.bytes(), hit);
                self.suffix.walk(s.bytes().rev(), hit);
                if !self.ignore_case.is_empty()
                    || !self.prefix_ic.is_empty()
                    || !self.suffix_ic.is_empty()
                {
                    let lower = lower(s);
                    if let Some(cs) = self.ignore_case.get(lower.as_ref()) {
                        cs.iter().for_each(|&c| hit(c));
                    }
                    self.prefix_ic.walk(lower.bytes(), hit);
                    self.suffix_ic.walk(lower.bytes().rev(), hit);
                }
            }
            Scalar::Num(n) => {
                if let Some(x) = n.as_f64() {
                    if let Some(cs) = self.numbers.get(&number_key(x)) {
                        cs.iter().for_each(|&c| hit(c));
                    }
                    if self.range_depths != 0 && x.is_finite() {
                        let key = order_key(x);
                        for depth in 0..=64u8 {
                            if self.range_depths & (1u128 << depth) == 0 {
                                continue;
                            }
                            let prefix = if depth == 0 { 0 } else { key >> (64 - depth) };
                            if let Some(cs) = self.ranges.get(&(depth, prefix)) {
                                cs.iter().for_each(|&c| hit(c));
                            }
                        }
                    }
                }
            }
            Scalar::Bool(true) => self.trues.iter().for_each(|&c| hit(c)),
            Scalar::Bool(false) => self.falses.iter().for_each(|&c| hit(c)),
            Scalar::Null => self.nulls.iter().for_each(|&c| hit(c)),
        }
        for (c, m) in &self.scan {
            if m.accepts_scalar(value) {
                hit(*c);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SubRule {
    rule: u32,
    branch: u32,
    /// The path id of each of the branch's conditions.
    paths: Box<[u32]>,
}

/// Many rules compiled into one matcher; answers exactly as each [`Pattern`] alone would.
///
/// ```
/// use outrider_runtime::pattern::RuleSet;
///
/// let mut rules = RuleSet::new();
/// rules.add_rule_json("ec2", r#"{"source": ["aws.ec2"]}"#)?;
/// rules.add_rule_json("prod", r#"{"detail": {"env": [{"prefix": "prod"}]}}"#)?;
/// let event = serde_json::json!({"source": "aws.ec2", "detail": {"env": "production"}});
/// assert_eq!(rules.matching_rules(&event), vec!["ec2".to_string(), "prod".to_string()]);
/// // From the event's text, without building a `serde_json::Value`:
/// let text = br#"{"source": "aws.ec2", "detail": {"env": "production", "n": [1, 2]}}"#;
/// assert_eq!(rules.matches_json_bytes(text).unwrap(), vec!["ec2", "prod"]);
/// # Ok::<(), outrider_runtime::pattern::PatternError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Option<(RuleId, Pattern)>>,
    by_id: HashMap<RuleId, usize>,
    subs: Vec<SubRule>,
    /// Every path a condition uses, numbered.
    path_ids: HashMap<String, u32>,
    /// The index of each path id.
    indexes: Vec<PathIndex>,
    /// The same paths, for the text scanner.
    trie: PathTrie,
    always: Vec<u32>,
    relevant: HashSet<String>,
}

impl RuleSet {
    /// An empty rule set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a rule, replacing any rule with the same id (replacing rebuilds the index, as
    /// [`RuleSet::remove_rule`] does).
    pub fn add_rule(&mut self, id: impl Into<RuleId>, pattern: Pattern) {
        let id = id.into();
        if self.by_id.contains_key(&id) {
            self.remove_rule(&id);
        }
        let slot = self.rules.len();
        self.index(slot, &pattern);
        self.by_id.insert(id.clone(), slot);
        self.rules.push(Some((id, pattern)));
    }

    /// Parses a pattern and adds it as a rule.
    pub fn add_rule_json(
        &mut self,
        id: impl Into<RuleId>,
        pattern: &str,
    ) -> Result<(), PatternError> {
        let p = Pattern::parse(pattern)?;
        self.add_rule(id, p);
        Ok(())
    }

    /// Removes a rule (and rebuilds the index); returns its pattern.
    pub fn remove_rule(&mut self, id: &str) -> Option<Pattern> {
        let slot = self.by_id.remove(id)?;
        let removed = self
            .rules
            .get_mut(slot)
            .and_then(Option::take)
            .map(|(_, p)| p);
        let rules: Vec<(RuleId, Pattern)> = std::mem::take(&mut self.rules)
            .into_iter()
            .flatten()
            .collect();
        *self = RuleSet::default();
        for (id, p) in rules {
            self.add_rule(id, p);
        }
        removed
    }

    fn path_id(&mut self, path: &str) -> u32 {
        if let Some(&id) = self.path_ids.get(path) {
            return id;
        }
        let id = self.indexes.len() as u32;
        self.indexes.push(PathIndex::default());
        self.path_ids.insert(path.to_owned(), id);
        self.trie.insert(path, id);
        add_path_prefixes(&mut self.relevant, path);
        id
    }

    fn index(&mut self, slot: usize, pattern: &Pattern) {
        for (b, branch) in pattern.branches().iter().enumerate() {
            let sub = self.subs.len() as u32;
            let paths = branch
                .conditions
                .iter()
                .map(|c| self.path_id(&c.path))
                .collect();
            self.subs.push(SubRule {
                rule: slot as u32,
                branch: b as u32,
                paths,
            });
            // The anchor must be satisfied by a present value whenever the branch holds.
            let anchor = branch
                .conditions
                .iter()
                .filter(|c| !c.allows_absent())
                .min_by_key(|c| self.anchor_cost(c));
            let anchor = anchor.and_then(|c| {
                let ix = self.path_ids.get(&c.path)?;
                Some((self.indexes.get_mut(*ix as usize)?, c))
            });
            match anchor {
                Some((ix, cond)) => {
                    for m in &cond.matchers {
                        ix.add(sub, m);
                    }
                }
                None => self.always.push(sub),
            }
        }
    }

    /// Orders anchor choices: indexed operators before listed ones, then by how many entries
    /// already share the condition's buckets (hash before trie on ties).
    fn anchor_cost(&self, cond: &Condition) -> (bool, usize, u8) {
        let empty = PathIndex::default();
        let ix = self
            .path_ids
            .get(&cond.path)
            .and_then(|&id| self.indexes.get(id as usize))
            .unwrap_or(&empty);
        let (rank, cost) = cond.matchers.iter().fold((0, 0), |(rank, total), m| {
            let (r, c) = ix.cost(m);
            (rank.max(r), total + c)
        });
        (rank >= 2, cost, rank)
    }

    /// Confirms candidate sub-rules (sorting them); the slots of the rules that match, ascending.
    fn confirm<'e, 'a: 'e>(
        &self,
        candidates: &mut Vec<u32>,
        leaves_of: impl Fn(&SubRule, usize, &Condition) -> &'e [Leaf<'a>],
    ) -> Vec<u32> {
        candidates.sort_unstable();
        candidates.dedup();
        let mut matched: Vec<u32> = Vec::new();
        for &sub in candidates.iter() {
            let Some(s) = self.subs.get(sub as usize) else {
                continue;
            };
            if matched.last() == Some(&s.rule) {
                continue;
            }
            let Some(Some((_, pattern))) = self.rules.get(s.rule as usize) else {
                continue;
            };
            if let Some(branch) = pattern.branches().get(s.branch as usize) {
                if branch_matches(branch, |i, c| leaves_of(s, i, c)) {
                    matched.push(s.rule);
                }
            }
        }
        // Sub-rules are numbered in the order of their rules' slots: already ascending.
        if !matched.is_sorted() {
            matched.sort_unstable();
            matched.dedup();
        }
        matched
    }

    fn id_of(&self, slot: u32) -> Option<&str> {
        self.rules
            .get(slot as usize)?
            .as_ref()
            .map(|(id, _)| id.as_str())
    }

    /// The slots of the rules a (parsed) event matches.
    fn matching_slots(&self, event: &Value) -> Vec<u32> {
        if !event.is_object() || self.by_id.is_empty() {
            return Vec::new();
        }
        let flat = FlatEvent::new(event, Some(&self.relevant));
        let mut candidates: Vec<u32> = self.always.clone();
        let mut hit = |sub: u32| candidates.push(sub);
        for (path, leaves) in &flat.fields {
            let Some(ix) = self
                .path_ids
                .get(path)
                .and_then(|&id| self.indexes.get(id as usize))
            else {
                continue;
            };
            for leaf in leaves {
                ix.lookup(&leaf.value, &mut hit);
            }
        }
        self.confirm(&mut candidates, |_, _, c| flat.get(&c.path))
    }

    /// The slots of the rules the event text matches, read by the scanner; `None` when the
    /// scanner leaves the text to serde_json (see `scan.rs`).
    fn matching_slots_text(&self, text: &str) -> Option<Vec<u32>> {
        if self.by_id.is_empty() {
            // Still the reference path's answer for invalid text: an error.
            return None;
        }
        let mut leaves = scan(text, &self.trie)?;
        // Grouped by path, in event order within a path.
        leaves.sort_by_key(|l| l.path);
        let leaves = leaves.as_slice();
        let mut candidates: Vec<u32> = self.always.clone();
        let mut hit = |sub: u32| candidates.push(sub);
        for leaf in leaves {
            if let Some(ix) = self.indexes.get(leaf.path as usize) {
                ix.lookup(&leaf.value, &mut hit);
            }
        }
        Some(self.confirm(&mut candidates, |s, i, _| {
            let Some(&path) = s.paths.get(i) else {
                return &[];
            };
            let from = leaves.partition_point(|l| l.path < path);
            let to = from + leaves[from..].partition_point(|l| l.path == path);
            &leaves[from..to]
        }))
    }

    /// The ids of the rules the event matches, in the order they were added (a replaced rule
    /// counts as added when it was replaced).
    pub fn matching_rules(&self, event: &Value) -> Vec<RuleId> {
        self.matching_slots(event)
            .into_iter()
            .filter_map(|slot| self.id_of(slot).map(str::to_owned))
            .collect()
    }

    /// Parses the event text, keeping only the fields some rule looks at, and returns the
    /// matching rules (as [`RuleSet::matches_json_bytes`] does, with owned ids).
    pub fn matching_rules_json(&self, event: &str) -> Result<Vec<RuleId>, serde_json::Error> {
        let slots = match self.matching_slots_text(event) {
            Some(slots) => slots,
            None => self.matching_slots(&super::prune::parse_pruned(event, &self.relevant)?),
        };
        Ok(slots
            .into_iter()
            .filter_map(|slot| self.id_of(slot).map(str::to_owned))
            .collect())
    }

    /// The ids of the rules the event's JSON text matches, in the order they were added: the
    /// same answers (and the same errors) as parsing the text with serde_json and calling
    /// [`RuleSet::matching_rules`], read in one pass over the text that descends only into the
    /// fields some rule looks at and borrows their values from the text. Unusual text (a
    /// repeated key on a path rules look at, deep nesting, a syntax error, invalid UTF-8) is
    /// handed to serde_json.
    pub fn matches_json_bytes(&self, event: &[u8]) -> Result<Vec<&str>, serde_json::Error> {
        let fast = std::str::from_utf8(event)
            .ok()
            .and_then(|text| self.matching_slots_text(text));
        let slots = match fast {
            Some(slots) => slots,
            None => self.matching_slots(&super::prune::parse_pruned_slice(event, &self.relevant)?),
        };
        Ok(slots
            .into_iter()
            .filter_map(|slot| self.id_of(slot))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::RuleSet;

    const BASES: &[&str] = &[
        r#"{"source": "app.1", "detail": {"a": [1, {"b": "x\"y"}], "n": -1.5e3, "s": "\u00e9\ud83d\ude00"}, "z": [true, false, null, {}, []]}"#,
        r#"{"detail": {"a": {"b": "xy"}, "a.b": "XY", "n": 18446744073709551616}, "source": ["app.2", "app.1"]}"#,
        r#" { "source" : "app.1" , "detail" : { "n" : 0 , "s" : "x\/y\\" } } "#,
    ];

    fn rules() -> RuleSet {
        let mut set = RuleSet::new();
        for (id, p) in [
            ("src", r#"{"source": ["app.1"]}"#),
            ("ab", r#"{"detail": {"a": {"b": [{"prefix": "x"}]}}}"#),
            ("n", r#"{"detail": {"n": [{"numeric": ["<", 0]}]}}"#),
            (
                "s",
                r#"{"detail": {"s": [{"exists": true}], "a.b": [{"exists": false}]}}"#,
            ),
            ("any", r#"{"detail": {"a": [1]}}"#),
        ] {
            set.add_rule_json(id, p).unwrap();
        }
        set
    }

    /// The answer of the reference path alone (serde_json, pruned), errors included.
    fn reference(set: &RuleSet, text: &[u8]) -> Result<Vec<String>, ()> {
        let value = crate::pattern::prune::parse_pruned_slice(text, &set.relevant).map_err(drop)?;
        Ok(set.matching_rules(&value))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Damaged text: whenever the scanner answers, the reference path gives the same answer
        /// (and it gives an error exactly when the reference does).
        #[test]
        fn scanner_agrees_with_serde_json_on_damaged_text(
            base in 0..BASES.len(),
            edits in proptest::collection::vec(
                (0..4u8, any::<proptest::sample::Index>(), proptest::sample::select(
                    b"{}[]\":,\\ .-+eE0123456789tfnu\xc3\xa9\xff\x01".to_vec())),
                1..4),
        ) {
            let set = rules();
            let mut text = BASES[base].as_bytes().to_vec();
            for (kind, at, byte) in edits {
                let i = at.index(text.len() + 1);
                match kind {
                    0 => text.insert(i, byte),
                    1 if i < text.len() => { text.remove(i); }
                    2 if i < text.len() => text[i] = byte,
                    _ => text.truncate(i),
                }
            }
            let fast = set
                .matches_json_bytes(&text)
                .map(|ids| ids.into_iter().map(str::to_owned).collect::<Vec<_>>())
                .map_err(drop);
            prop_assert_eq!(fast, reference(&set, &text), "{}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn bases_match_through_the_scanner() {
        let set = rules();
        for base in BASES {
            let text = std::str::from_utf8(base.as_bytes()).unwrap();
            assert!(set.matching_slots_text(text).is_some(), "{base}");
            assert_eq!(
                set.matches_json_bytes(base.as_bytes()).unwrap(),
                reference(&set, base.as_bytes()).unwrap()
            );
        }
    }
}
