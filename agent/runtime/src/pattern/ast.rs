//! The typed form of an event pattern, produced by [`parse`](super::parse).
//!
//! A pattern is kept in disjunctive normal form: a list of [`Branch`]es (one per combination of
//! `$or` alternatives), each a conjunction of [`Condition`]s on flattened field paths. A
//! condition holds when any of its [`Matcher`]s accepts a value at its path (the array of a field
//! in the pattern is an OR).

use std::net::IpAddr;

/// A literal in a pattern: what an exact match or an `anything-but` compares against.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A JSON string, compared character by character.
    String(String),
    /// A JSON number, compared numerically (`3`, `3.0` and `300e-2` are equal).
    Number(serde_json::Number),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// One end of a numeric range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// The limit.
    pub value: f64,
    /// Whether the limit itself is inside the range (`>=`, `<=`, `=`).
    pub inclusive: bool,
}

/// A `{"numeric": [...]}` range; a missing bound is unbounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericRange {
    /// The lower bound (`>` / `>=` / `=`).
    pub lower: Option<Bound>,
    /// The upper bound (`<` / `<=` / `=`).
    pub upper: Option<Bound>,
}

/// An IPv4 or IPv6 network from a `{"cidr": "a.b.c.d/n"}` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address as written (host bits are ignored when matching).
    pub addr: IpAddr,
    /// The number of leading bits that must match.
    pub prefix_len: u8,
}

/// One element of a parsed wildcard pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WildcardToken {
    /// A literal character (including escaped `\*` and `\\`).
    Char(char),
    /// `*`: zero or more characters.
    Star,
}

/// A `{"wildcard": "..."}` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    /// The pattern as written.
    pub source: String,
    /// The pattern, unescaped.
    pub tokens: Vec<WildcardToken>,
}

/// What an `anything-but` excludes.
#[derive(Debug, Clone, PartialEq)]
pub enum AnythingBut {
    /// Any value except these strings or numbers.
    Values(Vec<Literal>),
    /// Any value that is not a string with one of these prefixes.
    Prefix(Vec<String>),
    /// Any value that is not a string with one of these suffixes.
    Suffix(Vec<String>),
    /// Any value that is not a string equal, ignoring case, to one of these (stored lower-cased).
    EqualsIgnoreCase(Vec<String>),
    /// Any value that is not a string matched by one of these wildcards.
    Wildcard(Vec<Wildcard>),
}

/// One element of a field's array in a pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// An exact value.
    Exact(Literal),
    /// A string starting with this.
    Prefix(String),
    /// A string starting with this, ignoring case (stored lower-cased).
    PrefixIgnoreCase(String),
    /// A string ending with this.
    Suffix(String),
    /// A string ending with this, ignoring case (stored lower-cased).
    SuffixIgnoreCase(String),
    /// A string equal to this, ignoring case (stored lower-cased).
    EqualsIgnoreCase(String),
    /// A string matching a wildcard pattern.
    Wildcard(Wildcard),
    /// A present value (including `null`) that is not excluded.
    AnythingBut(AnythingBut),
    /// A number in a range.
    Numeric(NumericRange),
    /// `exists: true` (a leaf value is present) or `exists: false` (no leaf value is present).
    Exists(bool),
    /// A string holding an IP address inside a network.
    Cidr(Cidr),
}

/// A field path and the matchers, any of which satisfies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The dotted path of the field (`detail.state`); pattern and event keys are joined with `.`.
    pub path: String,
    /// The alternatives.
    pub matchers: Vec<Matcher>,
}

impl Condition {
    /// Whether the condition also holds when the field is absent (it has `exists: false`).
    pub fn allows_absent(&self) -> bool {
        self.matchers
            .iter()
            .any(|m| matches!(m, Matcher::Exists(false)))
    }
}

/// A conjunction of conditions: one combination of `$or` alternatives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Branch {
    /// All of these must hold (with array consistency).
    pub conditions: Vec<Condition>,
}
