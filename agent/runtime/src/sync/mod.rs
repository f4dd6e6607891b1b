//! The sans-IO sync protocol: an agent streams its outbox to the cloud, exactly once.
//!
//! Both ends are pure, deterministic state machines in the style of quinn-proto: no sockets,
//! clocks, threads or async. Inputs are method calls that take the time (`now`, milliseconds on
//! any monotonic clock the shell chooses); outputs are drained with `poll_action()`; timers are
//! `poll_timeout()` → `handle_timeout(now)`. Randomness (backoff jitter) comes from a seed. A
//! transport shell (gRPC, QUIC) moves the frames of `outrider.v1` `sync.proto`; a storage shell
//! does the outbox reads/acks (agent) or the store reads/commits (cloud).
//!
//! * [`AgentSession`] ([`agent`]): connects, handshakes, reads the outbox, batches, resends, backs
//!   off, keeps alive.
//! * [`CloudSession`] ([`cloud`]): one per connection; authenticates the Hello, dedupes, orders,
//!   commits, acks, grants credit.
//! * [`compress`]: the zstd batch codec (bounded decompression); [`pace`]: the agent's token
//!   bucket for its bandwidth cap.
//!
//! # Terms
//!
//! * **node**: the agent's identity. The cloud takes it from the client certificate and gives it
//!   to [`CloudSession::new`]; `Hello.node_id` is only checked against it (a mismatch is refused
//!   with UNAUTHORIZED), and every event's `origin_node` must equal it.
//! * **epoch**: the agent log's incarnation, `Log::log_id()`. A recreated log restarts positions,
//!   so watermarks are kept per (node, epoch, lane).
//! * **lane**: a priority class of the outbox (`Log::class_names()`, highest first).
//! * **seq**: an event's position in the agent's log (`Event.position`, which is its `origin_seq`
//!   when it originates on the node). The outbox reads and acks by position, so the protocol does
//!   too. Within a lane seqs increase but are *not dense*: lanes interleave in one position space.
//! * **watermark** of (node, epoch, lane): every event of the lane at or below it is committed in
//!   the cloud store. It only grows, and only together with the events (one atomic write).
//!
//! # Frames
//!
//! ```text
//! agent                                              cloud
//!   Hello{node_id, version 1, epoch, lanes[name, resume_seq], codecs ["zstd"]} ─>
//!                                                      LoadWatermarks(node, epoch) ─> store
//!   <─ Welcome{lanes[name, watermark, has_watermark], credit, codec ("zstd" or "")}
//!   Batch{batch_seq, lane (= priority), prev_seq, events} ─>
//!   Batch{batch_seq, lane, prev_seq, codec "zstd", compressed = zstd(EventList{events})} ─>
//!                                                      (decompressed, then as a plain batch)
//!                                                      Commit(events > watermark, new watermark)
//!   <─ Ack{batch_seq, lane, watermark, duplicates}    (after the commit is durable)
//!   <─ Nack{batch_seq, lane, reason, watermark}       (STORE_UNAVAILABLE, OUT_OF_ORDER,
//!                                                      INVALID_BATCH, CREDIT_EXCEEDED, ...)
//!   <─ Credit{window}                                 (the window changed)
//!   Ping{nonce} ─>  <─ Pong{nonce}
//! ```
//!
//! After the Welcome the agent reads each lane from the cloud's watermark (`outbox_read(after =
//! watermark)`) and acks its outbox through it. It keeps at most `window` events in flight (sent,
//! not yet answered) and fills the window from the highest-priority lane that has events, so a
//! bulk backlog delays an urgent event by at most one window (under a bandwidth cap, also by at
//! most one batch; see [Flow control](#flow-control)). `Ping` goes after `keepalive_ms` without
//! sending; its `Pong` gives the round trip time in the stats.
//!
//! # Why exactly once holds
//!
//! 1. **The agent's claim.** Every batch holds consecutive events of one lane as the outbox hands
//!    them out, and carries `prev_seq`: the seq of the event the agent sent just before it in the
//!    lane, or the cloud watermark it resumed from (absent: from the outbox cursor). The claim is
//!    that no event of the lane the agent still holds lies strictly between `prev_seq` and the
//!    batch's first event. Reads chain (`after` = last seq read) and every rewind (resend) starts
//!    from a watermark the cloud reported, so the claim holds for every batch ever sent, on any
//!    connection, however late it arrives.
//! 2. **The cloud's check.** A batch is accepted only if `prev_seq` is absent or at or below the
//!    lane's watermark, so nothing between the watermark and the batch can be missing
//!    (otherwise: Nack OUT_OF_ORDER with the watermark, and the agent resends from it). Events at
//!    or below the watermark are duplicates and dropped; the rest are committed together with the
//!    new watermark (their last seq) in one atomic write that is a compare-and-set on the
//!    watermark, so two sessions of one node (an old connection finishing a commit while a new
//!    one starts) cannot both commit the same seq. Hence each event is committed at most once,
//!    and each lane's committed events are in seq order.
//! 3. **Acks follow commits.** The cloud acks a batch only after the store reports the commit
//!    durable; the agent acks its outbox only through a watermark the cloud reported (and never
//!    beyond what it sent on that connection), so an event leaves the outbox only once it is
//!    committed. Everything unacknowledged stays in the outbox and is resent after any loss,
//!    timeout, reconnect or restart of either side, from the watermark the next Welcome reports.
//!    Hence each event is committed at least once (unless the outbox itself drops it by a cap or
//!    TTL, which the outbox counts and reports).
//!
//! Frames may be lost, duplicated or reordered without breaking 1–3: acks and nacks are
//! idempotent (watermarks only grow), a batch's checks do not depend on what arrived before it,
//! and unanswered batches are presumed lost after `response_timeout_ms` and resent.
//!
//! # Flow control
//!
//! The cloud processes batches in arrival order with at most one commit outstanding; batches
//! received meanwhile wait (and the lane's chained batches among them are merged into the next
//! commit, up to `max_commit_events`, so one fsync serves them all), and one that would take the held events beyond the largest window
//! advertised is refused (CREDIT_EXCEEDED), so a session holds at most `max_credit` events. The
//! window grows (by the committed batch's size, up to `max_credit`) when a commit completes with
//! nothing waiting behind it, and halves (down to `min_credit`) when the store fails. A slow
//! store slows the acks, and with them the agent: memory stays bounded on both sides.
//!
//! On the agent, a batch goes only when both the credit window and the bandwidth cap (below)
//! allow it. Either way the highest-priority lane with events goes first whenever one may go, so a
//! bulk backlog delays an urgent event by at most one window (credit) and one batch's worth of the
//! cap's debt.
//!
//! # Compression and pacing
//!
//! **Negotiation.** The agent lists the codecs it accepts in `Hello.codecs` (`["zstd"]` when
//! [`AgentConfig::compression`] is on); the cloud picks one in `Welcome.codec` (`"zstd"` if it
//! was offered and [`CloudConfig::compression`] is on, else empty: none). A plain batch is always
//! valid; a compressed one only with the codec picked for its connection. The agent ignores a
//! codec it did not offer.
//!
//! **Batches.** Once zstd is picked, the agent compresses a batch whose events encode (as an
//! `EventList`) to at least [`AgentConfig::compress_min_bytes`] (default 4 KiB) at
//! [`AgentConfig::compress_level`] (default 1, see [`compress::DEFAULT_LEVEL`]) and sends it as
//! `codec = "zstd"`, `compressed` = one zstd frame (declaring its content size) and no `events`
//! — unless compression did not make it smaller, in which case it goes plain. Batch boundaries,
//! seqs, `prev_seq` and credit (counted in events) are the same either way.
//!
//! **Decoding.** The cloud decompresses a batch as it arrives, before any other check, with a hard
//! cap of [`CloudConfig::max_batch_bytes`] (default 4 MiB) on the decompressed size, which also
//! bounds plain batches' encodings. A frame declaring more is refused before anything is
//! allocated; a frame without a declared size is decoded as a stream that stops one byte past the
//! cap (see [`compress`]). A corrupt frame, a bomb, a payload that is not an `EventList`, plain
//! events beside compressed ones, or a codec that was not picked are answered with Nack
//! INVALID_BATCH (the message says which) and nothing of the batch is held or committed; the
//! agent stops that lane, as for any invalid batch. A batch that decodes is handled exactly like
//! a plain one.
//!
//! **Bandwidth cap.** [`AgentConfig::max_kbps`] (0: none) caps the frame bytes the agent sends
//! (protobuf encodings; transport framing is not counted) with a [`pace::TokenBucket`] driven by
//! the session's `now`: every frame is charged, only batches are held. A batch may go when the
//! bucket is not in debt and is then charged whole (the debt is paid by the refill before the
//! next one), so over any period the agent sends at most `burst + rate × time + one batch`, where
//! `burst` is the larger of 100 ms at the rate and one `max_batch_bytes` batch. While the cap
//! holds a batch, [`AgentSession::poll_timeout`] includes the time the debt is paid.
//!
//! # Stats
//!
//! [`AgentStats`] and [`CloudStats`] count over a session's life: bytes before and after
//! compression (`bytes_raw`, `bytes_wire`), compressed batches, retransmitted events, reconnects,
//! duplicates, ping round trip and batch ack latency (last and smoothed), the last batch's size,
//! time held by the cap; the cloud adds commit latency. [`AgentSession::lane_lag`] gives per lane
//! the events in flight and read ahead and the age of the oldest unacknowledged event, measured
//! on the session's clock from when the session first read it. Each field documents exactly what
//! it counts.
//!
//! # Failure handling (agent)
//!
//! | event | reaction |
//! | --- | --- |
//! | Nack OUT_OF_ORDER | resend the lane from the cloud's watermark |
//! | Nack STORE_UNAVAILABLE, CREDIT_EXCEEDED | pause the lane (jittered exponential backoff), then resend from the watermark |
//! | Nack INVALID_BATCH (also: a compressed batch the cloud could not decode) | stop the lane and report [`AgentAction::LaneStopped`]; never skip events |
//! | Nack UNAUTHORIZED, UNSUPPORTED_PROTOCOL | close, report, reconnect after the longest backoff |
//! | no answer to a batch for `response_timeout_ms` | presume it lost, resend the lane from the watermark |
//! | nothing received for `idle_timeout_ms` (Pings go out every `keepalive_ms` of silence) | close and reconnect |
//! | transport lost, handshake timeout | reconnect after a jittered exponential backoff (reset by a Welcome) |

pub mod agent;
pub mod backoff;
pub mod cloud;
pub mod compress;
mod error;
pub mod pace;
pub mod rng;

pub use agent::{AgentAction, AgentConfig, AgentSession, AgentStats, LaneLag, LaneSpec};
pub use cloud::{CloudAction, CloudConfig, CloudSession, CloudStats, CommitOutcome, CommitRequest};
pub use compress::CodecError;
pub use error::SyncError;

/// The protocol version both sessions speak (`Hello.protocol_version`, `Welcome.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;
