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
//! * other operators (`anything-but`, `wildcard`, `cidr`, `exists: true`): a list per path,
//!   evaluated on each value of that path only.
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

use super::ast::{Condition, Literal, Matcher, NumericRange};
use super::matcher::{add_path_prefixes, branch_matches, FlatEvent};
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
#[derive(Debug, Clone, Default)]
struct PathIndex {
    strings: HashMap<String, Vec<u32>>,
    numbers: HashMap<u64, Vec<u32>>,
    trues: Vec<u32>,
    falses: Vec<u32>,
    nulls: Vec<u32>,
    ignore_case: HashMap<String, Vec<u32>>,
    prefix: Trie,
    prefix_ic: Trie,
    suffix: Trie,
    suffix_ic: Trie,
    present: Vec<u32>,
    scan: Vec<(u32, Matcher)>,
    /// Numeric ranges, as dyadic intervals of [`order_key`]s: (depth, key prefix) → entries.
    ranges: HashMap<(u8, u64), Vec<u32>>,
    /// Bit d set: some range uses depth d.
    range_depths: u128,
    /// How many entries each distinct range has (for anchor costs).
    range_counts: HashMap<(u64, u64), usize>,
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
            _ => (2, self.scan.len() + self.present.len()),
        }
    }

    fn add(&mut self, cond: u32, m: &Matcher) {
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
            // Handled by the absent-field check.
            Matcher::Exists(false) => {}
            other => self.scan.push((cond, other.clone())),
        }
    }

    fn lookup(&self, value: &Value, hit: &mut impl FnMut(u32)) {
        self.present.iter().for_each(|&c| hit(c));
        match value {
            Value::String(s) => {
                if let Some(cs) = self.strings.get(s.as_str()) {
                    cs.iter().for_each(|&c| hit(c));
                }
                self.prefix.walk(s.bytes(), hit);
                self.suffix.walk(s.bytes().rev(), hit);
                if !self.ignore_case.is_empty()
                    || !self.prefix_ic.is_empty()
                    || !self.suffix_ic.is_empty()
                {
                    let lower = s.to_lowercase();
                    if let Some(cs) = self.ignore_case.get(lower.as_str()) {
                        cs.iter().for_each(|&c| hit(c));
                    }
                    self.prefix_ic.walk(lower.bytes(), hit);
                    self.suffix_ic.walk(lower.bytes().rev(), hit);
                }
            }
            Value::Number(n) => {
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
            Value::Bool(true) => self.trues.iter().for_each(|&c| hit(c)),
            Value::Bool(false) => self.falses.iter().for_each(|&c| hit(c)),
            Value::Null => self.nulls.iter().for_each(|&c| hit(c)),
            _ => {}
        }
        for (c, m) in &self.scan {
            if m.accepts(value) {
                hit(*c);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SubRule {
    rule: u32,
    branch: u32,
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
/// # Ok::<(), outrider_runtime::pattern::PatternError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Option<(RuleId, Pattern)>>,
    by_id: HashMap<RuleId, usize>,
    subs: Vec<SubRule>,
    paths: HashMap<String, PathIndex>,
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

    fn index(&mut self, slot: usize, pattern: &Pattern) {
        for (b, branch) in pattern.branches().iter().enumerate() {
            let sub = self.subs.len() as u32;
            self.subs.push(SubRule {
                rule: slot as u32,
                branch: b as u32,
            });
            for cond in &branch.conditions {
                add_path_prefixes(&mut self.relevant, &cond.path);
            }
            // The anchor must be satisfied by a present value whenever the branch holds.
            let anchor = branch
                .conditions
                .iter()
                .filter(|c| !c.allows_absent())
                .min_by_key(|c| self.anchor_cost(c));
            match anchor {
                Some(cond) => {
                    let ix = self.paths.entry(cond.path.clone()).or_default();
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
        let ix = self.paths.get(&cond.path).unwrap_or(&empty);
        let (rank, cost) = cond.matchers.iter().fold((0, 0), |(rank, total), m| {
            let (r, c) = ix.cost(m);
            (rank.max(r), total + c)
        });
        (rank >= 2, cost, rank)
    }

    /// The ids of the rules the event matches, in the order they were added (a replaced rule
    /// counts as added when it was replaced).
    pub fn matching_rules(&self, event: &Value) -> Vec<RuleId> {
        if !event.is_object() || self.by_id.is_empty() {
            return Vec::new();
        }
        let flat = FlatEvent::new(event, Some(&self.relevant));
        let mut candidates: Vec<u32> = self.always.clone();
        let mut hit = |sub: u32| candidates.push(sub);
        for (path, leaves) in &flat.fields {
            if let Some(ix) = self.paths.get(path) {
                for leaf in leaves {
                    ix.lookup(leaf.value, &mut hit);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut matched: Vec<u32> = Vec::new();
        for sub in candidates {
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
                if branch_matches(branch, &flat) {
                    matched.push(s.rule);
                }
            }
        }
        matched.sort_unstable();
        matched
            .into_iter()
            .filter_map(|slot| {
                self.rules
                    .get(slot as usize)?
                    .as_ref()
                    .map(|(id, _)| id.clone())
            })
            .collect()
    }

    /// Parses the event text, keeping only the fields some rule looks at, and returns the
    /// matching rules.
    pub fn matching_rules_json(&self, event: &str) -> Result<Vec<RuleId>, serde_json::Error> {
        let value = super::prune::parse_pruned(event, &self.relevant)?;
        Ok(self.matching_rules(&value))
    }
}
