//! Scenario tests for snapshots, log compaction and membership changes, each named after the
//! failure it guards against (several of them shipped in other Raft implementations).

use raft_core::membership::{MembershipChange, MembershipError};
use raft_core::protocol::Role;
use raft_core::testkit::linearizability::KvInput;
use raft_core::testkit::sim::{Cluster, ProposalOutcome};
use raft_core::{LogIndex, Message, MessageBody, NodeId};

/// A cluster that snapshots every 10 applied entries, keeps 2 below each snapshot, and sends
/// snapshots in 64-byte chunks, two at a time.
fn snapshotting(voters: usize, spares: usize) -> Cluster {
    Cluster::builder(voters)
        .spare_nodes(spares)
        .config(|c| {
            c.snapshot_interval_entries = 10;
            c.snapshot_tail_entries = 2;
            c.snapshot_chunk_bytes_max = 64;
            c.snapshot_inflight_chunks_max = 2;
            c.snapshot_resend_ticks = 10;
        })
        .build()
}

/// n1 leads a snapshotting 3-node cluster and commits `writes` while n3 is cut off, then the
/// cut heals: n3 needs entries n1 compacted.
fn n3_behind_a_compacted_log(writes: usize) -> Cluster {
    let mut cluster = snapshotting(3, 0);
    elect(&mut cluster, 1);
    let cut = cluster.isolate(3);
    for key in 0..writes {
        put(&mut cluster, 1, key);
    }
    cluster.heal(cut);
    cluster
}

fn elect(cluster: &mut Cluster, node: u64) {
    cluster.campaign(node);
    cluster.stabilize();
    assert_eq!(cluster.node(node).role(), Role::Leader);
}

fn put(cluster: &mut Cluster, node: u64, key: usize) {
    let value = format!("value {key} with some padding to make the state larger");
    cluster.propose_kv(node, &KvInput::put(format!("key{key}"), value));
    cluster.stabilize();
}

fn applied(cluster: &Cluster, proposal: raft_core::ProposalId) -> bool {
    matches!(
        cluster.outcome(proposal),
        Some(ProposalOutcome::Applied { .. })
    )
}

/// Heartbeats from the leader until nothing is in flight, `rounds` times.
fn heartbeat_rounds(cluster: &mut Cluster, leader: u64, rounds: u32) {
    for _ in 0..rounds {
        cluster.tick(leader, 5);
        cluster.stabilize();
    }
}

/// Ticks the leader and delivers until it sends `to` a snapshot (a lagging follower is found
/// out by its heartbeat answers, then probed).
fn wait_for_snapshot_transfer(cluster: &mut Cluster, leader: u64, to: u64) {
    for _ in 0..200 {
        if cluster.in_flight().iter().any(|m| is_chunk(m).is_some()) {
            return;
        }
        if cluster.in_flight().is_empty() {
            cluster.tick(leader, 1);
        } else {
            cluster.deliver_all();
        }
    }
    panic!("n{leader} never began sending n{to} a snapshot");
}

fn is_chunk(message: &Message) -> Option<u64> {
    match &message.body {
        MessageBody::SnapshotChunk { offset, .. } => Some(*offset),
        _ => None,
    }
}

#[test]
fn a_follower_whose_entries_were_compacted_while_it_was_slow_catches_up_by_snapshot() {
    let mut cluster = snapshotting(3, 0);
    elect(&mut cluster, 1);
    let cut = cluster.isolate(3);
    for key in 0..40 {
        put(&mut cluster, 1, key);
    }
    let leader_first = cluster.node(1).first_index();
    assert!(
        leader_first > cluster.node(3).last_index().next(),
        "the leader compacted past what n3 holds (first index {leader_first})"
    );
    cluster.heal(cut);
    heartbeat_rounds(&mut cluster, 1, 3);
    assert!(cluster.stats().snapshots_installed >= 1);
    assert_eq!(cluster.kv(3).data(), cluster.kv(1).data());
    assert_eq!(
        cluster.node(3).commit_index(),
        cluster.node(1).commit_index()
    );
    assert!(
        cluster.node(3).first_index() > LogIndex(1),
        "n3's log starts after the snapshot"
    );
    // And it follows from the log afterwards.
    put(&mut cluster, 1, 100);
    assert_eq!(cluster.kv(3).data(), cluster.kv(1).data());
    cluster.check_end_of_run();
}

#[test]
fn a_snapshot_sent_to_a_follower_that_never_reports_back_does_not_leave_it_in_limbo() {
    let mut cluster = n3_behind_a_compacted_log(30);
    wait_for_snapshot_transfer(&mut cluster, 1, 3);
    // n3 receives everything but every answer it sends is lost.
    let mut chunks_sent = 0;
    for _ in 0..60 {
        cluster.tick(1, 1);
        for _ in 0..20 {
            chunks_sent += cluster
                .in_flight()
                .iter()
                .filter(|m| is_chunk(m).is_some())
                .count();
            cluster.drop_in_flight(|m| m.from == NodeId(3));
            if cluster.in_flight().is_empty() {
                break;
            }
            cluster.deliver_all();
        }
    }
    let progress = cluster.node(1).status().progress;
    let to_3 = progress.iter().find(|p| p.id == NodeId(3)).unwrap();
    assert!(
        to_3.snapshot_sent.is_some(),
        "without answers the leader keeps n3 in the snapshot state: {to_3:?}"
    );
    // A window of 2 chunks, resent from the last acknowledged byte every 10 silent ticks.
    assert!(
        chunks_sent >= 2 * 5,
        "the leader kept resending through the silence ({chunks_sent} chunks sent)"
    );
    // Once n3 is heard again, replication resumes from the log after the snapshot.
    heartbeat_rounds(&mut cluster, 1, 3);
    let progress = cluster.node(1).status().progress;
    let to_3 = progress.iter().find(|p| p.id == NodeId(3)).unwrap();
    assert!(to_3.pipelined && to_3.snapshot_sent.is_none(), "{to_3:?}");
    assert_eq!(to_3.match_index, cluster.node(1).last_index());
    assert_eq!(cluster.kv(3).data(), cluster.kv(1).data());
}

#[test]
fn a_lost_snapshot_chunk_resumes_from_the_last_acknowledged_byte_not_from_zero() {
    let mut cluster = n3_behind_a_compacted_log(30);
    let mut offsets = Vec::new();
    let mut dropped = false;
    for _ in 0..40 {
        cluster.tick(1, 1);
        for _ in 0..50 {
            let flying = cluster.in_flight();
            offsets.extend(flying.iter().filter_map(is_chunk));
            if !dropped && flying.iter().any(|m| is_chunk(m) == Some(128)) {
                cluster.drop_in_flight(|m| is_chunk(m) == Some(128));
                dropped = true;
            }
            if cluster.in_flight().is_empty() {
                break;
            }
            cluster.deliver_all();
        }
    }
    assert!(dropped, "the chunk at 128 was sent: {offsets:?}");
    assert_eq!(cluster.kv(3).data(), cluster.kv(1).data());
    assert_eq!(
        offsets.iter().filter(|o| **o == 0).count(),
        1,
        "the transfer never started over: {offsets:?}"
    );
    assert_eq!(
        offsets.iter().filter(|o| **o == 128).count(),
        2,
        "only the lost chunk (and what followed it) was resent: {offsets:?}"
    );
}

#[test]
fn a_new_leader_resumes_a_transfer_of_the_same_snapshot_where_the_follower_stopped() {
    let mut cluster = Cluster::builder(3)
        .config(|c| {
            c.snapshot_interval_entries = 0; // by hand only
            c.snapshot_tail_entries = 0;
            c.snapshot_chunk_bytes_max = 64;
            c.snapshot_inflight_chunks_max = 1;
        })
        .build();
    elect(&mut cluster, 1);
    let cut = cluster.isolate(3);
    for key in 0..30 {
        put(&mut cluster, 1, key);
    }
    // n1 and n2 snapshot at the same index: the same data, so the same snapshot.
    assert!(cluster.request_snapshot(1));
    assert!(cluster.request_snapshot(2));
    let one = cluster.node(1).snapshot().cloned().unwrap();
    let two = cluster.node(2).snapshot().cloned().unwrap();
    assert!(one.same_snapshot(&two));
    cluster.heal(cut);
    // n1 sends half of it, then crashes.
    let total = one.data_bytes;
    wait_for_snapshot_transfer(&mut cluster, 1, 3);
    let mut received = 0;
    for _ in 0..1000 {
        if received >= total / 2 {
            break;
        }
        cluster.deliver_all();
        received = cluster
            .node(3)
            .status()
            .snapshot_receiving
            .map_or(0, |r| r.0);
    }
    assert!(
        received >= total / 2 && received < total,
        "{received} of {total}"
    );
    cluster.crash(1);
    cluster.stabilize();
    // n3 waits out n1's lease before it votes again.
    cluster.tick(3, 20);
    cluster.stabilize();
    cluster.campaign(2);
    let mut first_offsets = Vec::new();
    for _ in 0..10 {
        cluster.tick(2, 5);
        for _ in 0..100 {
            let flying = cluster.in_flight();
            first_offsets.extend(
                flying
                    .iter()
                    .filter(|m| m.from == NodeId(2))
                    .filter_map(is_chunk),
            );
            if flying.is_empty() {
                break;
            }
            cluster.deliver_all();
        }
    }
    assert_eq!(cluster.kv(3).data(), cluster.kv(2).data());
    // One probe chunk at 0 (answered with what n3 holds), then on from there.
    assert_eq!(
        first_offsets.iter().filter(|o| **o < received).count(),
        1,
        "n2 resent only the first chunk below the {received} bytes n3 held: {first_offsets:?}"
    );
}

#[test]
fn a_snapshot_that_fails_its_checksum_is_not_installed_and_the_transfer_starts_over() {
    let mut cluster = n3_behind_a_compacted_log(30);
    cluster.tick(1, 5);
    let mut corrupted = false;
    for _ in 0..200 {
        if !corrupted {
            corrupted = cluster.corrupt_in_flight(|m| is_chunk(m) == Some(64));
        }
        if cluster.in_flight().is_empty() {
            cluster.tick(1, 1);
        }
        cluster.deliver_all();
    }
    assert!(corrupted);
    assert!(cluster.stats().snapshots_installed >= 1);
    assert_eq!(cluster.kv(3).data(), cluster.kv(1).data());
}

#[test]
fn a_learner_receives_the_log_but_never_votes_or_counts_toward_a_commit() {
    let mut cluster = Cluster::builder(2).spare_nodes(1).build();
    elect(&mut cluster, 1);
    let add = cluster
        .change_membership(1, &MembershipChange::add_learner(NodeId(3)))
        .unwrap();
    cluster.stabilize();
    heartbeat_rounds(&mut cluster, 1, 2);
    assert!(applied(&cluster, add));
    put(&mut cluster, 1, 1);
    assert_eq!(
        cluster.kv(3).data(),
        cluster.kv(1).data(),
        "the learner follows"
    );
    // Without n2, n1 and the learner are not a majority of the voters {1, 2}.
    cluster.crash(2);
    let commit = cluster.node(1).commit_index();
    cluster.propose_kv(1, &KvInput::put("lost", "x"));
    cluster.stabilize();
    assert_eq!(
        cluster.node(3).last_index(),
        cluster.node(1).last_index(),
        "the learner holds the entry"
    );
    assert_eq!(
        cluster.node(1).commit_index(),
        commit,
        "a learner's copy does not commit"
    );
    // Nor can n1 win an election with the learner's vote.
    for _ in 0..100 {
        cluster.tick(1, 1);
        cluster.tick(3, 1);
        cluster.stabilize();
    }
    assert_ne!(cluster.node(1).role(), Role::Leader);
    assert_ne!(cluster.node(3).role(), Role::Leader);
    assert_eq!(
        cluster.node(3).role(),
        Role::Follower,
        "a learner never campaigns"
    );
}

#[test]
fn voters_change_through_a_joint_configuration_and_the_removed_leader_steps_down() {
    let mut cluster = snapshotting(3, 2);
    elect(&mut cluster, 1);
    for key in 0..25 {
        put(&mut cluster, 1, key);
    }
    let add = MembershipChange {
        add_learners: vec![NodeId(4), NodeId(5)],
        ..Default::default()
    };
    cluster.change_membership(1, &add).unwrap();
    heartbeat_rounds(&mut cluster, 1, 3);
    assert_eq!(
        cluster.kv(4).data(),
        cluster.kv(1).data(),
        "new learners catch up (by snapshot: the log was compacted)"
    );
    assert!(cluster.stats().snapshots_installed >= 2);
    // Promote both and remove n1 (the leader) and n2 in one request.
    let change = MembershipChange {
        promote: vec![NodeId(4), NodeId(5)],
        remove: vec![NodeId(1), NodeId(2)],
        ..Default::default()
    };
    let proposal = cluster.change_membership(1, &change).unwrap();
    assert!(cluster.node(1).membership().is_joint());
    assert_eq!(
        cluster.change_membership(1, &MembershipChange::remove(NodeId(3))),
        Err(MembershipError::ChangeInProgress),
        "one change at a time"
    );
    heartbeat_rounds(&mut cluster, 1, 2);
    assert!(applied(&cluster, proposal));
    let membership = cluster.node(3).membership().clone();
    assert!(!membership.is_joint(), "the joint configuration was left");
    let voters: Vec<u64> = membership.voters.iter().map(|n| n.0).collect();
    assert_eq!(voters, [3, 4, 5]);
    assert!(membership.removed.contains(&NodeId(1)) && membership.removed.contains(&NodeId(2)));
    assert_eq!(
        cluster.node(1).role(),
        Role::Follower,
        "the removed leader stepped down once the change committed"
    );
    // It told an up-to-date new voter to campaign at once: no election timeout passed.
    let leader = cluster
        .leader()
        .expect("a new voter leads without waiting for a timeout");
    assert!([3, 4, 5].contains(&leader.0));
    put(&mut cluster, leader.0, 99);
    assert_eq!(cluster.kv(5).data(), cluster.kv(leader).data());
}

#[test]
fn a_removed_node_that_never_learned_of_its_removal_cannot_disrupt_the_cluster() {
    let mut cluster = Cluster::builder(4)
        .config(|c| c.pre_vote = false) // so that it raises its term
        .build();
    elect(&mut cluster, 1);
    let cut = cluster.isolate(4);
    cluster
        .change_membership(1, &MembershipChange::remove(NodeId(4)))
        .unwrap();
    heartbeat_rounds(&mut cluster, 1, 3);
    assert!(!cluster.node(1).membership().is_member(NodeId(4)));
    let term = cluster.node(1).term();
    // n4 still thinks it is a voter: it campaigns again and again, at ever higher terms.
    for _ in 0..200 {
        cluster.tick(4, 1);
    }
    assert!(cluster.node(4).term() > term);
    cluster.heal(cut);
    for _ in 0..20 {
        cluster.tick(4, 5);
        cluster.tick(1, 5);
        cluster.stabilize();
    }
    assert_eq!(cluster.node(1).role(), Role::Leader, "n1 still leads");
    assert_eq!(
        cluster.node(1).term(),
        term,
        "no member adopted the removed node's term"
    );
}

#[test]
fn membership_requests_that_cannot_work_fail_with_a_reason_and_change_nothing() {
    let mut cluster = Cluster::builder(3).spare_nodes(1).build();
    elect(&mut cluster, 1);
    let before = cluster.node(1).membership().clone();
    let last = cluster.node(1).last_index();
    let everyone = MembershipChange {
        remove: vec![NodeId(1), NodeId(2), NodeId(3)],
        ..Default::default()
    };
    assert_eq!(
        cluster.change_membership(1, &everyone),
        Err(MembershipError::NoVotersLeft)
    );
    assert_eq!(
        cluster.change_membership(1, &MembershipChange::remove(NodeId(9))),
        Err(MembershipError::UnknownNode(NodeId(9)))
    );
    assert_eq!(
        cluster.change_membership(1, &MembershipChange::promote(NodeId(4))),
        Err(MembershipError::UnknownNode(NodeId(4))),
        "only a learner can be promoted"
    );
    assert_eq!(
        cluster.change_membership(2, &MembershipChange::add_learner(NodeId(4))),
        Err(MembershipError::NotLeader(Some(NodeId(1))))
    );
    assert_eq!(cluster.node(1).membership(), &before);
    assert_eq!(cluster.node(1).last_index(), last, "nothing was appended");
    // A removed ID is never reused.
    cluster
        .change_membership(1, &MembershipChange::remove(NodeId(3)))
        .unwrap();
    heartbeat_rounds(&mut cluster, 1, 2);
    assert_eq!(
        cluster.change_membership(1, &MembershipChange::add_learner(NodeId(3))),
        Err(MembershipError::IdRemoved(NodeId(3)))
    );
}

#[test]
fn a_pre_candidate_forgets_the_old_leader_so_the_cluster_is_not_left_without_one() {
    let mut cluster = Cluster::new(3);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    // n2 times out first and pre-campaigns; n3 still hears n1's lease and refuses.
    let mut became_pre_candidate = false;
    for _ in 0..40 {
        cluster.tick(2, 1);
        cluster.stabilize();
        if cluster.node(2).role() == raft_core::protocol::Role::PreCandidate {
            became_pre_candidate = true;
            assert_eq!(
                cluster.node(2).leader(),
                None,
                "a pre-candidate no longer follows the old leader"
            );
            break;
        }
    }
    assert!(became_pre_candidate);
    // Then n3 times out too: n2, no longer counting n1 as a live leader, grants its pre-vote.
    for _ in 0..100 {
        cluster.tick(3, 1);
        cluster.tick(2, 1);
        cluster.stabilize();
        if cluster
            .leader()
            .is_some_and(|l| l == NodeId(2) || l == NodeId(3))
        {
            return;
        }
    }
    panic!("n2 and n3 never elected a leader");
}

/// Issue 12, scenario 5: promoting a learner that never caught up is refused (as etcd does),
/// with the reason, and changes nothing; once it has caught up the same promotion goes through.
/// A voter that never connected leaves the cluster one failure from unavailability.
#[test]
fn a_learner_that_has_not_caught_up_cannot_be_promoted() {
    let mut cluster = Cluster::builder(3).spare_nodes(1).build();
    elect(&mut cluster, 1);
    let cut = cluster.isolate(4);
    let add = cluster
        .change_membership(1, &MembershipChange::add_learner(NodeId(4)))
        .unwrap();
    cluster.stabilize();
    heartbeat_rounds(&mut cluster, 1, 2);
    assert!(applied(&cluster, add));
    let before = cluster.node(1).membership().clone();
    let last_index = cluster.node(1).last_index();
    assert_eq!(
        cluster.change_membership(1, &MembershipChange::promote(NodeId(4))),
        Err(MembershipError::NotCaughtUp {
            id: NodeId(4),
            match_index: LogIndex(0),
            last_index,
            lag_entries_max: cluster.node(1).config().promotion_lag_entries_max,
        })
    );
    assert_eq!(cluster.node(1).membership(), &before, "nothing changed");
    assert_eq!(cluster.node(1).last_index(), last_index, "nothing appended");

    cluster.heal(cut);
    heartbeat_rounds(&mut cluster, 1, 2);
    let promote = cluster
        .change_membership(1, &MembershipChange::promote(NodeId(4)))
        .expect("a caught-up learner is promoted");
    cluster.stabilize();
    heartbeat_rounds(&mut cluster, 1, 2);
    assert!(applied(&cluster, promote));
    assert!(cluster.node(1).membership().is_voter(NodeId(4)));
}

/// Found by the simulator (seed 2721 of a 20,000-seed run, once it made one- and two-voter
/// clusters): a leader of two voters removes itself. The joint configuration commits, the
/// leader appends the final one (only n2 votes) and dies before it reaches n2. n1's log now
/// ends with a configuration it is not a voter in, so it would not campaign, and its longer log
/// keeps n2 from winning: no leader, ever. Raft thesis §4.2.2: a server removed by an entry that
/// has not committed may still campaign (without counting itself) to commit it.
#[test]
fn a_leader_removed_by_an_uncommitted_entry_may_campaign_to_commit_it() {
    let mut cluster = Cluster::builder(2)
        .config(|c| c.check_quorum = false)
        .build();
    elect(&mut cluster, 1);
    let is_final = |m: &Message| match &m.body {
        MessageBody::Append { entries, .. } => entries
            .iter()
            .any(|e| matches!(&e.payload, raft_core::EntryPayload::Membership(m) if !m.is_joint())),
        _ => false,
    };
    cluster
        .change_membership(1, &MembershipChange::remove(NodeId(1)))
        .unwrap();
    for _ in 0..100 {
        cluster.drop_in_flight(|m| m.to == NodeId(2) && is_final(m));
        if cluster.in_flight().is_empty() {
            break;
        }
        cluster.deliver_all();
    }
    assert!(
        !cluster.node(1).membership().is_voter(NodeId(1)),
        "n1 holds the final entry"
    );
    assert!(cluster.node(2).membership().is_joint(), "n2 never got it");
    cluster.crash(1);
    cluster.restart(1);
    for _ in 0..200 {
        cluster.tick(1, 1);
        cluster.tick(2, 1);
        cluster.stabilize();
        if cluster.leader() == Some(NodeId(2)) && !cluster.node(2).membership().is_joint() {
            break;
        }
    }
    assert_eq!(
        cluster.leader(),
        Some(NodeId(2)),
        "n2 leads the final configuration"
    );
    let membership = cluster.node(2).membership();
    assert!(!membership.is_joint() && membership.removed.contains(&NodeId(1)));
    put(&mut cluster, 2, 1);
}

/// A read round sent to a voter that the change then removes: its answer is ignored (it comes
/// from a removed node), and the leader, now a quorum alone, still held the round open with
/// no one left to answer it. The read waited forever (simulation seed 1922: a leader of
/// {n2, n9} that removed n9 never answered a read registered just before). Rounds are now
/// re-checked against every membership the leader appends.
#[test]
fn a_read_confirmed_by_a_shrinking_membership_is_answered() {
    let mut cluster = Cluster::new(2);
    cluster.campaign(1);
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Leader);
    cluster
        .change_membership(1, &MembershipChange::remove(NodeId(2)))
        .expect("the leader takes the change");
    // n2 stores the joint configuration; its acknowledgement waits while n1 registers a read.
    cluster.deliver_matching(|m| m.to == NodeId(2) && matches!(m.body, MessageBody::Append { .. }));
    let read = cluster.read_kv(1, "x");
    // The acknowledgement commits the joint configuration: n1 appends the final one, {n1}.
    cluster.deliver_matching(|m| {
        m.to == NodeId(1) && matches!(m.body, MessageBody::AppendResponse(_))
    });
    assert!(
        !cluster.node(1).membership().is_voter(NodeId(2)),
        "n2 is no longer a voter: {:?}",
        cluster.node(1).membership()
    );
    // n2 answers the read round now, as a removed node: ignored.
    cluster.stabilize();
    assert!(
        matches!(cluster.outcome(read), Some(ProposalOutcome::Read { .. })),
        "the read is answered by the leader alone: {:?}",
        cluster.outcome(read)
    );
}
