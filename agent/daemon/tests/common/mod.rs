//! Helpers shared by the daemon's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use outrider_agent::config::ApiSection;
use outrider_agent::AgentConfig;
use outrider_proto::v1::agent_client::AgentClient;
use outrider_proto::v1::{expected_version::Kind, AppendRequest, Empty, ExpectedVersion};
use outrider_proto::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// A configuration for a test agent: data in `dir`, both servers on free loopback ports.
pub fn test_config(dir: &Path) -> AgentConfig {
    AgentConfig {
        node_id: "test-node".into(),
        data_dir: dir.to_path_buf(),
        api: ApiSection {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
        },
        ..AgentConfig::default()
    }
}

pub async fn client(addr: SocketAddr) -> AgentClient<Channel> {
    AgentClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub fn event(detail_type: &str, detail: &str) -> Event {
    Event {
        source: "test".into(),
        detail_type: detail_type.into(),
        detail: detail.into(),
        ..Default::default()
    }
}

pub fn expected(kind: Kind) -> Option<ExpectedVersion> {
    Some(ExpectedVersion { kind: Some(kind) })
}

pub fn any() -> Option<ExpectedVersion> {
    expected(Kind::Any(Empty {}))
}

pub fn append_req(stream: &str, exp: Option<ExpectedVersion>, events: Vec<Event>) -> AppendRequest {
    AppendRequest {
        stream: stream.into(),
        expected: exp,
        events,
        priority: String::new(),
    }
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Parses Prometheus text: `name{labels}` → value, plus the names with `# TYPE` lines.
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
    pub helps: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut helps = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                types.insert(name.to_string(), kind.to_string());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP line");
                helps.insert(name.to_string(), help.to_string());
            } else if !line.is_empty() {
                let (key, value) = line.rsplit_once(' ').expect("sample line");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    v => v
                        .parse()
                        .unwrap_or_else(|_| panic!("bad value in {line:?}")),
                };
                assert!(
                    samples.insert(key.to_string(), value).is_none(),
                    "duplicate {key}"
                );
            }
        }
        Scrape {
            samples,
            types,
            helps,
        }
    }

    pub fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}; have {:?}", self.samples.keys()))
    }
}
