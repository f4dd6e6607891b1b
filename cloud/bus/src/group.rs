//! Consumer groups of a Subscriber target: the sans-IO core.
//!
//! The members of one group share the target's durable stream (`bus/<bus>/q/<rule>/<target>`):
//! every entry is held by at most one member at a time, at least once overall.
//!
//! * **Assignment**: entries go out in stream order to the member with the most free credit
//!   (`max_in_flight` minus what it holds unacknowledged), ties broken round-robin. An entry
//!   that is being redelivered avoids its previous holder when another member has credit.
//! * **Visibility**: an entry not acknowledged within the visibility timeout returns to the
//!   pending set and is delivered again with `attempt` + 1; so are the entries of a member
//!   that leaves (disconnects).
//! * **Checkpoint**: [`GroupCore::advance`] reports the last version of the contiguous
//!   acknowledged prefix when it moves; the shell saves it durably. A restarted group starts
//!   after it, so acknowledged entries past a gap are delivered again (at least once).
//! * **Window**: at most [`GroupConfig::window`] entries are held in memory;
//!   [`GroupCore::room`] says how many more the shell may read from the store.
//!
//! There is no I/O and no clock here: time is an argument (milliseconds on any monotonic
//! scale), so the tests are deterministic. `crate::api::groups` is the tokio shell.

use std::collections::{BTreeMap, BTreeSet};

/// A member of a group, unique within the process.
pub type MemberId = u64;

/// Settings of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    /// How long a member may hold an entry unacknowledged before it is delivered again.
    pub visibility_timeout_ms: u64,
    /// The most entries held in memory (pending, in flight, or acknowledged past a gap).
    pub window: usize,
    /// Deliveries of one entry at most (the target's `MaximumRetryAttempts` + 1); an entry
    /// that reached it without an acknowledgement is taken out of the group
    /// ([`GroupCore::take_exhausted`]: the shell dead-letters it). `None`: no limit.
    pub max_deliveries: Option<u32>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            visibility_timeout_ms: 30_000,
            window: 1024,
            max_deliveries: None,
        }
    }
}

/// One delivery the shell must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<T> {
    pub member: MemberId,
    /// The entry's version in the target's stream.
    pub position: u64,
    /// 1 on the first delivery, +1 on each redelivery.
    pub attempt: u32,
    pub item: T,
}

#[derive(Debug)]
struct Slot<T> {
    item: T,
    attempt: u32,
    holder: Option<(MemberId, u64)>,
    last_holder: Option<MemberId>,
    acked: bool,
}

#[derive(Debug)]
struct Member {
    max_in_flight: usize,
    held: BTreeSet<u64>,
}

impl Member {
    fn free(&self) -> usize {
        self.max_in_flight.saturating_sub(self.held.len())
    }
}

/// The state of one consumer group.
#[derive(Debug)]
pub struct GroupCore<T> {
    cfg: GroupConfig,
    /// The next version expected from the store.
    next_offer: u64,
    slots: BTreeMap<u64, Slot<T>>,
    /// Not acknowledged and held by nobody.
    pending: BTreeSet<u64>,
    /// (deadline, version) of every held entry.
    deadlines: BTreeSet<(u64, u64)>,
    members: BTreeMap<MemberId, Member>,
    /// The member chosen last (round-robin tie break).
    cursor: MemberId,
    /// The checkpoint last reported by [`GroupCore::advance`] (or loaded).
    saved: Option<u64>,
    /// Entries that reached `max_deliveries`: (version, item, deliveries made).
    exhausted: Vec<(u64, T, u32)>,
}

impl<T: Clone> GroupCore<T> {
    /// A group resuming after `checkpoint` (the last version of its acknowledged prefix;
    /// `None`: from the start of the stream).
    pub fn new(cfg: GroupConfig, checkpoint: Option<u64>) -> Self {
        GroupCore {
            cfg: GroupConfig {
                window: cfg.window.max(1),
                ..cfg
            },
            next_offer: checkpoint.map_or(0, |c| c.saturating_add(1)),
            slots: BTreeMap::new(),
            pending: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            members: BTreeMap::new(),
            cursor: 0,
            saved: checkpoint,
            exhausted: Vec::new(),
        }
    }

    /// The version the shell reads from next.
    pub fn next_offer(&self) -> u64 {
        self.next_offer
    }

    /// How many more entries the window takes.
    pub fn room(&self) -> usize {
        self.cfg.window.saturating_sub(self.slots.len())
    }

    /// Adds an entry read from the store. Versions must grow; an entry below
    /// [`GroupCore::next_offer`] (read twice) is ignored.
    pub fn offer(&mut self, position: u64, item: T) {
        if position < self.next_offer {
            return;
        }
        self.next_offer = position.saturating_add(1);
        self.slots.insert(
            position,
            Slot {
                item,
                attempt: 0,
                holder: None,
                last_holder: None,
                acked: false,
            },
        );
        self.pending.insert(position);
    }

    /// A member joins with its credit (at least 1).
    pub fn join(&mut self, member: MemberId, max_in_flight: usize) {
        self.members.entry(member).or_insert(Member {
            max_in_flight: max_in_flight.max(1),
            held: BTreeSet::new(),
        });
    }

    /// A member leaves: what it held is pending again (delivered to another member next).
    pub fn leave(&mut self, member: MemberId) {
        let Some(m) = self.members.remove(&member) else {
            return;
        };
        for v in m.held {
            self.release(v);
        }
    }

    /// Members in the group.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Entries `member` holds unacknowledged.
    pub fn in_flight(&self, member: MemberId) -> usize {
        self.members.get(&member).map_or(0, |m| m.held.len())
    }

    /// Entries waiting for a member with credit.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Acknowledges `position` on behalf of `member`. Any member may acknowledge any entry of
    /// the window (a late acknowledgement by a previous holder counts); an unknown or already
    /// acknowledged position is ignored. Returns whether the entry was newly acknowledged.
    pub fn ack(&mut self, member: MemberId, position: u64) -> bool {
        let _ = member;
        let Some(slot) = self.slots.get_mut(&position) else {
            return false;
        };
        if slot.acked {
            return false;
        }
        slot.acked = true;
        if let Some((h, deadline)) = slot.holder.take() {
            self.deadlines.remove(&(deadline, position));
            if let Some(m) = self.members.get_mut(&h) {
                m.held.remove(&position);
            }
        }
        self.pending.remove(&position);
        true
    }

    /// Returns the entries whose visibility timeout passed by `now` to the pending set.
    /// Returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let due: Vec<(u64, u64)> = self.deadlines.range(..=(now, u64::MAX)).copied().collect();
        for (_, v) in &due {
            self.release(*v);
        }
        due.len()
    }

    /// When the next visibility timeout falls.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Hands pending entries, in stream order, to members with credit.
    pub fn assign(&mut self, now: u64) -> Vec<Assignment<T>> {
        let mut out = Vec::new();
        let pending: Vec<u64> = self.pending.iter().copied().collect();
        for v in pending {
            if let (Some(max), Some(slot)) = (self.cfg.max_deliveries, self.slots.get_mut(&v)) {
                if slot.attempt >= max {
                    // Delivered `max` times and never acknowledged: out of the group. It
                    // counts as finished for the checkpoint, so the shell must write it to the
                    // dead-letter stream before it saves the next checkpoint.
                    slot.acked = true;
                    self.pending.remove(&v);
                    self.exhausted.push((v, slot.item.clone(), slot.attempt));
                    continue;
                }
            }
            let last = self.slots.get(&v).and_then(|s| s.last_holder);
            let Some(member) = self.choose(last) else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&v) else {
                continue;
            };
            let deadline = now.saturating_add(self.cfg.visibility_timeout_ms);
            slot.attempt = slot.attempt.saturating_add(1);
            slot.holder = Some((member, deadline));
            self.deadlines.insert((deadline, v));
            self.pending.remove(&v);
            if let Some(m) = self.members.get_mut(&member) {
                m.held.insert(v);
            }
            self.cursor = member;
            out.push(Assignment {
                member,
                position: v,
                attempt: slot.attempt,
                item: slot.item.clone(),
            });
        }
        out
    }

    /// Entries taken out of the group after `max_deliveries` deliveries without an
    /// acknowledgement, since the last call.
    pub fn take_exhausted(&mut self) -> Vec<(u64, T, u32)> {
        std::mem::take(&mut self.exhausted)
    }

    /// Drops the acknowledged prefix of the window. `Some(checkpoint)` when the last version of
    /// the contiguous acknowledged prefix moved since the last report.
    pub fn advance(&mut self) -> Option<u64> {
        while let Some(entry) = self.slots.first_entry() {
            if !entry.get().acked {
                break;
            }
            entry.remove();
        }
        let first_open = self
            .slots
            .first_key_value()
            .map_or(self.next_offer, |(v, _)| *v);
        let checkpoint = first_open.checked_sub(1)?;
        if self.saved.is_some_and(|s| s >= checkpoint) {
            return None;
        }
        self.saved = Some(checkpoint);
        Some(checkpoint)
    }

    /// The member with the most free credit (preferring any but `avoid`), round-robin among
    /// equals, starting after the last one chosen.
    fn choose(&self, avoid: Option<MemberId>) -> Option<MemberId> {
        let order = self
            .members
            .range(self.cursor.saturating_add(1)..)
            .chain(self.members.range(..=self.cursor));
        let mut best: Option<(bool, usize, MemberId)> = None;
        for (id, m) in order {
            let free = m.free();
            if free == 0 {
                continue;
            }
            let preferred = avoid != Some(*id);
            let better = match best {
                None => true,
                Some((bp, bf, _)) => (preferred, free) > (bp, bf),
            };
            if better {
                best = Some((preferred, free, *id));
            }
        }
        best.map(|(_, _, id)| id)
    }

    fn release(&mut self, position: u64) {
        let Some(slot) = self.slots.get_mut(&position) else {
            return;
        };
        if let Some((h, deadline)) = slot.holder.take() {
            self.deadlines.remove(&(deadline, position));
            if let Some(m) = self.members.get_mut(&h) {
                m.held.remove(&position);
            }
            slot.last_holder = Some(h);
        }
        if !slot.acked {
            self.pending.insert(position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vis: u64, window: usize) -> GroupConfig {
        GroupConfig {
            visibility_timeout_ms: vis,
            window,
            max_deliveries: None,
        }
    }

    fn positions<T>(a: &[Assignment<T>], member: MemberId) -> Vec<u64> {
        a.iter()
            .filter(|x| x.member == member)
            .map(|x| x.position)
            .collect()
    }

    #[test]
    fn members_share_entries_disjointly_within_their_credit() {
        let mut g = GroupCore::new(cfg(1000, 100), None);
        g.join(1, 3);
        g.join(2, 3);
        for v in 0..10 {
            g.offer(v, v);
        }
        let a = g.assign(0);
        assert_eq!(a.len(), 6, "3 + 3 credits");
        let (p1, p2) = (positions(&a, 1), positions(&a, 2));
        assert_eq!(p1.len(), 3);
        assert_eq!(p2.len(), 3);
        assert!(p1.iter().all(|p| !p2.contains(p)));
        assert!(a.iter().all(|x| x.attempt == 1 && x.item == x.position));
        assert_eq!(g.pending(), 4);
        assert!(g.assign(1).is_empty(), "no credit left");
        // Acking frees credit for the next entries, in order.
        assert!(g.ack(1, p1[0]));
        let b = g.assign(2);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].member, 1);
        assert_eq!(b[0].position, 6);
    }

    #[test]
    fn the_least_loaded_member_gets_the_next_entry() {
        let mut g = GroupCore::new(cfg(1000, 100), None);
        g.join(1, 10);
        g.offer(0, ());
        g.offer(1, ());
        assert_eq!(positions(&g.assign(0), 1), vec![0, 1]);
        g.join(2, 10);
        g.offer(2, ());
        g.offer(3, ());
        g.offer(4, ());
        let a = g.assign(0);
        // Member 2 has 10 free, member 1 has 8: 2 takes entries until they are level.
        assert_eq!(positions(&a, 2), vec![2, 3]);
        assert_eq!(positions(&a, 1), vec![4], "level: round-robin");
        assert_eq!(g.in_flight(1) + g.in_flight(2), 5);
        assert!(g.in_flight(1).abs_diff(g.in_flight(2)) <= 1);
    }

    #[test]
    fn checkpoint_moves_over_the_contiguous_acknowledged_prefix_only() {
        let mut g = GroupCore::new(cfg(1000, 100), None);
        g.join(1, 10);
        for v in 0..5 {
            g.offer(v, ());
        }
        g.assign(0);
        assert_eq!(g.advance(), None);
        assert!(g.ack(1, 1));
        assert!(g.ack(1, 2));
        assert_eq!(g.advance(), None, "0 is not acknowledged");
        assert!(g.ack(1, 0));
        assert_eq!(g.advance(), Some(2));
        assert_eq!(g.advance(), None, "reported once");
        assert!(!g.ack(1, 0), "acknowledged twice");
        assert!(!g.ack(1, 99), "unknown position");
        assert!(g.ack(1, 4));
        assert_eq!(g.advance(), None);
        assert!(g.ack(1, 3));
        assert_eq!(g.advance(), Some(4));
        assert_eq!(g.room(), 100);
    }

    #[test]
    fn a_group_resumes_after_its_checkpoint() {
        let mut g: GroupCore<()> = GroupCore::new(cfg(1000, 100), Some(41));
        assert_eq!(g.next_offer(), 42);
        g.offer(41, ());
        assert_eq!(g.pending(), 0, "an entry below the checkpoint is ignored");
        g.offer(42, ());
        g.join(7, 1);
        let a = g.assign(0);
        assert_eq!(positions(&a, 7), vec![42]);
        assert!(g.ack(7, 42));
        assert_eq!(g.advance(), Some(42));
    }

    #[test]
    fn an_unacknowledged_entry_is_redelivered_after_the_timeout_to_another_member() {
        let mut g = GroupCore::new(cfg(30_000, 100), None);
        g.join(1, 1);
        g.offer(0, "e0");
        let a = g.assign(1_000);
        assert_eq!((a[0].member, a[0].attempt), (1, 1));
        g.join(2, 1);
        assert_eq!(g.next_deadline(), Some(31_000));
        assert_eq!(g.expire(30_999), 0);
        assert!(g.assign(30_999).is_empty());
        assert_eq!(g.expire(31_000), 1);
        assert_eq!(g.in_flight(1), 0);
        let b = g.assign(31_000);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].member, b[0].position, b[0].attempt), (2, 0, 2));
        // A late acknowledgement by the first holder counts; the second holder's is a no-op.
        assert!(g.ack(1, 0));
        assert_eq!(g.in_flight(2), 0);
        assert!(!g.ack(2, 0));
        assert_eq!(g.advance(), Some(0));
        assert_eq!(g.next_deadline(), None);
    }

    #[test]
    fn a_redelivery_goes_back_to_the_same_member_when_it_is_alone() {
        let mut g = GroupCore::new(cfg(10, 100), None);
        g.join(1, 4);
        g.offer(0, ());
        g.assign(0);
        g.expire(10);
        let a = g.assign(10);
        assert_eq!((a[0].member, a[0].attempt), (1, 2));
    }

    #[test]
    fn a_leaving_member_s_entries_go_to_the_others() {
        let mut g = GroupCore::new(cfg(30_000, 100), None);
        g.join(1, 2);
        g.join(2, 2);
        for v in 0..4 {
            g.offer(v, ());
        }
        let a = g.assign(0);
        let held_by_1 = positions(&a, 1);
        assert_eq!(held_by_1.len(), 2);
        for p in positions(&a, 2) {
            g.ack(2, p);
        }
        g.leave(1);
        assert_eq!(g.member_count(), 1);
        let b = g.assign(5);
        assert_eq!(positions(&b, 2), held_by_1);
        assert!(b.iter().all(|x| x.attempt == 2));
        g.leave(1); // twice: nothing
        g.leave(2);
        assert_eq!(g.pending(), 2);
        assert!(g.assign(6).is_empty(), "nobody to deliver to");
    }

    #[test]
    fn the_window_bounds_what_is_held() {
        let mut g = GroupCore::new(cfg(1000, 3), None);
        assert_eq!(g.room(), 3);
        for v in 0..3 {
            g.offer(v, ());
        }
        assert_eq!(g.room(), 0);
        g.join(1, 10);
        g.assign(0);
        g.ack(1, 0);
        assert_eq!(g.room(), 0, "still held until the prefix advances");
        assert_eq!(g.advance(), Some(0));
        assert_eq!(g.room(), 1);
    }

    #[test]
    fn gaps_in_versions_are_tolerated() {
        let mut g = GroupCore::new(cfg(1000, 10), None);
        g.join(1, 10);
        g.offer(3, ());
        g.offer(7, ());
        g.offer(5, ()); // out of order: ignored
        let a = g.assign(0);
        assert_eq!(positions(&a, 1), vec![3, 7]);
        g.ack(1, 3);
        assert_eq!(g.advance(), Some(6));
        g.ack(1, 7);
        assert_eq!(g.advance(), Some(7));
    }

    #[test]
    fn an_entry_never_acknowledged_leaves_after_max_deliveries() {
        let mut g: GroupCore<&str> = GroupCore::new(
            GroupConfig {
                visibility_timeout_ms: 10,
                window: 8,
                max_deliveries: Some(2),
            },
            None,
        );
        g.join(1, 4);
        g.offer(0, "poison");
        g.offer(1, "fine");
        let first = g.assign(0);
        assert_eq!(first.len(), 2);
        assert!(g.ack(1, 1));
        assert_eq!(g.expire(10), 1);
        let second = g.assign(10);
        assert_eq!((second[0].position, second[0].attempt), (0, 2));
        assert!(g.take_exhausted().is_empty());
        assert_eq!(g.expire(20), 1);
        assert!(g.assign(20).is_empty(), "not delivered a third time");
        assert_eq!(g.take_exhausted(), vec![(0, "poison", 2)]);
        assert_eq!(g.advance(), Some(1), "both entries are finished");
    }
}
