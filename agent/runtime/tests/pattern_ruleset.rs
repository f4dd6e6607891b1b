//! `RuleSet` (many patterns in one index) must answer exactly as each `Pattern` alone: randomized
//! rules and events over a small vocabulary so that operators, arrays and `$or` collide often.

use outrider_runtime::pattern::{Pattern, RuleSet};
use serde_json::{json, Map, Value};

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const KEYS: &[&str] = &["a", "b", "c", "a.b"];

fn matcher(rng: &mut Rng) -> Value {
    let pool = [
        json!("x"),
        json!("xy"),
        json!("XY"),
        json!(""),
        json!(1),
        json!(2.0),
        json!(3),
        json!(true),
        json!(null),
        json!({"prefix": "x"}),
        json!({"prefix": ""}),
        json!({"suffix": "y"}),
        json!({"prefix": {"equals-ignore-case": "X"}}),
        json!({"suffix": {"equals-ignore-case": "Y"}}),
        json!({"equals-ignore-case": "xY"}),
        json!({"wildcard": "x*"}),
        json!({"wildcard": "*y"}),
        json!({"anything-but": "x"}),
        json!({"anything-but": [1, 2]}),
        json!({"anything-but": {"prefix": "x"}}),
        json!({"anything-but": {"suffix": ["y", "z"]}}),
        json!({"anything-but": {"equals-ignore-case": "XY"}}),
        json!({"anything-but": {"wildcard": "*y"}}),
        json!({"numeric": [">", 1]}),
        json!({"numeric": ["<=", 2]}),
        json!({"numeric": [">=", 1, "<", 3]}),
        json!({"numeric": ["=", 3]}),
        json!({"exists": true}),
        json!({"exists": false}),
        json!({"cidr": "10.0.0.0/8"}),
        json!({"cidr": "2001:db8::/32"}),
    ];
    rng.pick(&pool)
}

fn pattern_object(rng: &mut Rng, depth: usize) -> Value {
    let mut obj = Map::new();
    for _ in 0..1 + rng.below(3) {
        let key = rng.pick(KEYS).to_string();
        let roll = rng.below(10);
        let value = if depth < 2 && roll < 2 {
            pattern_object(rng, depth + 1)
        } else if depth < 2 && roll == 2 {
            obj.insert(
                "$or".into(),
                Value::Array(
                    (0..2 + rng.below(2))
                        .map(|_| pattern_object(rng, depth + 1))
                        .collect(),
                ),
            );
            continue;
        } else {
            Value::Array((0..1 + rng.below(3)).map(|_| matcher(rng)).collect())
        };
        obj.insert(key, value);
    }
    Value::Object(obj)
}

fn scalar(rng: &mut Rng) -> Value {
    let pool = [
        json!("x"),
        json!("xy"),
        json!("XY"),
        json!("zy"),
        json!(""),
        json!("10.1.2.3"),
        json!("2001:db8::1"),
        json!(1),
        json!(2),
        json!(3.0),
        json!(0.5),
        json!(true),
        json!(false),
        json!(null),
    ];
    rng.pick(&pool)
}

fn event_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(8) {
        0 | 1 if depth < 3 => event_object(rng, depth + 1),
        2 if depth < 3 => Value::Array(
            (0..rng.below(4))
                .map(|_| event_value(rng, depth + 1))
                .collect(),
        ),
        _ => scalar(rng),
    }
}

fn event_object(rng: &mut Rng, depth: usize) -> Value {
    let mut obj = Map::new();
    for _ in 0..rng.below(4) {
        obj.insert(rng.pick(KEYS).to_string(), event_value(rng, depth));
    }
    Value::Object(obj)
}

/// A flattened event value for the reference: path, value, the array elements holding it.
type RefLeaf = (String, Value, Vec<(usize, usize)>);

/// The reference semantics, by brute force: flatten the event (path, value, the array elements
/// holding it) and try every combination of one value per condition.
fn reference_matches(pattern: &Pattern, event: &Value) -> bool {
    fn flatten(
        v: &Value,
        path: &str,
        arrays: &mut Vec<(usize, usize)>,
        next: &mut usize,
        out: &mut Vec<RefLeaf>,
    ) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    flatten(c, &p, arrays, next, out);
                }
            }
            Value::Array(items) => {
                let id = *next;
                *next += 1;
                for (i, c) in items.iter().enumerate() {
                    arrays.push((id, i));
                    flatten(c, path, arrays, next, out);
                    arrays.pop();
                }
            }
            scalar => out.push((path.to_string(), scalar.clone(), arrays.clone())),
        }
    }
    if !event.is_object() {
        return false;
    }
    let mut leaves = Vec::new();
    flatten(event, "", &mut Vec::new(), &mut 0, &mut leaves);
    fn compatible(a: &[(usize, usize)], b: &[(usize, usize)]) -> bool {
        a.iter()
            .all(|(x, i)| b.iter().all(|(y, j)| x != y || i == j))
    }
    // Choose, for each condition, a value that satisfies it or (with `exists: false`) absence;
    // then the chosen values must be pairwise consistent, and no value at an absent field may
    // be consistent with all of them.
    fn search<'a>(
        conds: &[outrider_runtime::pattern::ast::Condition],
        leaves: &'a [RefLeaf],
        chosen: &mut Vec<&'a Vec<(usize, usize)>>,
        absent: &mut Vec<String>,
    ) -> bool {
        let Some((c, rest)) = conds.split_first() else {
            let consistent = chosen
                .iter()
                .all(|a| chosen.iter().all(|b| compatible(a, b)));
            return consistent
                && absent.iter().all(|path| {
                    leaves
                        .iter()
                        .filter(|(p, _, _)| p == path)
                        .all(|(_, _, arrays)| !chosen.iter().all(|c| compatible(c, arrays)))
                });
        };
        for (p, v, arrays) in leaves {
            if *p == c.path && c.accepts(v) {
                chosen.push(arrays);
                if search(rest, leaves, chosen, absent) {
                    return true;
                }
                chosen.pop();
            }
        }
        if c.allows_absent() {
            absent.push(c.path.clone());
            if search(rest, leaves, chosen, absent) {
                return true;
            }
            absent.pop();
        }
        false
    }
    pattern
        .branches()
        .iter()
        .any(|b| search(&b.conditions, &leaves, &mut Vec::new(), &mut Vec::new()))
}

#[test]
fn pattern_matches_the_brute_force_reference() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut checked = 0;
    let mut matched = 0;
    while checked < 20_000 {
        let Ok(p) = Pattern::from_value(&pattern_object(&mut rng, 0)) else {
            continue;
        };
        for _ in 0..5 {
            let event = event_object(&mut rng, 0);
            let expected = reference_matches(&p, &event);
            assert_eq!(p.matches(&event), expected, "pattern {p:?}\nevent {event}");
            assert_eq!(
                p.matches_json(&event.to_string()).unwrap(),
                expected,
                "{event}"
            );
            matched += usize::from(expected);
            checked += 1;
        }
    }
    assert!(
        matched > 1000,
        "the generator should produce matches: {matched}"
    );
}

#[test]
fn array_search_stays_fast_on_adversarial_events() {
    let many: Vec<Value> = (0..300).map(|i| json!(i)).collect();
    let objects: Vec<Value> = (0..300)
        .map(|i| {
            if i % 2 == 0 {
                json!({"p": 1})
            } else {
                json!({"q": 2})
            }
        })
        .collect();
    let event = json!({"x": many, "y": many, "z": many, "w": objects});
    let p = Pattern::parse(
        r#"{"x": [{"exists": true}], "y": [{"exists": true}], "z": [{"exists": true}], "w": {"p": [1], "q": [2]}}"#,
    )
    .unwrap();
    let start = std::time::Instant::now();
    assert!(!p.matches(&event));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

fn check(set: &RuleSet, rules: &[(String, Pattern)], event: &Value) {
    let expected: Vec<String> = rules
        .iter()
        .filter(|(_, p)| p.matches(event))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(set.matching_rules(event), expected, "event {event}");
    // Parsing the text while skipping fields no rule looks at gives the same answers.
    assert_eq!(
        set.matching_rules_json(&event.to_string()).unwrap(),
        expected,
        "event {event}"
    );
}

#[test]
fn ruleset_answers_exactly_as_each_pattern_alone() {
    for seed in 1..=6u64 {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let mut rules = Vec::new();
        let mut set = RuleSet::new();
        while rules.len() < 150 {
            let value = pattern_object(&mut rng, 0);
            let Ok(p) = Pattern::from_value(&value) else {
                continue;
            };
            let id = format!("r{}", rules.len());
            set.add_rule(id.clone(), p.clone());
            rules.push((id, p));
        }
        let mut matched = 0usize;
        for _ in 0..400 {
            let event = event_object(&mut rng, 0);
            matched += rules.iter().filter(|(_, p)| p.matches(&event)).count();
            check(&set, &rules, &event);
        }
        assert!(
            matched > 100,
            "the generator should produce matches (seed {seed}: {matched})"
        );
        // Removing rules keeps the answers exact.
        for i in (0..rules.len()).step_by(3).rev() {
            let (id, _) = rules.remove(i);
            assert!(set.remove_rule(&id).is_some());
        }
        assert_eq!(set.len(), rules.len());
        for _ in 0..100 {
            let event = event_object(&mut rng, 0);
            check(&set, &rules, &event);
        }
    }
}

#[test]
fn replacing_a_rule_and_empty_patterns() {
    let mut set = RuleSet::new();
    set.add_rule_json("all", "{}").unwrap();
    set.add_rule_json("r", r#"{"a": ["x"]}"#).unwrap();
    assert_eq!(set.matching_rules(&json!({"a": "x"})), vec!["all", "r"]);
    set.add_rule_json("r", r#"{"a": ["y"]}"#).unwrap();
    assert_eq!(set.matching_rules(&json!({"a": "x"})), vec!["all"]);
    assert_eq!(set.matching_rules(&json!({"a": "y"})), vec!["all", "r"]);
    assert_eq!(set.len(), 2);
    assert!(set.add_rule_json("bad", r#"{"a": "x"}"#).is_err());
    assert!(set.matching_rules(&json!([1])).is_empty());
}

#[test]
fn many_exact_and_prefix_rules_only_return_their_matches() {
    let mut set = RuleSet::new();
    for i in 0..10_000 {
        let pattern = if i % 2 == 0 {
            json!({"source": [format!("app.{i}")], "detail": {"kind": ["k"]}})
        } else {
            json!({"detail": {"path": [{"prefix": format!("/v{i}/")}]}})
        };
        set.add_rule(format!("r{i}"), Pattern::from_value(&pattern).unwrap());
    }
    let event = json!({"source": "app.42", "detail": {"kind": "k", "path": "/v43/items"}});
    assert_eq!(set.matching_rules(&event), vec!["r42", "r43"]);
}

#[test]
fn numeric_ranges_in_the_index_answer_as_patterns_do() {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let points = [
        -1e300, -1e9, -2.5, -1.0, -0.0, 0.0, 1e-9, 0.5, 1.0, 2.0, 3.0, 2.5e2, 5e9, 1e300,
    ];
    let value = |rng: &mut Rng| -> f64 {
        if rng.below(3) == 0 {
            (rng.next() % 2_000_000) as f64 / 1000.0 - 1000.0
        } else {
            rng.pick(&points)
        }
    };
    let mut set = RuleSet::new();
    let mut rules = Vec::new();
    while rules.len() < 400 {
        let (a, b) = (value(&mut rng), value(&mut rng));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let lo_op = rng.pick(&[">", ">="]);
        let hi_op = rng.pick(&["<", "<="]);
        let range = match rng.below(4) {
            0 => json!([lo_op, lo]),
            1 => json!([hi_op, hi]),
            2 => json!(["=", lo]),
            _ => json!([lo_op, lo, hi_op, hi]),
        };
        let Ok(p) = Pattern::from_value(&json!({"n": [{"numeric": range}]})) else {
            continue;
        };
        let id = format!("n{}", rules.len());
        set.add_rule(id.clone(), p.clone());
        rules.push((id, p));
    }
    let mut matched = 0;
    for _ in 0..3000 {
        let x = value(&mut rng);
        let event = json!({ "n": x });
        matched += rules.iter().filter(|(_, p)| p.matches(&event)).count();
        check(&set, &rules, &event);
    }
    for x in points {
        check(&set, &rules, &json!({ "n": x }));
        check(&set, &rules, &json!({ "n": [x, 1] }));
    }
    assert!(matched > 10_000, "{matched}");
}
