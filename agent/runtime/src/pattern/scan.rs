//! Matching event text without building a `serde_json::Value`: one pass over the bytes that
//! descends only into the fields some rule looks at and hands their scalar values, borrowed from
//! the text, to the [`RuleSet`](super::RuleSet)'s index.
//!
//! The scanner validates everything it reads (the JSON grammar, string escapes and surrogates,
//! control characters, number syntax, the end of the text), including the subtrees it skips.
//! Whenever it meets anything it does not handle exactly as the reference path does — a syntax
//! error, a duplicate key among the fields rules look at (the last one wins there), a number it
//! would have to convert in a way it cannot check, nesting deeper than [`MAX_DEPTH`], a top-level
//! value that is not an object — it gives up (`None`), and the caller matches through
//! serde_json (`prune::parse_pruned` and `FlatEvent`), which decides the answer or the error. So
//! the fast path only ever answers when the reference path would give the same answer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::Number;

use super::matcher::{Leaf, Scalar};

/// Beyond this nesting the scanner gives up (serde_json's own recursion limit is 128).
pub(crate) const MAX_DEPTH: usize = 100;

/// "No condition path here".
const NONE: u32 = u32::MAX;

/// Children held in a list up to this many; in a hash map beyond.
const SMALL: usize = 8;

/// A fast non-cryptographic hasher (FxHash's mixing, 8 bytes at a time) for the maps looked up
/// with event values. Only the rules' keys are inserted, so event text cannot build collisions.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

/// Builds [`FxHasher`]s.
pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

/// A segment's first eight bytes (zero-padded) and its length: compared before the bytes.
#[inline]
fn head(seg: &[u8]) -> (u64, usize) {
    let mut word = 0u64;
    for (k, &b) in seg.iter().take(8).enumerate() {
        word |= u64::from(b) << (8 * k);
    }
    (word, seg.len())
}

/// A child in a node's list: the segment's [`head`], the segment, the child's node.
type SmallChild = ((u64, usize), Box<[u8]>, u32);

#[derive(Debug, Clone)]
struct Node {
    small: Vec<SmallChild>,
    map: HashMap<Box<[u8]>, u32, FxBuild>,
    /// The condition path ending here, or [`NONE`] for a path that only leads to others.
    cond: u32,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            small: Vec::new(),
            map: HashMap::default(),
            cond: NONE,
        }
    }
}

/// The field paths rules look at, as a trie of `.`-separated segments: node 0 is the event,
/// every other node a path that a condition uses or leads to one.
#[derive(Debug, Clone)]
pub(crate) struct PathTrie {
    nodes: Vec<Node>,
}

impl Default for PathTrie {
    fn default() -> Self {
        PathTrie {
            nodes: vec![Node::default()],
        }
    }
}

impl PathTrie {
    /// Registers a condition path under its id.
    pub fn insert(&mut self, path: &str, id: u32) {
        let mut at = 0u32;
        for seg in path.split('.') {
            at = match self.child(at, seg.as_bytes()) {
                Some(next) => next,
                None => {
                    let next = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    if let Some(node) = self.nodes.get_mut(at as usize) {
                        if node.small.len() < SMALL && node.map.is_empty() {
                            node.small
                                .push((head(seg.as_bytes()), seg.as_bytes().into(), next));
                        } else {
                            for (_, k, v) in node.small.drain(..) {
                                node.map.insert(k, v);
                            }
                            node.map.insert(seg.as_bytes().into(), next);
                        }
                    }
                    next
                }
            };
        }
        if let Some(node) = self.nodes.get_mut(at as usize) {
            node.cond = id;
        }
    }

    #[inline]
    fn child(&self, at: u32, seg: &[u8]) -> Option<u32> {
        let node = self.nodes.get(at as usize)?;
        if node.map.is_empty() {
            let h = head(seg);
            node.small
                .iter()
                .find(|(kh, k, _)| *kh == h && (h.1 <= 8 || k.as_ref() == seg))
                .map(|&(_, _, n)| n)
        } else {
            node.map.get(seg).copied()
        }
    }

    /// The node of `key` (which may hold dots: `{"a.b": 1}` is at path `a.b`) under `at`.
    #[inline]
    fn follow(&self, at: u32, key: &[u8]) -> Option<u32> {
        let node = self.nodes.get(at as usize)?;
        if !node.map.is_empty() {
            let mut node = at;
            for seg in key.split(|&b| b == b'.') {
                node = self.child(node, seg)?;
            }
            return Some(node);
        }
        // Segments hold no dots: a child either is the whole key or, followed by a dot, starts it.
        let h = head(key);
        for (kh, seg, next) in &node.small {
            if *kh == h && (h.1 <= 8 || seg.as_ref() == key) {
                return Some(*next);
            }
            if key.get(seg.len()) == Some(&b'.') && key.starts_with(seg) {
                return self.follow(*next, key.get(seg.len() + 1..)?);
            }
        }
        None
    }

    fn cond(&self, node: u32) -> u32 {
        self.nodes.get(node as usize).map_or(NONE, |n| n.cond)
    }

    fn has_children(&self, node: u32) -> bool {
        self.nodes
            .get(node as usize)
            .is_some_and(|n| !n.small.is_empty() || !n.map.is_empty())
    }
}

/// Scans event text; the leaves at condition paths (with `path` = the condition path id), or
/// `None` when the reference path must decide.
pub(crate) fn scan<'a>(text: &'a str, trie: &PathTrie) -> Option<Vec<Leaf<'a>>> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        trie,
        leaves: Vec::new(),
        arrays: Vec::new(),
        next_array: 0,
        seen: Vec::new(),
    };
    s.ws();
    if s.peek() != Some(b'{') {
        return None;
    }
    s.value(0, 0)?;
    s.ws();
    if s.i != s.b.len() {
        return None;
    }
    Some(s.leaves)
}

struct Scanner<'t, 'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    trie: &'t PathTrie,
    leaves: Vec<Leaf<'a>>,
    /// The array elements around the current value.
    arrays: Vec<(u32, u32)>,
    next_array: u32,
    /// The keys (their trie nodes) of the open objects, to refuse duplicates.
    seen: Vec<u32>,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `w` equal to zero: the lowest flagged byte is exact (higher ones may not be).
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

impl<'a> Scanner<'_, 'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Option<()> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string starting at the current `"`: the byte range of its body and whether it holds
    /// escapes (all valid, surrogates paired).
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.expect(b'"')?;
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let mut escaped = false;
        loop {
            // Eight bytes at a time to the next `"`, `\` or control character.
            while let Some(chunk) = b.get(i..i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let w = u64::from_le_bytes(word);
                let special = zero_bytes(w ^ (ONES * u64::from(b'"')))
                    | zero_bytes(w ^ (ONES * u64::from(b'\\')))
                    | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
                if special != 0 {
                    i += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match *b.get(i)? {
                b'"' => {
                    self.i = i + 1;
                    return Some((start, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i = i + 1;
                    self.escape()?;
                    i = self.i;
                }
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }

    /// Checks the escape after a `\` (surrogates must pair).
    fn escape(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
            b'u' => {
                self.i += 1;
                let unit = self.hex4()?;
                if (0xDC00..0xE000).contains(&unit) {
                    return None;
                }
                if (0xD800..0xDC00).contains(&unit) {
                    self.expect(b'\\')?;
                    self.expect(b'u')?;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                }
            }
            _ => return None,
        }
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut unit = 0u32;
        for &d in digits {
            unit = unit * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(unit)
    }

    /// A number's byte range, and whether it is a plain unsigned integer of at most 18 digits.
    fn number(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.i;
        let mut plain = true;
        if self.peek() == Some(b'-') {
            plain = false;
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            plain = false;
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            plain = false;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some((start, self.i, plain && self.i - start <= 18))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// Reads a value no rule looks at, checking its syntax.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    fn leaf(&mut self, cond: u32, value: Scalar<'a>) {
        self.leaves.push(Leaf {
            path: cond,
            value,
            arrays: self.arrays.clone(),
        });
    }

    /// Reads a value at a path some rule looks at (trie node `node`).
    fn value(&mut self, node: u32, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let cond = self.trie.cond(node);
        match self.peek()? {
            b'{' if !self.trie.has_children(node) => self.skip(depth),
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Some(());
                }
                let mark = self.seen.len();
                loop {
                    self.ws();
                    let (start, end, escaped) = self.string()?;
                    let child = if escaped {
                        let key = unescape(self.text.get(start..end)?)?;
                        self.trie.follow(node, key.as_bytes())
                    } else {
                        self.trie.follow(node, self.b.get(start..end)?)
                    };
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    match child {
                        Some(child) => {
                            // A repeated key: serde_json keeps the last value; leave it to it.
                            if self.seen.get(mark..)?.contains(&child) {
                                return None;
                            }
                            self.seen.push(child);
                            self.value(child, depth + 1)?;
                        }
                        None => self.skip(depth + 1)?,
                    }
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            self.seen.truncate(mark);
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                let id = self.next_array;
                self.next_array = self.next_array.wrapping_add(1);
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Some(());
                }
                let mut index = 0u32;
                loop {
                    self.ws();
                    self.arrays.push((id, index));
                    self.value(node, depth + 1)?;
                    self.arrays.pop();
                    index = index.wrapping_add(1);
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ if cond == NONE => self.skip(depth),
            b'"' => {
                let (start, end, escaped) = self.string()?;
                let body = self.text.get(start..end)?;
                let s = if escaped {
                    Cow::Owned(unescape(body)?)
                } else {
                    Cow::Borrowed(body)
                };
                self.leaf(cond, Scalar::Str(s));
                Some(())
            }
            b'-' | b'0'..=b'9' => {
                let (start, end, plain) = self.number()?;
                let digits = self.text.get(start..end)?;
                let n = if plain {
                    Number::from(digits.parse::<u64>().ok()?)
                } else {
                    // serde_json's own conversion (integers, then f64 its way); out of range
                    // is an error there, so the reference path must decide.
                    serde_json::from_str::<Number>(digits).ok()?
                };
                self.leaf(cond, Scalar::Num(n));
                Some(())
            }
            b't' => {
                self.literal(b"true")?;
                self.leaf(cond, Scalar::Bool(true));
                Some(())
            }
            b'f' => {
                self.literal(b"false")?;
                self.leaf(cond, Scalar::Bool(false));
                Some(())
            }
            b'n' => {
                self.literal(b"null")?;
                self.leaf(cond, Scalar::Null);
                Some(())
            }
            _ => None,
        }
    }
}

/// Decodes the escapes of a string body that [`Scanner::string`] accepted.
fn unescape(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let unit = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&unit) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let low = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?
                } else {
                    char::from_u32(unit)?
                }
            }
            _ => return None,
        };
        out.push(decoded);
    }
    Some(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut unit = 0u32;
    for _ in 0..4 {
        unit = unit * 16 + chars.next()?.to_digit(16)?;
    }
    Some(unit)
}
