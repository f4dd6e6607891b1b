//! Runs every EventBridge pattern case LocalStack recorded against AWS
//! (`shared/conformance/localstack/events/event_pattern_templates/`, read in place) and checks
//! match / no match / invalid, with AWS's exact error message where the snapshot has it.
//!
//! File names give the expected answer: `_NEG` = no match, `_EXC` = invalid pattern, otherwise a
//! match. `complex_multi_key_event*.json` is a plain-JSON duplicate-key case (last key wins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outrider_runtime::pattern::Pattern;
use serde_json::Value;

/// Cases that still fail, with the reason. Each must still fail (fixing one forces removing it).
const KNOWN_FAILING: &[(&str, &str /* reason */)] = &[];

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/localstack/events")
}

/// JSON5 as the cases use it (comments, trailing commas) → JSON.
fn json5_to_json(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut in_string = false;
    while i < chars.len() {
        let c = chars[i];
        if in_string {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == '"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
                i += 1;
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            ',' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                // A trailing comma may also be followed by a comment before the bracket.
                let rest: String = chars[j..].iter().collect();
                let next_significant = strip_leading_comments(&rest);
                if !(next_significant.starts_with('}') || next_significant.starts_with(']')) {
                    out.push(',');
                }
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("//") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return s;
        }
    }
}

#[derive(Debug, PartialEq)]
enum Expected {
    Match,
    NoMatch,
    Invalid(Option<String>),
}

#[derive(Debug)]
struct Case {
    name: String,
    pattern: String,
    event: Value,
    expected: Expected,
}

fn snapshot_messages(dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(dir.join("test_events_patterns.snapshot.json"))
        .expect("conformance snapshot test_events_patterns.snapshot.json must exist");
    let snap: Value = serde_json::from_str(&text).unwrap();
    let mut out = BTreeMap::new();
    for (key, entry) in snap.as_object().unwrap() {
        let Some(name) = key
            .strip_prefix("tests/aws/services/events/test_events_patterns.py::TestEventPattern::test_event_pattern[")
            .and_then(|s| s.strip_suffix(']'))
        else {
            continue;
        };
        if let Some(msg) = entry
            .pointer(&format!(
                "/recorded-content/{name}/exception_message/Error/Message"
            ))
            .and_then(Value::as_str)
        {
            out.insert(name.to_string(), msg.to_string());
        }
    }
    out
}

fn load_cases() -> Vec<Case> {
    let dir = conformance_dir();
    let templates = dir.join("event_pattern_templates");
    assert!(
        templates.is_dir(),
        "conformance data missing: {} (shared/ must sit beside the repository)",
        templates.display()
    );
    let messages = snapshot_messages(&dir);
    let mut cases = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&templates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(name) = file.strip_suffix(".json5") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_json::from_str(&json5_to_json(&text))
            .unwrap_or_else(|e| panic!("{file}: cannot read case: {e}"));
        let expected = if name.ends_with("_EXC") {
            Expected::Invalid(messages.get(name).cloned())
        } else if name.ends_with("_NEG") {
            Expected::NoMatch
        } else {
            Expected::Match
        };
        cases.push(Case {
            name: name.to_string(),
            pattern: serde_json::to_string(&doc["EventPattern"]).unwrap(),
            event: doc["Event"].clone(),
            expected,
        });
    }
    // The duplicate-key case is plain JSON and must be read as text (last duplicate wins).
    let event = std::fs::read_to_string(templates.join("complex_multi_key_event.json"))
        .expect("complex_multi_key_event.json must exist");
    let pattern = std::fs::read_to_string(templates.join("complex_multi_key_event_pattern.json"))
        .expect("complex_multi_key_event_pattern.json must exist");
    cases.push(Case {
        name: "complex_multi_key_event".to_string(),
        pattern,
        event: serde_json::from_str(&event).unwrap(),
        expected: Expected::Match,
    });
    cases
}

/// `Err(why)` when our answer differs from AWS's.
fn run_case(case: &Case) -> Result<(), String> {
    let parsed = Pattern::parse(&case.pattern);
    match (&case.expected, parsed) {
        (Expected::Invalid(msg), Err(e)) => match msg {
            Some(m) if *m != e.to_string() => {
                Err(format!("message {:?}, AWS says {m:?}", e.to_string()))
            }
            _ => Ok(()),
        },
        (Expected::Invalid(_), Ok(_)) => Err("accepted an invalid pattern".into()),
        (_, Err(e)) => Err(format!("rejected a valid pattern: {e}")),
        (expected, Ok(p)) => {
            let got = p.matches(&case.event);
            let from_text = p
                .matches_json(&case.event.to_string())
                .map_err(|e| e.to_string())?;
            if from_text != got {
                return Err(format!("matches_json = {from_text} but matches = {got}"));
            }
            if got == (*expected == Expected::Match) {
                Ok(())
            } else {
                Err(format!("matches = {got}, expected {expected:?}"))
            }
        }
    }
}

#[test]
fn every_recorded_aws_case_passes() {
    let cases = load_cases();
    assert!(
        cases.len() >= 155,
        "expected at least 155 cases, found {}",
        cases.len()
    );
    let mut unexpected = Vec::new();
    let mut passing = 0;
    for case in &cases {
        let known = KNOWN_FAILING.iter().find(|(n, _)| *n == case.name);
        match (run_case(case), known) {
            (Ok(()), None) => passing += 1,
            (Ok(()), Some(_)) => unexpected.push(format!(
                "{}: now passes, remove it from KNOWN_FAILING",
                case.name
            )),
            (Err(why), None) => unexpected.push(format!("{}: {why}", case.name)),
            (Err(_), Some(_)) => {}
        }
    }
    for (name, _) in KNOWN_FAILING {
        assert!(
            cases.iter().any(|c| c.name == *name),
            "KNOWN_FAILING lists unknown case {name}"
        );
    }
    eprintln!("conformance: {passing}/{} passing", cases.len());
    assert!(
        unexpected.is_empty(),
        "{} unexpected results:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

#[test]
fn every_exc_case_has_an_aws_message_checked() {
    // Guards against a silently weaker test: the snapshot has messages for the _EXC cases.
    let cases = load_cases();
    let missing: Vec<_> = cases
        .iter()
        .filter(|c| c.expected == Expected::Invalid(None))
        .map(|c| c.name.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "_EXC cases without a recorded message: {missing:?}"
    );
}
