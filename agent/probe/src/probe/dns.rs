//! DNS probe: one A or AAAA query over UDP to a given resolver (e.g. a Route 53 Resolver
//! inbound endpoint reached over the link), with a small hand-written encoder and a typed,
//! bounds-checked parser (RFC 1035; compression pointers followed, with a hop limit).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::Bind;
use crate::outcome::{ProbeError, ProbeOutcome};

/// The record type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordType {
    #[default]
    A,
    Aaaa,
}

impl RecordType {
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
        }
    }
}

/// A DNS probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsProbe {
    /// The resolver to ask (port 53 normally).
    pub resolver: SocketAddr,
    /// The name to resolve (a trailing dot is optional).
    pub name: String,
    pub record: RecordType,
    /// If set, the answer must contain this address (split-horizon / hybrid DNS checks).
    pub expect: Option<IpAddr>,
}

impl DnsProbe {
    pub fn new(resolver: SocketAddr, name: impl Into<String>, record: RecordType) -> Self {
        Self {
            resolver,
            name: name.into(),
            record,
            expect: None,
        }
    }
}

/// A successful resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    pub addrs: Vec<IpAddr>,
    pub rtt: Duration,
}

/// A parsed response (only what the probe needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResponse {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    /// Addresses of the type asked for, in answer order (CNAMEs and other records skipped).
    pub addrs: Vec<IpAddr>,
}

/// Encodes a recursive query for `name`.
pub fn encode_query(id: u16, name: &str, record: RecordType) -> Result<Vec<u8>, ProbeError> {
    let bad = |why| ProbeError::DnsName {
        name: name.to_string(),
        why,
    };
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("empty name"));
    }
    let mut total = 1;
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > 63 {
            return Err(bad("label longer than 63 bytes"));
        }
        total += label.len() + 1;
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    if total > 255 {
        return Err(bad("name longer than 255 bytes"));
    }
    q.push(0);
    q.extend_from_slice(&record.code().to_be_bytes());
    q.extend_from_slice(&[0, 1]); // IN
    Ok(q)
}

/// Parses a response to a query of `record`.
pub fn parse_response(buf: &[u8], record: RecordType) -> Result<DnsResponse, &'static str> {
    let mut r = Reader { buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err("not a response (QR = 0)");
    }
    let qd = r.u16()?;
    let an = r.u16()?;
    r.u16()?; // NS
    r.u16()?; // AR
    for _ in 0..qd {
        r.skip_name()?;
        r.take(4)?;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        r.skip_name()?;
        let ty = r.u16()?;
        let class = r.u16()?;
        r.take(4)?; // TTL
        let len = usize::from(r.u16()?);
        let data = r.take(len)?;
        if class != 1 || ty != record.code() {
            continue;
        }
        match (record, data.len()) {
            (RecordType::A, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (RecordType::Aaaa, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                addrs.push(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => return Err("address record of the wrong length"),
        }
    }
    Ok(DnsResponse {
        id,
        rcode: (flags & 0x000f) as u8,
        truncated: flags & 0x0200 != 0,
        addrs,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated message")?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    /// Skips a (possibly compressed) name at the cursor.
    fn skip_name(&mut self) -> Result<(), &'static str> {
        loop {
            let len = self.take(1)?[0];
            match len {
                0 => return Ok(()),
                l if l & 0xc0 == 0xc0 => {
                    // A pointer ends the name here; where it points is not needed to skip it,
                    // only that it points backwards into the message.
                    let lo = self.take(1)?[0];
                    let target = (usize::from(l & 0x3f) << 8) | usize::from(lo);
                    if target >= self.pos - 2 {
                        return Err("forward or self compression pointer");
                    }
                    return Ok(());
                }
                l if l & 0xc0 != 0 => return Err("reserved label type"),
                l => {
                    self.take(usize::from(l))?;
                }
            }
        }
    }
}

/// The name of an rcode.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "error",
    }
}

/// Resolves within `timeout`. `Err` is the failed probe's outcome.
pub async fn resolve(
    p: &DnsProbe,
    bind: &Bind,
    timeout: Duration,
) -> Result<DnsAnswer, ProbeOutcome> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, exchange(p, bind, start)).await {
        Err(_) => Err(ProbeOutcome::Timeout { after: timeout }),
        Ok(r) => r,
    }
}

async fn exchange(p: &DnsProbe, bind: &Bind, start: Instant) -> Result<DnsAnswer, ProbeOutcome> {
    let resolver = p.resolver;
    let io = |op, e: &std::io::Error| ProbeOutcome::error(ProbeError::io(op, resolver, e));
    let local = bind.local_for(resolver.ip()).map_err(ProbeOutcome::error)?;
    let s = socket2::Socket::new(
        socket2::Domain::for_address(resolver),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| io("socket", &e))?;
    s.set_nonblocking(true)
        .map_err(|e| io("set_nonblocking", &e))?;
    bind.apply_device(&s).map_err(ProbeOutcome::error)?;
    s.bind(&local.into()).map_err(|e| io("bind", &e))?;
    s.connect(&resolver.into()).map_err(|e| io("connect", &e))?;
    let socket = UdpSocket::from_std(s.into()).map_err(|e| io("register", &e))?;

    let id = super::random_u64() as u16;
    let query = encode_query(id, &p.name, p.record).map_err(ProbeOutcome::error)?;
    socket
        .send(&query)
        .await
        .map_err(|e| refused_or(e, "send", resolver))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| refused_or(e, "recv", resolver))?;
        let resp = match parse_response(&buf[..n], p.record) {
            Ok(r) => r,
            // A response to an earlier query or garbage: wait on, unless it carries our id.
            Err(why) => {
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Err(ProbeOutcome::error(ProbeError::DnsMalformed {
                        resolver: resolver.to_string(),
                        why,
                    }));
                }
                continue;
            }
        };
        if resp.id != id {
            continue;
        }
        let rtt = start.elapsed();
        if resp.rcode != 0 {
            return Err(ProbeOutcome::error(ProbeError::DnsRcode {
                rcode: resp.rcode,
                rcode_name: rcode_name(resp.rcode),
                name: p.name.clone(),
                resolver: resolver.to_string(),
            }));
        }
        if resp.addrs.is_empty() {
            return Err(ProbeOutcome::error(ProbeError::DnsNoAnswer {
                record: p.record.as_str(),
                name: p.name.clone(),
                resolver: resolver.to_string(),
            }));
        }
        if let Some(want) = p.expect {
            if !resp.addrs.contains(&want) {
                return Err(ProbeOutcome::error(ProbeError::DnsUnexpected {
                    name: p.name.clone(),
                    expected: want.to_string(),
                    got: resp
                        .addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }));
            }
        }
        return Ok(DnsAnswer {
            addrs: resp.addrs,
            rtt,
        });
    }
}

fn refused_or(e: std::io::Error, op: &'static str, resolver: SocketAddr) -> ProbeOutcome {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        ProbeOutcome::Refused
    } else {
        ProbeOutcome::error(ProbeError::io(op, resolver, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny authoritative responder written independently of the probe's parser: answers
    /// `up.test` A with 10.1.2.3 (name by compression pointer), `v6.test` AAAA with fd00::1,
    /// `gone.test` with NXDOMAIN, everything else with NOERROR and no answer; `mute.test` is
    /// never answered.
    async fn responder() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut b = [0u8; 512];
            loop {
                let Ok((n, from)) = s.recv_from(&mut b).await else {
                    return;
                };
                let q = &b[..n];
                // The question: labels from byte 12 to the zero, then type and class.
                let mut i = 12;
                let mut labels = Vec::new();
                while q[i] != 0 {
                    let l = q[i] as usize;
                    labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + l]).to_string());
                    i += 1 + l;
                }
                let qend = i + 5;
                let name = labels.join(".");
                if name == "mute.test" {
                    continue;
                }
                let mut r = q[..qend].to_vec();
                r[2] = 0x81; // QR, RD
                r[3] = 0x80; // RA
                let answer = |r: &mut Vec<u8>, ty: u16, data: &[u8]| {
                    r[7] = 1; // ANCOUNT
                    r.extend_from_slice(&[0xc0, 12]);
                    r.extend_from_slice(&ty.to_be_bytes());
                    r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
                    r.extend_from_slice(&(data.len() as u16).to_be_bytes());
                    r.extend_from_slice(data);
                };
                match name.as_str() {
                    "up.test" => answer(&mut r, 1, &[10, 1, 2, 3]),
                    "v6.test" => {
                        let mut a = [0u8; 16];
                        a[0] = 0xfd;
                        a[15] = 1;
                        answer(&mut r, 28, &a)
                    }
                    "gone.test" => r[3] |= 3,
                    _ => {}
                }
                let _ = s.send_to(&r, from).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn resolves_a_and_aaaa() {
        let (addr, task) = responder().await;
        let p = DnsProbe::new(addr, "up.test", RecordType::A);
        let a = resolve(&p, &Bind::default(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(a.addrs, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let p = DnsProbe::new(addr, "v6.test.", RecordType::Aaaa);
        let a = resolve(&p, &Bind::default(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(a.addrs, vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        task.abort();
    }

    #[tokio::test]
    async fn expected_address_nxdomain_and_empty_answers_are_named() {
        let (addr, task) = responder().await;
        let mut p = DnsProbe::new(addr, "up.test", RecordType::A);
        p.expect = Some("10.1.2.3".parse().unwrap());
        assert!(resolve(&p, &Bind::default(), Duration::from_secs(5))
            .await
            .is_ok());
        p.expect = Some("10.9.9.9".parse().unwrap());
        match resolve(&p, &Bind::default(), Duration::from_secs(5)).await {
            Err(ProbeOutcome::Error {
                reason: ProbeError::DnsUnexpected { expected, got, .. },
            }) => {
                assert_eq!(expected, "10.9.9.9");
                assert_eq!(got, "10.1.2.3");
            }
            o => panic!("{o:?}"),
        }
        let p = DnsProbe::new(addr, "gone.test", RecordType::A);
        match resolve(&p, &Bind::default(), Duration::from_secs(5)).await {
            Err(ProbeOutcome::Error {
                reason:
                    ProbeError::DnsRcode {
                        rcode, rcode_name, ..
                    },
            }) => assert_eq!((rcode, rcode_name), (3, "NXDOMAIN")),
            o => panic!("{o:?}"),
        }
        let p = DnsProbe::new(addr, "empty.test", RecordType::A);
        match resolve(&p, &Bind::default(), Duration::from_secs(5)).await {
            Err(ProbeOutcome::Error {
                reason: ProbeError::DnsNoAnswer { record, .. },
            }) => assert_eq!(record, "A"),
            o => panic!("{o:?}"),
        }
        task.abort();
    }

    #[tokio::test]
    async fn unanswered_query_times_out() {
        let (addr, task) = responder().await;
        let p = DnsProbe::new(addr, "mute.test", RecordType::A);
        let r = resolve(&p, &Bind::default(), Duration::from_millis(150)).await;
        assert_eq!(
            r,
            Err(ProbeOutcome::Timeout {
                after: Duration::from_millis(150)
            })
        );
        task.abort();
    }

    #[test]
    fn names_are_validated() {
        assert!(encode_query(1, "a..b", RecordType::A).is_err());
        assert!(encode_query(1, "", RecordType::A).is_err());
        assert!(encode_query(1, &"x".repeat(64), RecordType::A).is_err());
        let long = vec!["abcdefghij"; 30].join(".");
        assert!(matches!(
            encode_query(1, &long, RecordType::A),
            Err(ProbeError::DnsName {
                why: "name longer than 255 bytes",
                ..
            })
        ));
        let q = encode_query(0x1234, "example.com.", RecordType::Aaaa).unwrap();
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..], b"\x07example\x03com\x00\x00\x1c\x00\x01");
    }

    #[test]
    fn parser_rejects_malformed_messages_without_panicking() {
        let q = encode_query(7, "up.test", RecordType::A).unwrap();
        assert_eq!(
            parse_response(&q, RecordType::A),
            Err("not a response (QR = 0)")
        );
        let mut r = q.clone();
        r[2] |= 0x80;
        r[7] = 1; // claims an answer that is not there
        assert_eq!(parse_response(&r, RecordType::A), Err("truncated message"));
        // A self-pointing compression pointer.
        let mut r = q.clone();
        r[2] |= 0x80;
        r[7] = 1;
        let at = r.len();
        r.extend_from_slice(&[0xc0, at as u8]);
        assert_eq!(
            parse_response(&r, RecordType::A),
            Err("forward or self compression pointer")
        );
        // Every prefix of a valid response parses or errors; none panics.
        let mut ok = q.clone();
        ok[2] |= 0x80;
        ok[7] = 1;
        ok.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            parse_response(&ok, RecordType::A).unwrap().addrs,
            vec!["1.2.3.4".parse::<IpAddr>().unwrap()]
        );
        for i in 0..ok.len() {
            let _ = parse_response(&ok[..i], RecordType::A);
        }
    }
}
