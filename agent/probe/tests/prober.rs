//! The prober end to end on loopback: a primary link probed by UDP echo and a backup probed by
//! TCP connect; the primary's responder is stopped (a blackhole: datagrams to a bound socket
//! nobody reads get no answer) and restarted. Waits are on events with deadlines, never sleeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrider_probe::failover::SwitchReason;
use outrider_probe::health::{DegradedConfig, TransitionReason};
use outrider_probe::probe::udp::{serve_udp_echo, EchoStats};
use outrider_probe::{
    FailoverConfig, FailoverEvent, HealthConfig, LinkSpec, LinkState, ProbeKind, ProbeSpec, Prober,
    ProberConfig, ProberEvent,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc::Receiver;

const INTERVAL: Duration = Duration::from_millis(50);
const HOLD_DOWN_MS: u64 = 1000;

fn health() -> HealthConfig {
    HealthConfig {
        down_failures: 3,
        down_of: 3,
        up_successes: 3,
        degraded: DegradedConfig {
            loss: None,
            ..DegradedConfig::default()
        },
        ..HealthConfig::default()
    }
}

/// The next event matching `f`, within `within`; panics naming what was awaited.
async fn wait_for(
    rx: &mut Receiver<ProberEvent>,
    within: Duration,
    what: &str,
    mut f: impl FnMut(&ProberEvent) -> bool,
) -> ProberEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if f(&e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event channel closed waiting for {what}"),
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}

async fn start_responder(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let socket = UdpSocket::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let stats = Arc::new(EchoStats::default());
        let _ = serve_udp_echo(&socket, &stats).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_primary_fails_over_to_backup_and_fails_back_after_hold_down() {
    let echo_addr = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let responder = start_responder(echo_addr).await;
    let backup = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backup_addr = backup.local_addr().unwrap();
    // Accept and drop, so the backlog never fills.
    let acceptor = tokio::spawn(async move {
        while let Ok((s, _)) = backup.accept().await {
            drop(s);
        }
    });

    let link = |name: &str, kind, priority| LinkSpec {
        name: name.into(),
        probe: ProbeSpec::new(kind).with_timeout(Duration::from_millis(40)),
        interval: INTERVAL,
        health: health(),
        priority,
    };
    let mut config = ProberConfig::new(vec![
        link("dx", ProbeKind::UdpEcho { target: echo_addr }, 10),
        link(
            "vpn",
            ProbeKind::Tcp {
                target: backup_addr,
            },
            20,
        ),
    ]);
    config.failover = Some(FailoverConfig {
        hold_down_ms: HOLD_DOWN_MS,
    });
    let (prober, mut rx) = Prober::start(config).unwrap();

    // Both come up; dx ends up active (at once if it came up first, else after the hold-down).
    let deadline = Duration::from_secs(10);
    wait_for(
        &mut rx,
        deadline,
        "dx active",
        |e| matches!(e, ProberEvent::Failover(FailoverEvent::Switched { to, .. }) if to == "dx"),
    )
    .await;
    assert_eq!(prober.snapshot().active.as_deref(), Some("dx"));

    // Blackhole: a bound socket that never answers, on the same address.
    responder.abort();
    let _ = responder.await;
    let mute = UdpSocket::bind(echo_addr).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let down = wait_for(&mut rx, deadline, "dx down", |e| {
        matches!(e, ProberEvent::Link { link, transition } if link == "dx" && transition.to == LinkState::Down)
    })
    .await;
    if let ProberEvent::Link { transition, .. } = &down {
        assert_eq!(
            transition.reason,
            TransitionReason::Failures { failed: 3, of: 3 }
        );
    }
    let switched = wait_for(
        &mut rx,
        deadline,
        "failover to vpn",
        |e| matches!(e, ProberEvent::Failover(FailoverEvent::Switched { to, .. }) if to == "vpn"),
    )
    .await;
    let detection = t0.elapsed();
    match switched {
        ProberEvent::Failover(FailoverEvent::Switched { reason, from, .. }) => {
            assert_eq!(from.as_deref(), Some("dx"));
            assert_eq!(
                reason,
                SwitchReason::ActiveUnusable {
                    state: LinkState::Down
                }
            );
        }
        e => panic!("{e:?}"),
    }
    // 3 intervals + a probe timeout, with generous slack for a loaded CI machine: sub-second.
    assert!(
        detection < Duration::from_secs(1),
        "detected after {detection:?}"
    );

    // Back: dx comes Up, but traffic stays on vpn until the hold-down has passed.
    drop(mute);
    let _responder = start_responder(echo_addr).await;
    wait_for(&mut rx, deadline, "dx up", |e| {
        matches!(e, ProberEvent::Link { link, transition } if link == "dx" && transition.to == LinkState::Up)
    })
    .await;
    let up_at = tokio::time::Instant::now();
    assert_eq!(prober.snapshot().active.as_deref(), Some("vpn"));
    let back = wait_for(
        &mut rx,
        deadline,
        "fail back to dx",
        |e| matches!(e, ProberEvent::Failover(FailoverEvent::Switched { to, .. }) if to == "dx"),
    )
    .await;
    let held = up_at.elapsed();
    match back {
        ProberEvent::Failover(FailoverEvent::Switched { reason, .. }) => match reason {
            SwitchReason::Preferred { held_ms, .. } => assert!(held_ms >= HOLD_DOWN_MS),
            r => panic!("{r:?}"),
        },
        e => panic!("{e:?}"),
    }
    // And not much later than that on our clock either.
    assert!(held <= Duration::from_secs(5), "failed back after {held:?}");

    let snap = prober.snapshot();
    let dx = snap.links.iter().find(|l| l.name == "dx").unwrap();
    assert_eq!(dx.state, LinkState::Up);
    // Failures counted: timeouts, and a refusal if a probe fell between the responder's end
    // and the mute socket's bind.
    let failed: u64 = dx.probes[1..].iter().sum();
    assert!(
        failed >= 3 && dx.probes[1] >= 1,
        "probes by result: {:?}",
        dx.probes
    );
    assert!(dx.transitions >= 3);
    let mut x = outrider_runtime::metrics::Exposition::new();
    outrider_probe::metrics::write_links(&mut x, &snap);
    let text = x.finish();
    assert!(
        text.contains("outrider_link_active{link=\"dx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("outrider_link_state{link=\"vpn\",state=\"up\"} 1"),
        "{text}"
    );

    prober.shutdown();
    acceptor.abort();
}

#[tokio::test]
async fn invalid_configs_are_refused_by_link_name() {
    let mut bad = health();
    bad.down_failures = 0;
    let spec = LinkSpec {
        name: "dx".into(),
        probe: ProbeSpec::new(ProbeKind::Tcp {
            target: "127.0.0.1:1".parse().unwrap(),
        }),
        interval: INTERVAL,
        health: bad,
        priority: 1,
    };
    let err = Prober::start(ProberConfig::new(vec![spec])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "link \"dx\": health.down_failures must be at least 1"
    );
}
