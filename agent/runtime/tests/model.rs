//! Property tests: the log against a plain in-memory model of KurrentDB-style append semantics,
//! with read-your-writes after every operation and across a reopen.

mod common;

use std::collections::HashMap;

use common::ev;
use outrider_runtime::{Direction, Error, ExpectedVersion as EV, Log, LogConfig, StreamFrom};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: u8,
        expected: EV,
        ids: Vec<u8>,
    },
    Reopen,
}

fn expected() -> impl Strategy<Value = EV> {
    prop_oneof![
        Just(EV::Any),
        Just(EV::NoStream),
        Just(EV::StreamExists),
        (0u64..6).prop_map(EV::Exact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u8..3, expected(), prop::collection::vec(0u8..24, 1..4))
            .prop_map(|(stream, expected, ids)| Op::Append { stream, expected, ids }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    /// stream → [(event id, position)]
    streams: HashMap<String, Vec<(String, u64)>>,
    /// position → (stream, id)
    all: Vec<(String, String)>,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok {
        positions: Vec<u64>,
        versions: Vec<u64>,
        duplicate: bool,
    },
    Conflict(Option<u64>),
    Partial,
    DupInRequest,
}

impl Model {
    fn append(&mut self, stream: &str, expected: EV, ids: &[String]) -> Outcome {
        let mut seen = std::collections::HashSet::new();
        if ids.iter().any(|i| !seen.insert(i)) {
            return Outcome::DupInRequest;
        }
        let s = self.streams.get(stream);
        let actual = s.map(|s| s.len() as u64 - 1);
        if let Some(s) = s {
            let found: Vec<Option<(u64, u64)>> = ids
                .iter()
                .map(|id| {
                    s.iter()
                        .enumerate()
                        .find(|(_, (i, _))| i == id)
                        .map(|(v, (_, p))| (*p, v as u64))
                })
                .collect();
            let hits = found.iter().flatten().count();
            if hits == ids.len() {
                let (positions, versions) = found.into_iter().flatten().unzip();
                return Outcome::Ok {
                    positions,
                    versions,
                    duplicate: true,
                };
            }
            if hits > 0 {
                return Outcome::Partial;
            }
        }
        if !expected.admits(actual) {
            return Outcome::Conflict(actual);
        }
        let s = self.streams.entry(stream.to_string()).or_default();
        let mut positions = vec![];
        let mut versions = vec![];
        for id in ids {
            let p = self.all.len() as u64;
            versions.push(s.len() as u64);
            positions.push(p);
            s.push((id.clone(), p));
            self.all.push((stream.to_string(), id.clone()));
        }
        Outcome::Ok {
            positions,
            versions,
            duplicate: false,
        }
    }
}

fn run(log: &Log, stream: &str, expected: EV, ids: &[String]) -> Outcome {
    let evs = ids.iter().map(|i| ev(i, json!({ "id": i }))).collect();
    match log.append(stream, expected, evs, None) {
        Ok(r) => Outcome::Ok {
            positions: r.positions,
            versions: r.versions,
            duplicate: r.duplicate,
        },
        Err(Error::WrongExpectedVersion { actual, .. }) => Outcome::Conflict(actual),
        Err(Error::PartialDuplicate { .. }) => Outcome::Partial,
        Err(Error::DuplicateIdInRequest { .. }) => Outcome::DupInRequest,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn check_reads(log: &Log, model: &Model) {
    let all = log.read_all(0, usize::MAX).unwrap();
    let got: Vec<(String, String)> = all.into_iter().map(|e| (e.stream, e.id)).collect();
    assert_eq!(
        got,
        model.all,
        "head={} start={} durable={}",
        log.head(),
        log.start(),
        log.durable_head()
    );
    for (name, evs) in &model.streams {
        let page = log
            .read_stream(name, StreamFrom::Start, Direction::Forwards, usize::MAX)
            .unwrap();
        let got: Vec<(String, u64)> = page
            .events
            .into_iter()
            .map(|e| (e.id, e.position))
            .collect();
        assert_eq!(&got, evs);
        let back = log
            .read_stream(name, StreamFrom::End, Direction::Backwards, usize::MAX)
            .unwrap();
        assert_eq!(back.events.len(), evs.len());
        assert_eq!(
            log.stream_version(name).unwrap(),
            Some(evs.len() as u64 - 1)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig::new(dir.path());
        let (mut log, _) = Log::open(cfg.clone()).unwrap();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append { stream, expected, ids } => {
                    let stream = format!("s{stream}");
                    let ids: Vec<String> = ids.iter().map(|i| format!("id{i}")).collect();
                    let want = model.append(&stream, expected, &ids);
                    let got = run(&log, &stream, expected, &ids);
                    prop_assert_eq!(got, want);
                    check_reads(&log, &model);
                }
                Op::Reopen => {
                    log.close().unwrap();
                    drop(log);
                    log = Log::open(cfg.clone()).unwrap().0;
                    check_reads(&log, &model);
                }
            }
        }
    }
}
