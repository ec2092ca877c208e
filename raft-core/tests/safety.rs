//! Safety holes found by review and by crashing real processes, one test each, replayed by hand
//! against `RawNode` (the protocol with no IO) or the interactive simulator. Each failed on the
//! code before its fix.

use bytes::Bytes;
use raft_core::membership::Membership;
use raft_core::message::MessageBody;
use raft_core::protocol::{RawNode, Ready, Restore, Role};
use raft_core::{Config, Entry, EntryPayload, HardState, LogIndex, Message, NodeId, Term};

/// A node's disk holding one membership entry (voters `voters`, learners `learners`), with
/// `term` as its current term and a vote for itself.
fn bootstrapped(voters: &[u64], learners: &[u64], term: u64) -> Restore {
    let membership = Membership {
        voters: voters.iter().copied().map(NodeId).collect(),
        learners: learners.iter().copied().map(NodeId).collect(),
        ..Membership::default()
    };
    Restore {
        hard_state: HardState {
            term: Term(term),
            vote: Some(NodeId(voters[0])),
            commit: LogIndex(1),
        },
        entries: vec![Entry {
            term: Term(1),
            index: LogIndex(1),
            payload: EntryPayload::Membership(membership),
        }],
        snapshot: None,
        applied: LogIndex(0),
    }
}

fn node(id: u64, voters: &[u64], restore: Restore, seed: u64) -> RawNode {
    let mut config = Config::new(NodeId(id), voters.iter().copied().map(NodeId).collect());
    config.seed = seed;
    RawNode::new(config, restore).expect("a valid node")
}

/// What a test harness with a disk that has not synced yet may send: `messages` at once.
fn sent_at_once(ready: &Ready) -> Vec<Message> {
    ready.messages.clone()
}

/// Issue 12, scenario 1. A one-voter cluster (the bootstrap path: one node, learners added)
/// wins its election inside one step. Its appends and heartbeats carry the new term, which is
/// only in that ready's write: if they left at once and the process died before the write was
/// durable, the node would restart in the old term, win the same term again and write other
/// entries under the same (index, term) as the ones the learner already holds. The rule: no
/// message that carries a term leaves before that term and vote are durable.
#[test]
fn a_single_voter_leader_sends_nothing_of_its_new_term_before_the_term_is_durable() {
    let mut leader = node(1, &[1], bootstrapped(&[1], &[2], 1), 7);
    leader.campaign();
    assert_eq!(leader.role(), Role::Leader, "one voter wins alone");
    assert_eq!(leader.term(), Term(2));
    leader.propose(raft_core::ProposalId(1), Bytes::from_static(b"first life"));
    let ready = leader.ready();
    let hard_state = ready.write.hard_state.expect("the new term is written");
    assert_eq!(hard_state.term, Term(2));
    let early: Vec<Message> = sent_at_once(&ready)
        .into_iter()
        .filter(|m| m.term >= Term(2))
        .collect();
    assert!(
        early.is_empty(),
        "messages of term 2 left before term 2 was durable: {early:?}"
    );
    assert!(
        ready
            .messages_after_write
            .iter()
            .any(|m| m.to == NodeId(2) && matches!(m.body, MessageBody::Append { .. })),
        "the append to the learner waits for the write"
    );

    // Once the term is durable, the leader's messages go out at once again, ahead of its own
    // writes (the usual leader optimisation).
    leader.persisted(ready.number);
    for _ in 0..leader.config().heartbeat_interval_ticks {
        leader.tick();
    }
    let ready = leader.ready();
    assert!(
        ready
            .messages
            .iter()
            .any(|m| m.to == NodeId(2) && matches!(m.body, MessageBody::Heartbeat { .. })),
        "with its term durable, a leader sends at once: {:?}",
        ready
    );
}

/// The same scenario end to end: the leader dies before its first write is durable and comes
/// back in the old term. Whatever left before the crash must not let the learner keep entries
/// that the leader's second life writes differently.
#[test]
fn a_single_voter_leader_that_crashes_before_its_term_is_durable_cannot_fork_a_learner() {
    let mut leader = node(1, &[1], bootstrapped(&[1], &[2], 1), 7);
    let mut learner = node(2, &[], bootstrapped(&[1], &[2], 1), 7);
    leader.campaign();
    leader.propose(raft_core::ProposalId(1), Bytes::from_static(b"first life"));
    let ready = leader.ready();
    // The disk never finishes this write: the process dies. Only what left at once arrives.
    for message in sent_at_once(&ready) {
        learner.step(message);
    }
    let _ = learner.ready();

    // Second life, from the disk as it was: term 1.
    let mut leader = node(1, &[1], bootstrapped(&[1], &[2], 1), 8);
    leader.campaign();
    assert_eq!(leader.term(), Term(2), "the same term is won again");
    leader.propose(raft_core::ProposalId(1), Bytes::from_static(b"second life"));
    let mut ready = leader.ready();
    for _ in 0..10 {
        leader.persisted(ready.number);
        let mut out = ready.messages;
        out.extend(ready.messages_after_write);
        for message in out {
            learner.step(message);
        }
        let answer = learner.ready();
        learner.persisted(answer.number);
        let mut back = answer.messages;
        back.extend(answer.messages_after_write);
        for message in back {
            leader.step(message);
        }
        ready = leader.ready();
    }
    for index in 1..=leader.last_index().0 {
        let index = LogIndex(index);
        assert_eq!(
            leader.entry(index),
            learner.entry(index),
            "leader and learner disagree at {index}"
        );
    }
    assert!(
        learner.commit_index() >= LogIndex(3),
        "the learner caught up"
    );
}

/// Issue 12, scenario 4: a node whose storage does not survive a restart (in memory) comes
/// back with nothing. n2 helped commit `x` while n3 was cut off; then n2 lost its memory and
/// the leader n1 crashed. n3 (without `x`) asks the empty n2 for its vote: an amnesiac n2
/// granting it under its old identity made n3 leader, and `x`, acknowledged to its client, was
/// gone (this test failed so when n2 restarted in its old incarnation, as every restart did
/// before incarnations). Now n2's new life counts for nothing until the leader has recorded
/// it: no leader can be elected without n1, and once n1 is back, n2 rejoins as a learner, is
/// caught up and promoted back to voter on its own, and every node holds `x`.
#[test]
fn an_amnesiac_voter_counts_for_nothing_until_it_has_rejoined() {
    use raft_core::testkit::linearizability::KvInput;
    use raft_core::testkit::sim::{Cluster, ProposalOutcome};
    use raft_core::Incarnation;

    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let cut = cluster.isolate(3);
    let put = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.stabilize();
    assert!(
        matches!(cluster.outcome(put), Some(ProposalOutcome::Applied { .. })),
        "x commits with n1 and n2: {:?}",
        cluster.outcome(put)
    );
    cluster.crash(2);
    cluster.restart_amnesiac(2);
    cluster.crash(1);
    cluster.heal(cut);
    for _ in 0..200 {
        cluster.tick(2, 1);
        cluster.tick(3, 1);
        cluster.stabilize();
    }
    assert_eq!(
        cluster.leader(),
        None,
        "n3 lacks x and n2 remembers nothing: they must not elect a leader"
    );

    cluster.restart(1);
    for _ in 0..400 {
        cluster.tick_all(1);
        cluster.stabilize();
        let rejoined = cluster.leader().is_some_and(|leader| {
            let membership = cluster.node(leader).membership();
            membership.counts(NodeId(2), Incarnation(1))
                && !membership.is_joint()
                && cluster.node(leader).commit_index() >= cluster.node(leader).membership_index()
        });
        if rejoined {
            break;
        }
    }
    let leader = cluster.leader().expect("n1 is back: a leader is elected");
    let membership = cluster.node(leader).membership().clone();
    assert!(
        membership.counts(NodeId(2), Incarnation(1)) && !membership.is_joint(),
        "n2's new life is recorded and promoted back to voter without an operator: {membership:?}"
    );
    assert!(membership.rejoining.is_empty(), "{membership:?}");
    for node in 1..=3 {
        assert_eq!(
            cluster.kv(node).get("x").map(|v| &v[..]),
            Some(&b"1"[..]),
            "n{node} holds the acknowledged write"
        );
    }
}

/// A voter loses its memory while a membership change that needs it is unfinished: n1 removes
/// n3, so the joint configuration's incoming voters are {n1, n2}, and n2 restarts with nothing
/// before it stored that configuration. Its new life counts nowhere, so the change could never
/// commit, and while a change was unfinished the leader would not record the restart: the
/// cluster stopped for good. The leader now records the restart on top of the unfinished
/// change (the incoming half loses n2, the outgoing half stays as it was); the change commits
/// with n1 and n3, and n2 rejoins and is promoted back.
#[test]
fn a_restart_during_an_unfinished_change_is_recorded_and_the_change_finishes() {
    use raft_core::membership::MembershipChange;
    use raft_core::testkit::sim::Cluster;
    use raft_core::Incarnation;

    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    cluster
        .change_membership(1, &MembershipChange::remove(NodeId(3)))
        .expect("the leader takes the change");
    cluster.crash(2);
    cluster.restart_amnesiac(2);
    let settled = |cluster: &Cluster| {
        let leader = cluster.node(1);
        let membership = leader.membership();
        !membership.is_joint()
            && membership.rejoining.is_empty()
            && membership.counts(NodeId(2), Incarnation(1))
            && leader.commit_index() >= leader.membership_index()
    };
    for _ in 0..300 {
        cluster.tick_all(1);
        cluster.stabilize();
        if settled(&cluster) {
            break;
        }
    }
    let membership = cluster.node(1).membership().clone();
    assert!(
        settled(&cluster),
        "the change and the rejoin finish: {membership:?}"
    );
    assert!(membership.removed.contains(&NodeId(3)), "{membership:?}");
    assert_eq!(
        membership.voters.iter().copied().collect::<Vec<_>>(),
        [NodeId(1), NodeId(2)]
    );
}

/// An amnesiac node's acknowledgements must not count either. n3 helps n2 win term 2 and
/// commit `x`, then loses its memory. n1, the leader of term 1 cut off all along, reaches the
/// empty n3, which follows it in term 1 and stores what n1 sends: counting n3's
/// acknowledgements would commit n1's `y` at an index where term 2 committed something else
/// (the simulator's checker stops the run there when they count). They count nowhere until n3's
/// new life is recorded, which n1 cannot get committed without n2: `y` never commits, and once
/// the cut heals every node holds `x`. (n2 and n3 trade places when n3 wins term 2.) This test
/// also found that a heartbeat's commit index, bounded by the match index of n3's earlier
/// life, made n3 commit n1's entries once the winner of term 2 reached it: a heartbeat now
/// names the follower life its match index came from.
#[test]
fn an_amnesiac_nodes_acknowledgements_count_for_nothing() {
    use raft_core::testkit::linearizability::KvInput;
    use raft_core::testkit::sim::{Cluster, ProposalOutcome};

    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let cut = cluster.isolate(1);
    // n2 and n3 elect a leader of a later term between them (n1 never ticks: it still leads).
    let mut new_leader = None;
    for _ in 0..200 {
        cluster.tick(2, 1);
        cluster.tick(3, 1);
        cluster.stabilize();
        new_leader = [2, 3]
            .into_iter()
            .find(|n| cluster.node(*n).role() == Role::Leader);
        if new_leader.is_some() {
            break;
        }
    }
    let b = new_leader.expect("n2 and n3 elect a leader");
    let c = 5 - b;
    let x = cluster.propose_kv(b, &KvInput::put("x", "1"));
    cluster.stabilize();
    assert!(matches!(
        cluster.outcome(x),
        Some(ProposalOutcome::Applied { .. })
    ));

    cluster.crash(c);
    cluster.restart_amnesiac(c);
    cluster.heal(cut);
    let cut_b = cluster.isolate(b);
    assert_eq!(
        cluster.node(1).role(),
        Role::Leader,
        "n1 still leads term 1"
    );
    let y = cluster.propose_kv(1, &KvInput::put("y", "1"));
    // Before any tick: n1 has not recorded n3's new life yet (that waits for its next tick).
    cluster.stabilize();
    // Nor do its heartbeat answers confirm n1's leadership for a read: n1 would answer from
    // its own state, without `x`.
    let read = cluster.read_kv(1, "x");
    cluster.stabilize();
    assert!(
        !matches!(cluster.outcome(read), Some(ProposalOutcome::Read { .. })),
        "a read confirmed by an amnesiac node's heartbeat answer: {:?}",
        cluster.outcome(read)
    );
    for _ in 0..20 {
        cluster.tick(1, 1);
        cluster.tick(c, 1);
        cluster.stabilize();
    }
    assert!(
        !matches!(cluster.outcome(y), Some(ProposalOutcome::Applied { .. })),
        "y committed with only an amnesiac node's acknowledgement: {:?}",
        cluster.outcome(y)
    );
    cluster.heal(cut_b);
    for _ in 0..300 {
        cluster.tick_all(1);
        cluster.stabilize();
    }
    for node in 1..=3 {
        assert_eq!(
            cluster.kv(node).get("x").map(|v| &v[..]),
            Some(&b"1"[..]),
            "n{node} holds x"
        );
    }
}

/// Seed 1523 of 20000. A learner that heard its leader once and then nothing must still answer
/// a vote after a silent election timeout: a single voter that proposed promoting it and then
/// stepped down (CheckQuorum in the joint configuration) needs exactly that vote. The learner
/// may not campaign, so at each timeout it only restarted its clock; it kept the leader it no
/// longer heard, and CheckQuorum's promise to that leader (`leader known and the clock below
/// the minimum timeout`) refused every vote for ever. Now it forgets the silent leader.
#[test]
fn a_learner_that_no_longer_hears_its_leader_answers_votes() {
    let restore = bootstrapped(&[1], &[2], 1);
    let mut config = Config::new(NodeId(2), Vec::new());
    config.seed = 11;
    config.check_quorum = true;
    let timeout_max = config.election_timeout_ticks_max;
    let mut learner = RawNode::new(config, restore).expect("a valid node");
    let from_leader = |body| Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(2),
        incarnation: raft_core::Incarnation(0),
        body,
    };
    learner.step(from_leader(MessageBody::Heartbeat {
        commit: LogIndex(1),
        read_seq: 0,
        follower_incarnation: raft_core::Incarnation(0),
    }));
    let answer = learner.ready();
    learner.persisted(answer.number);
    assert_eq!(
        learner.leader(),
        Some(NodeId(1)),
        "the learner knows its leader"
    );

    // The leader falls silent (it lost its joint quorum) and campaigns in term 3, asking the
    // learner, a voter of the incoming half, for its vote. Past one silent election timeout,
    // whenever the pre-vote comes, it is granted (a pre-vote changes nothing on the receiver,
    // so each tick can ask again).
    let vote_request = |pre_vote| Message {
        term: Term(3),
        ..from_leader(MessageBody::VoteRequest {
            pre_vote,
            last_log_index: LogIndex(2),
            last_log_term: Term(2),
            transfer: false,
        })
    };
    let granted = |ready: &Ready, pre: bool| {
        ready
            .messages
            .iter()
            .chain(ready.messages_after_write.iter())
            .any(|m| {
                matches!(m.body, MessageBody::VoteResponse { granted: true, pre_vote, .. } if pre_vote == pre)
            })
    };
    for _ in 0..=timeout_max {
        learner.tick();
        let ready = learner.ready();
        learner.persisted(ready.number);
    }
    for tick in 0..2 * timeout_max {
        learner.tick();
        learner.step(vote_request(true));
        let ready = learner.ready();
        assert!(
            granted(&ready, true),
            "tick {tick} after the silent timeout: the pre-vote is refused: {ready:?}"
        );
        learner.persisted(ready.number);
    }
    assert_eq!(learner.leader(), None, "a silent leader is forgotten");
    learner.step(vote_request(false));
    let ready = learner.ready();
    assert!(granted(&ready, false), "the vote is granted: {ready:?}");
}
