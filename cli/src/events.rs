//! `outrider events put | read | tail`.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context as _};
use outrider_proto::v1::{
    AppendRequest, Direction, ReadAllRequest, ReadStreamRequest, StatusRequest, SubscribeRequest,
};
use outrider_proto::Event;
use serde_json::{json, Value};

use crate::args::{PutArgs, ReadArgs, TailArgs};
use crate::client::connect;
use crate::render::event_json;

/// Events one read request asks for (the agent's cap).
const PAGE: u64 = 1000;

/// `events put`: builds the events, appends them in one request, prints the outcome.
pub async fn put(agent: &str, args: PutArgs) -> anyhow::Result<()> {
    let events = match (&args.detail, &args.file) {
        (Some(detail), _) => vec![single_event(&args, detail)?],
        (None, Some(file)) => read_jsonl(file)?,
        (None, None) => bail!("give --detail or --file"),
    };
    if events.is_empty() {
        bail!("no events to append: the file holds no lines");
    }
    let mut client = connect(agent).await?;
    let r = client
        .append(AppendRequest {
            stream: args.stream.clone(),
            expected: Some(args.expected.into()),
            events,
            priority: args.priority.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let out = json!({
        "stream": args.stream,
        "positions": r.positions,
        "versions": r.versions,
        "next_expected_version": r.next_expected_version,
        "duplicate": r.duplicate,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")?;
    Ok(())
}

/// The event of `--source --detail-type --detail [--id]`.
fn single_event(args: &PutArgs, detail: &str) -> anyhow::Result<Event> {
    let text = match detail.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--detail: cannot read {path}"))?,
        None => detail.to_string(),
    };
    let value: Value = serde_json::from_str(&text).context("--detail is not valid JSON")?;
    if !value.is_object() {
        bail!("--detail must be a JSON object");
    }
    Ok(Event {
        id: args.id.clone().unwrap_or_default(),
        source: args.source.clone().unwrap_or_default(),
        detail_type: args.detail_type.clone().unwrap_or_default(),
        detail: value.to_string(),
        ..Event::default()
    })
}

/// Reads a JSON-lines file (`-`: stdin) of events; errors name the file and line.
fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Event>> {
    let name = path.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?,
        ))
    };
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{name}:{n}: cannot read"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("{name}:{n}: not valid JSON"))?;
        let event = line_to_event(value).with_context(|| format!("{name}:{n}"))?;
        events.push(event);
    }
    Ok(events)
}

/// One line: a PutEvents entry (`Source`, `DetailType`, `Detail`), an event as EventBridge
/// delivers it, or the minimal `{"source", "detail-type", "detail"}`.
fn line_to_event(mut value: Value) -> anyhow::Result<Event> {
    let Some(obj) = value.as_object_mut() else {
        bail!("expected a JSON object");
    };
    let is_entry = ["Source", "DetailType", "Detail"]
        .iter()
        .any(|k| obj.contains_key(*k));
    let mut event = if is_entry {
        outrider_proto::eventbridge::entry_to_event(&value)?
    } else {
        // Without an id, the agent assigns one.
        obj.entry("id").or_insert_with(|| Value::from(""));
        outrider_proto::eventbridge::from_json(&value)?
    };
    // Where the event lands is the log's decision.
    event.stream.clear();
    event.version = 0;
    event.position = 0;
    Ok(event)
}

/// `events read`: pages through a stream or the log, printing JSON lines.
pub async fn read(agent: &str, args: ReadArgs) -> anyhow::Result<()> {
    let mut client = connect(agent).await?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut left = args.max.unwrap_or(u64::MAX);
    match (&args.stream, args.all) {
        (Some(stream), false) => {
            let direction = if args.backwards {
                Direction::Backwards
            } else {
                Direction::Forwards
            };
            let mut from = args.from;
            while left > 0 {
                let page = client
                    .read_stream(ReadStreamRequest {
                        stream: stream.clone(),
                        from_version: from,
                        direction: direction as i32,
                        max_count: page_size(left),
                    })
                    .await?
                    .into_inner();
                left = print_page(&mut stdout, &page.events, left)?;
                let Some(last) = page.events.last() else {
                    break;
                };
                if page.end {
                    break;
                }
                from = match direction {
                    Direction::Forwards => Some(last.version + 1),
                    Direction::Backwards => match last.version.checked_sub(1) {
                        Some(v) => Some(v),
                        None => break,
                    },
                };
            }
        }
        (None, true) => {
            let mut from = args.from.unwrap_or(0);
            while left > 0 {
                let page = client
                    .read_all(ReadAllRequest {
                        from_position: from,
                        max_count: page_size(left),
                    })
                    .await?
                    .into_inner();
                left = print_page(&mut stdout, &page.events, left)?;
                let Some(last) = page.events.last() else {
                    break;
                };
                if page.end {
                    break;
                }
                from = last.position + 1;
            }
        }
        _ => bail!("give either --stream or --all"),
    }
    stdout.flush()?;
    Ok(())
}

fn page_size(left: u64) -> u32 {
    u32::try_from(left.min(PAGE)).unwrap_or(1000)
}

/// Prints up to `left` events; returns how many more may be printed.
fn print_page(out: &mut impl Write, events: &[Event], left: u64) -> anyhow::Result<u64> {
    let mut left = left;
    for e in events {
        if left == 0 {
            break;
        }
        writeln!(out, "{}", event_json(e))?;
        left -= 1;
    }
    Ok(left)
}

/// `events tail`: subscribes and prints events until Ctrl-C (or the agent ends the stream).
pub async fn tail(agent: &str, args: TailArgs) -> anyhow::Result<()> {
    let mut client = connect(agent).await?;
    let from = match args.from {
        Some(p) => p,
        None => {
            client
                .status(StatusRequest {})
                .await?
                .into_inner()
                .head_position
        }
    };
    let event_pattern = match args.pattern.as_deref() {
        None => String::new(),
        Some(p) => match p.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("--pattern: cannot read {path}"))?,
            None => p.to_string(),
        },
    };
    let mut stream = client
        .subscribe(SubscribeRequest {
            from_position: from,
            stream: args.stream.unwrap_or_default(),
            event_pattern,
        })
        .await?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let message = tokio::select! {
            r = &mut ctrl_c => {
                r.context("cannot listen for Ctrl-C")?;
                return Ok(());
            }
            m = stream.message() => m?,
        };
        let Some(message) = message else {
            bail!("the agent ended the subscription");
        };
        for e in &message.events {
            writeln!(stdout, "{}", event_json(e))?;
        }
        stdout.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_each_shape() {
        let entry = line_to_event(json!({
            "Source": "shop", "DetailType": "OrderPlaced", "Detail": "{\"n\":1}"
        }))
        .unwrap();
        assert_eq!(
            (entry.source.as_str(), entry.detail.as_str()),
            ("shop", r#"{"n":1}"#)
        );

        let delivered = line_to_event(json!({
            "version": "0", "id": "e-1", "source": "shop", "detail-type": "OrderPlaced",
            "account": "", "time": "2024-01-02T03:04:05Z", "region": "", "resources": [],
            "detail": {"n": 2}, "outrider": {"stream": "elsewhere", "version": 4, "position": 9}
        }))
        .unwrap();
        assert_eq!(delivered.id, "e-1");
        assert_eq!(delivered.detail, r#"{"n":2}"#);
        assert!(delivered.time_seconds > 0);
        assert_eq!((delivered.stream.as_str(), delivered.position), ("", 0));

        let minimal = line_to_event(json!({
            "source": "s", "detail-type": "T", "detail": {"k": true}
        }))
        .unwrap();
        assert_eq!(minimal.id, "");
        assert_eq!(minimal.detail_type, "T");

        assert!(line_to_event(json!([1])).is_err());
        assert!(line_to_event(json!({"Source": "s"})).is_err());
        assert!(line_to_event(json!({"detail-type": "T"})).is_err());
    }
}
