//! The leader's lease: whether this node may answer from memory now.
//!
//! A write is answered only once committed, so a deposed leader cannot approve
//! anything: its entry never commits. What it answers from memory (a sign-on, a
//! heartbeat, a blacklist download, a retry's original answer) needs no commit, and a
//! leader paused past its election timeout and resumed would give those answers from
//! a state the new leader may have moved past: an old blacklist, an old business date.
//!
//! So the leader answers from memory only while its lead is *confirmed*: a majority
//! of the voters (the leader counted) accepted an append of this term that the leader
//! sent less than [`LEASE_MS`] ago. A follower that accepts an append neither stands
//! for election nor votes for another node for at least the shortest election timeout
//! after it receives it (openraft's own lease, the longest election timeout, is
//! longer still), and it received it after the leader sent it; every majority that
//! could elect a new leader holds such a follower. So while the lease holds, no other
//! node leads. The lease is measured from the *send*, on this node's monotonic clock,
//! so a pause anywhere (before the send, in flight, before the answer is read) only
//! shortens it.
//!
//! Every append the leader sends counts, heartbeats included (openraft sends one to
//! each follower every [`crate::config::HEARTBEAT_MS`]), so a healthy leader's lease
//! never lapses. Learners are not voters and do not count.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::config::LEASE_MS;
use crate::{NodeAddress, NodeId};

/// The last accepted append per peer.
#[derive(Debug, Default)]
pub struct Lease {
    acks: Mutex<HashMap<NodeId, Ack>>,
}

/// An append a peer accepted: the term it carried and when this node sent it.
#[derive(Debug, Clone, Copy)]
struct Ack {
    term: u64,
    sent: Instant,
}

impl Lease {
    /// Records that `peer` accepted an append of `term` sent at `sent`.
    pub(crate) fn accepted(&self, peer: NodeId, term: u64, sent: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        let ack = acks.entry(peer).or_insert(Ack { term, sent });
        if (term, sent) > (ack.term, ack.sent) {
            *ack = Ack { term, sent };
        }
    }

    /// Whether `id`, by openraft's `metrics`, leads now with its lead confirmed.
    #[must_use]
    pub fn holds(&self, id: NodeId, metrics: &openraft::RaftMetrics<NodeId, NodeAddress>) -> bool {
        if metrics.state != ServerState::Leader || metrics.current_leader != Some(id) {
            return false;
        }
        let configs = metrics.membership_config.membership().get_joint_config();
        self.confirmed(id, metrics.current_term, configs, Instant::now())
    }

    /// Whether, at `now`, every configuration in `configs` (two during a membership
    /// change, one otherwise) has a majority that confirmed `id`'s lead in `term`.
    fn confirmed(&self, id: NodeId, term: u64, configs: &[BTreeSet<NodeId>], now: Instant) -> bool {
        let lease = Duration::from_millis(LEASE_MS);
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = |voter: &NodeId| {
            *voter == id
                || acks.get(voter).is_some_and(|ack| {
                    ack.term == term && now.saturating_duration_since(ack.sent) < lease
                })
        };
        !configs.is_empty()
            && configs
                .iter()
                .all(|voters| voters.iter().filter(|v| fresh(v)).count() * 2 > voters.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_lead_is_confirmed_by_a_majority_of_fresh_acks_of_its_own_term() {
        let lease = Lease::default();
        let start = Instant::now();
        let cell = [voters(&[1, 2, 3])];
        assert!(!lease.confirmed(1, 5, &cell, start), "the leader alone is no majority of three");
        lease.accepted(2, 5, start);
        assert!(lease.confirmed(1, 5, &cell, start + Duration::from_millis(LEASE_MS - 1)));
        assert!(
            !lease.confirmed(1, 5, &cell, start + Duration::from_millis(LEASE_MS)),
            "an ack sent a whole lease ago confirms nothing"
        );
        assert!(!lease.confirmed(1, 6, &cell, start), "an ack of an earlier term does not count");
        // A later append renews it; an older one arriving late does not roll it back.
        lease.accepted(3, 5, start + Duration::from_millis(300));
        lease.accepted(3, 5, start);
        assert!(lease.confirmed(1, 5, &cell, start + Duration::from_millis(LEASE_MS + 200)));
    }

    #[test]
    fn a_single_voter_confirms_itself_and_a_joint_configuration_needs_both_majorities() {
        let lease = Lease::default();
        let now = Instant::now();
        assert!(lease.confirmed(1, 1, &[voters(&[1])], now));
        assert!(!lease.confirmed(1, 1, &[], now), "no configuration, no lead");
        lease.accepted(2, 1, now);
        let joint = [voters(&[1, 2, 3]), voters(&[1, 4, 5])];
        assert!(!lease.confirmed(1, 1, &joint, now), "the new configuration has not confirmed");
        lease.accepted(4, 1, now);
        assert!(lease.confirmed(1, 1, &joint, now));
        // A learner's ack never counts: it is in no configuration.
        let lease = Lease::default();
        lease.accepted(9, 1, now);
        assert!(!lease.confirmed(1, 1, &[voters(&[1, 2, 3])], now));
    }
}
