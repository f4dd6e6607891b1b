//! Evaluating a pattern against one event: flattening the event into dotted paths and leaf
//! values, testing each [`Matcher`] on a value, and solving a [`Branch`] under EventBridge's
//! array-consistency rule.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde_json::{Number, Value};

use super::ast::{
    AnythingBut, Branch, Cidr, Condition, Literal, Matcher, NumericRange, Wildcard, WildcardToken,
};

/// Beyond this depth an event's values are ignored (treated as absent) instead of recursing.
pub const MAX_EVENT_DEPTH: usize = 256;

/// Which element of which array (numbered in event order) a leaf sits in.
pub(crate) type Membership = Vec<(u32, u32)>;

/// A scalar value of an event: what conditions are tested on. Strings are borrowed from the
/// event (its `Value` or its text) unless they had to be unescaped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    Bool(bool),
    Null,
}

impl<'a> Scalar<'a> {
    /// The scalar of a JSON value; `None` for arrays and objects.
    pub fn of(value: &'a Value) -> Option<Scalar<'a>> {
        Some(match value {
            Value::String(s) => Scalar::Str(Cow::Borrowed(s.as_str())),
            Value::Number(n) => Scalar::Num(n.clone()),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Null => Scalar::Null,
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Num(n) => n.as_f64(),
            _ => None,
        }
    }
}

/// A scalar value of the event (string, number, bool or null) and the array elements holding it.
#[derive(Debug)]
pub(crate) struct Leaf<'a> {
    /// The id of the leaf's path where the caller numbers paths (a `RuleSet`); 0 otherwise.
    pub path: u32,
    pub value: Scalar<'a>,
    pub arrays: Membership,
}

/// An event flattened to dotted paths. Empty arrays and objects contribute no leaves.
#[derive(Debug, Default)]
pub(crate) struct FlatEvent<'a> {
    pub fields: HashMap<String, Vec<Leaf<'a>>>,
}

impl<'a> FlatEvent<'a> {
    /// Flattens an event; a non-object event has no fields. With `relevant`, only paths in it
    /// (and below them) are kept: pass every path a pattern uses and each of its `.`-prefixes.
    pub fn new(event: &'a Value, relevant: Option<&HashSet<String>>) -> Self {
        let mut flat = FlatEvent::default();
        if let Value::Object(map) = event {
            let mut path = String::new();
            let mut arrays = Vec::new();
            let mut next_array = 0u32;
            for (k, v) in map {
                path.clear();
                path.push_str(k);
                if relevant.is_none_or(|r| r.contains(path.as_str())) {
                    flat.walk(v, &mut path, &mut arrays, &mut next_array, 1, relevant);
                }
            }
        }
        flat
    }

    fn walk(
        &mut self,
        value: &'a Value,
        path: &mut String,
        arrays: &mut Membership,
        next_array: &mut u32,
        depth: usize,
        relevant: Option<&HashSet<String>>,
    ) {
        if depth > MAX_EVENT_DEPTH {
            return;
        }
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    if relevant.is_none_or(|r| r.contains(path.as_str())) {
                        self.walk(v, path, arrays, next_array, depth + 1, relevant);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                let id = *next_array;
                *next_array = next_array.wrapping_add(1);
                for (i, item) in items.iter().enumerate() {
                    arrays.push((id, i as u32));
                    self.walk(item, path, arrays, next_array, depth + 1, relevant);
                    arrays.pop();
                }
            }
            scalar => {
                if let Some(value) = Scalar::of(scalar) {
                    self.fields.entry(path.clone()).or_default().push(Leaf {
                        path: 0,
                        value,
                        arrays: arrays.clone(),
                    });
                }
            }
        }
    }

    /// The leaves at a path (empty if absent).
    pub fn get(&self, path: &str) -> &[Leaf<'a>] {
        self.fields.get(path).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Numeric equality: exact for two integers, otherwise as `f64`.
pub(crate) fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Typed equality of a pattern literal and an event value.
pub(crate) fn literal_equals(lit: &Literal, value: &Scalar<'_>) -> bool {
    match (lit, value) {
        (Literal::String(a), Scalar::Str(b)) => a.as_str() == b.as_ref(),
        (Literal::Number(a), Scalar::Num(b)) => numbers_equal(a, b),
        (Literal::Bool(a), Scalar::Bool(b)) => a == b,
        (Literal::Null, Scalar::Null) => true,
        _ => false,
    }
}

impl NumericRange {
    /// Whether `x` lies in the range.
    pub fn contains(&self, x: f64) -> bool {
        let above = match self.lower {
            None => true,
            Some(b) if b.inclusive => x >= b.value,
            Some(b) => x > b.value,
        };
        let below = match self.upper {
            None => true,
            Some(b) if b.inclusive => x <= b.value,
            Some(b) => x < b.value,
        };
        above && below
    }
}

impl Cidr {
    /// Whether `addr` is inside the network (same family only).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let bits = u32::from(self.prefix_len);
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                (u32::from(net) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                (u128::from(net) & mask) == (u128::from(a) & mask)
            }
            _ => false,
        }
    }
}

impl Wildcard {
    /// Whether the whole of `s` matches (`*` is zero or more characters).
    pub fn matches(&self, s: &str) -> bool {
        let text: Vec<char> = s.chars().collect();
        let toks = &self.tokens;
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match toks.get(p) {
                Some(WildcardToken::Star) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(WildcardToken::Char(c)) if *c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        toks[p..].iter().all(|k| matches!(k, WildcardToken::Star))
    }
}

/// `s.to_lowercase()`, without allocating when that changes nothing (ASCII without capitals).
pub(crate) fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

impl Matcher {
    /// Whether a present leaf value satisfies this matcher (`exists: false` never does).
    pub fn accepts(&self, value: &Value) -> bool {
        match Scalar::of(value) {
            Some(scalar) => self.accepts_scalar(&scalar),
            // Arrays and objects are not leaves; as values they are present and equal to no
            // literal, string or number.
            None => matches!(self, Matcher::Exists(true) | Matcher::AnythingBut(_)),
        }
    }

    /// [`Matcher::accepts`] on a scalar.
    pub(crate) fn accepts_scalar(&self, value: &Scalar<'_>) -> bool {
        let s = value.as_str();
        match self {
            Matcher::Exact(lit) => literal_equals(lit, value),
            Matcher::Prefix(p) => s.is_some_and(|s| s.starts_with(p.as_str())),
            Matcher::Suffix(p) => s.is_some_and(|s| s.ends_with(p.as_str())),
            Matcher::PrefixIgnoreCase(p) => s.is_some_and(|s| lower(s).starts_with(p.as_str())),
            Matcher::SuffixIgnoreCase(p) => s.is_some_and(|s| lower(s).ends_with(p.as_str())),
            Matcher::EqualsIgnoreCase(p) => s.is_some_and(|s| lower(s) == p.as_str()),
            Matcher::Wildcard(w) => s.is_some_and(|s| w.matches(s)),
            Matcher::Numeric(r) => value.as_f64().is_some_and(|x| r.contains(x)),
            Matcher::Exists(present) => *present,
            Matcher::Cidr(c) => s
                .and_then(|s| s.parse::<IpAddr>().ok())
                .is_some_and(|a| c.contains(a)),
            Matcher::AnythingBut(ab) => !match ab {
                AnythingBut::Values(lits) => lits.iter().any(|l| literal_equals(l, value)),
                AnythingBut::Prefix(ps) => {
                    s.is_some_and(|s| ps.iter().any(|p| s.starts_with(p.as_str())))
                }
                AnythingBut::Suffix(ps) => {
                    s.is_some_and(|s| ps.iter().any(|p| s.ends_with(p.as_str())))
                }
                AnythingBut::EqualsIgnoreCase(ps) => s.is_some_and(|s| {
                    let lower = lower(s);
                    ps.iter().any(|p| p.as_str() == lower)
                }),
                AnythingBut::Wildcard(ws) => s.is_some_and(|s| ws.iter().any(|w| w.matches(s))),
            },
        }
    }
}

impl Condition {
    /// Whether any matcher accepts `value`.
    pub fn accepts(&self, value: &Value) -> bool {
        self.matchers.iter().any(|m| m.accepts(value))
    }

    /// [`Condition::accepts`] on a scalar.
    pub(crate) fn accepts_scalar(&self, value: &Scalar<'_>) -> bool {
        self.matchers.iter().any(|m| m.accepts_scalar(value))
    }
}

/// Adds a path and each of its `.`-prefixes (`a.b.c` → `a`, `a.b`, `a.b.c`) to `set`: the event
/// paths that can lead to it.
pub(crate) fn add_path_prefixes(set: &mut HashSet<String>, path: &str) {
    for (i, c) in path.char_indices() {
        if c == '.' {
            set.insert(path[..i].to_owned());
        }
    }
    set.insert(path.to_owned());
}

/// Whether two leaves can come from the same event element: no array in common at different
/// indexes.
pub(crate) fn compatible(context: &[(u32, u32)], arrays: &[(u32, u32)]) -> bool {
    arrays
        .iter()
        .all(|(a, i)| context.iter().all(|(b, j)| a != b || i == j))
}

/// Whether a branch holds for an event: each condition is satisfied by a value, and all chosen
/// values are consistent (values from objects in one array come from the same element). A
/// condition with `exists: false` may instead hold by absence: no value of its field is
/// consistent with the values chosen for the other conditions (so within an array of objects,
/// "absent" means absent from the element the other conditions matched in; outside arrays it
/// means absent from the event).
pub(crate) fn branch_matches<'e, 'a: 'e>(
    branch: &Branch,
    leaves_of: impl Fn(usize, &Condition) -> &'e [Leaf<'a>],
) -> bool {
    // First without allocating: when no value of the branch's fields sits in an array, the
    // conditions are independent, and absence is global.
    let mut constrained = false;
    let mut holds = true;
    for (i, cond) in branch.conditions.iter().enumerate() {
        let all = leaves_of(i, cond);
        let accepted = all.iter().any(|l| cond.accepts_scalar(&l.value));
        if !accepted && !cond.allows_absent() {
            return false;
        }
        constrained |= all.iter().any(|l| !l.arrays.is_empty());
        holds &= accepted || all.is_empty();
    }
    if !constrained {
        return holds;
    }
    // Conditions that need a value first, then those that may hold by absence.
    let mut steps: Vec<Step<'e, 'a>> = Vec::with_capacity(branch.conditions.len());
    for (i, cond) in branch.conditions.iter().enumerate() {
        let all = leaves_of(i, cond);
        let accepted: Vec<&'e Leaf<'a>> = all
            .iter()
            .filter(|l| cond.accepts_scalar(&l.value))
            .collect();
        steps.push(Step {
            accepted,
            all: if cond.allows_absent() {
                Some(all)
            } else {
                None
            },
        });
    }
    steps.sort_by_key(|s| s.all.is_some());
    // later[i]: the arrays that can constrain the search after step i (leaves of later steps,
    // and every leaf an absence check will look at); leaves that agree on them are
    // interchangeable.
    let mut absent_arrays: HashSet<u32> = HashSet::new();
    for step in &steps {
        for leaf in step.all.unwrap_or(&[]) {
            absent_arrays.extend(leaf.arrays.iter().map(|&(a, _)| a));
        }
    }
    let mut later: Vec<HashSet<u32>> = vec![HashSet::new(); steps.len()];
    let mut acc = absent_arrays;
    for i in (0..steps.len()).rev() {
        later[i] = acc.clone();
        for leaf in &steps[i].accepted {
            acc.extend(leaf.arrays.iter().map(|&(a, _)| a));
        }
    }
    let mut search = Search {
        steps: &steps,
        later: &later,
        context: Vec::new(),
        deferred: Vec::new(),
    };
    search.solve(0)
}

struct Step<'e, 'a> {
    /// The leaves that satisfy the condition.
    accepted: Vec<&'e Leaf<'a>>,
    /// For a condition that may hold by absence, every leaf at its path.
    all: Option<&'e [Leaf<'a>]>,
}

struct Search<'s, 'e, 'a> {
    steps: &'s [Step<'e, 'a>],
    later: &'s [HashSet<u32>],
    /// The array elements the chosen leaves sit in.
    context: Membership,
    /// Steps holding by absence, checked once every value is chosen.
    deferred: Vec<usize>,
}

impl Search<'_, '_, '_> {
    fn solve(&mut self, i: usize) -> bool {
        let (Some(step), Some(relevant)) = (self.steps.get(i), self.later.get(i)) else {
            let context = &self.context;
            return self.deferred.iter().all(|&d| {
                self.steps
                    .get(d)
                    .and_then(|s| s.all)
                    .unwrap_or(&[])
                    .iter()
                    .all(|leaf| !compatible(context, &leaf.arrays))
            });
        };
        let mut failed: Vec<Membership> = Vec::new();
        for leaf in &step.accepted {
            if !compatible(&self.context, &leaf.arrays) {
                continue;
            }
            let signature: Membership = leaf
                .arrays
                .iter()
                .filter(|(a, _)| relevant.contains(a))
                .copied()
                .collect();
            if failed.contains(&signature) {
                continue;
            }
            let len = self.context.len();
            self.context.extend_from_slice(&leaf.arrays);
            if self.solve(i + 1) {
                return true;
            }
            self.context.truncate(len);
            failed.push(signature);
        }
        if step.all.is_some() {
            self.deferred.push(i);
            if self.solve(i + 1) {
                return true;
            }
            self.deferred.pop();
        }
        false
    }
}
