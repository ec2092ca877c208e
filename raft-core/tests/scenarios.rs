//! Scenario tests: the situations the Raft paper (and the thesis, for PreVote, CheckQuorum,
//! reads without the log and leadership transfer) describes, plus the protocol's own promises
//! about proposals and the failures other Raft implementations shipped, each written as a short
//! transcript against the interactive simulator (`raft_core::testkit::sim::Cluster`, manual
//! timing: nothing moves unless the test says so). The simulator checks the safety invariants
//! after every step, so each scenario is also a safety check.

use bytes::Bytes;
use raft_core::message::{AppendResponse, MessageBody};
use raft_core::protocol::{ProposeError, Restore, Role, TransferError};
use raft_core::testkit::linearizability::{KvInput, KvOutput};
use raft_core::testkit::sim::{Cluster, ProposalOutcome};
use raft_core::{
    Entry, EntryPayload, HardState, LogIndex, Message, NodeId, ProposalId, SessionId, SessionTag,
    Term,
};

/// A log whose entry `k + 1` has term `terms[k]`, each carrying a distinct command.
fn log(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(k, term)| Entry {
            term: Term(*term),
            index: LogIndex(k as u64 + 1),
            payload: EntryPayload::Command(Bytes::from(format!("entry {} of term {term}", k + 1))),
        })
        .collect()
}

/// A node's disk: `terms` as its log, `term` as its current term, having voted for `vote`.
fn disk(terms: &[u64], term: u64, vote: Option<u64>, commit: u64) -> Restore {
    Restore {
        snapshot: None,
        hard_state: HardState {
            term: Term(term),
            vote: vote.map(NodeId),
            commit: LogIndex(commit),
        },
        entries: log(terms),
        applied: LogIndex(0),
    }
}

/// Delivers rounds of messages until none is left, holding back from each node in `from` the
/// appends that carry an entry of `term` and that it would accept (rejected probes still go
/// through, so the leader can find where the logs match).
fn stabilize_holding_back(cluster: &mut Cluster, term: u64, from: &[u64]) {
    for _ in 0..1000 {
        let last: Vec<(NodeId, LogIndex)> = cluster
            .live_nodes()
            .into_iter()
            .map(|n| (n, cluster.node(n).last_index()))
            .collect();
        cluster.drop_in_flight(|m| match &m.body {
            MessageBody::Append {
                prev_log_index,
                entries,
                ..
            } => {
                let accepts = last.iter().any(|(n, l)| *n == m.to && l >= prev_log_index);
                from.contains(&m.to.0) && accepts && entries.iter().any(|e| e.term == Term(term))
            }
            _ => false,
        });
        if cluster.in_flight().is_empty() {
            return;
        }
        cluster.deliver_all();
    }
    panic!("messages kept flowing");
}

fn is_forward(message: &Message) -> bool {
    matches!(message.body, MessageBody::Forward { .. })
}

/// The five servers of Figure 8 at the moment of (c): S1 led term 2 and put index 2 on S2; S5
/// led term 3 and put its own index 2 on itself only (S3 and S4 voted for it). Every append
/// carries one entry, so the test can let an old-term entry through and hold a new one back.
fn figure_8() -> Cluster {
    Cluster::builder(5)
        .config(|c| {
            c.pre_vote = false; // the paper's algorithm: plain elections
            c.check_quorum = false;
            c.message_bytes_max = 1;
        })
        .restore(1, disk(&[1, 2], 3, None, 1))
        .restore(2, disk(&[1, 2], 2, Some(1), 1))
        .restore(3, disk(&[1], 3, Some(5), 1))
        .restore(4, disk(&[1], 3, Some(5), 1))
        .restore(5, disk(&[1, 3], 3, Some(5), 1))
        .build()
}

/// §5.4.2, Figure 8 (c)-(d): an entry of an earlier term is on a majority, yet the leader does
/// not count it committed, and rightly so: a later leader overwrites it.
#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let mut cluster = figure_8();
    cluster.crash(5);
    cluster.campaign(1);
    stabilize_holding_back(&mut cluster, 4, &[2, 3, 4]); // i3/t4 stays on S1
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), Term(4));
    for node in [1, 2, 3, 4] {
        assert_eq!(cluster.log_terms(node)[..2], [1, 2], "n{node} holds i2/t2");
    }
    assert_eq!(
        cluster.node(1).commit_index(),
        LogIndex(1),
        "i2/t2 must not commit"
    );

    // (d): S1 crashes; S5 wins term 5 with the votes of S2, S3, S4 and replaces index 2.
    cluster.crash(1);
    cluster.restart(5);
    cluster.campaign(5); // term 4: S2-S4 already voted in term 4
    cluster.stabilize();
    cluster.campaign(5); // term 5
    cluster.stabilize();
    assert_eq!(cluster.node(5).role(), Role::Leader);
    assert_eq!(cluster.node(5).term(), Term(5));
    for node in [2, 3, 4, 5] {
        assert_eq!(cluster.log_terms(node), [1, 3, 5], "n{node}");
        assert_eq!(cluster.node(node).commit_index(), LogIndex(3));
    }
}

/// §5.4.2, Figure 8 (e): once an entry of the leader's own term is on a majority, it commits,
/// and the old-term entry before it with it; S5 can then never win.
#[test]
fn figure_8_a_current_term_entry_commits_the_old_one_with_it() {
    let mut cluster = figure_8();
    cluster.crash(5);
    cluster.campaign(1);
    stabilize_holding_back(&mut cluster, 4, &[4]); // i3/t4 reaches S2 and S3
    assert_eq!(cluster.log_terms(2), [1, 2, 4]);
    assert_eq!(cluster.log_terms(3), [1, 2, 4]);
    assert_eq!(
        cluster.node(1).commit_index(),
        LogIndex(3),
        "i3/t4 commits i2/t2 too"
    );

    cluster.crash(1);
    cluster.restart(5);
    for _ in 0..3 {
        cluster.campaign(5);
        cluster.stabilize();
        assert_ne!(
            cluster.node(5).role(),
            Role::Leader,
            "S5 lacks committed entries"
        );
    }
    assert_eq!(cluster.log_terms(2), [1, 2, 4], "committed entries stay");
}

/// §5.4.1, the election restriction: a candidate whose log lacks committed entries is refused
/// by every voter that has them.
#[test]
fn election_restriction_a_stale_log_cannot_win() {
    let mut cluster = Cluster::builder(3)
        .config(|c| {
            c.pre_vote = false; // let the stale node really ask for votes
            c.check_quorum = false;
        })
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    cluster.isolate(3);
    cluster.propose(1, "written while n3 is away");
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), LogIndex(2));
    assert_eq!(cluster.node(3).last_index(), LogIndex(1), "n3 missed it");

    cluster.heal_all();
    cluster.campaign(3);
    let delivered = cluster.deliver_all(); // n3's vote requests
    assert_eq!(delivered.len(), 2);
    let answers = cluster.deliver_all();
    let refusals = answers
        .iter()
        .filter(|m| {
            m.to == NodeId(3)
                && matches!(
                    m.body,
                    MessageBody::VoteResponse {
                        pre_vote: false,
                        granted: false,
                        ..
                    }
                )
        })
        .count();
    assert_eq!(refusals, 2, "both voters refuse: {answers:?}");
    assert_ne!(cluster.node(3).role(), Role::Leader);

    // A node with the full log wins the next term and brings n3 up to date.
    cluster.campaign(1);
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.log(3), cluster.log(1));
}

/// Raft thesis §9.6, PreVote: a node cut off for a long time keeps failing its pre-votes
/// without raising its term, so when it comes back the leader keeps leading.
#[test]
fn a_partitioned_node_rejoining_under_prevote_does_not_disrupt_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let term = cluster.node(1).term();

    cluster.isolate(3);
    for _ in 0..200 {
        cluster.tick_all(1);
        cluster.stabilize(); // n3's pre-votes are lost on the cut
    }
    assert_eq!(
        cluster.node(3).term(),
        term,
        "pre-votes do not raise the term"
    );
    assert_eq!(cluster.node(3).role(), Role::PreCandidate);

    cluster.heal_all();
    for _ in 0..200 {
        cluster.tick_all(1);
        cluster.stabilize();
    }
    assert_eq!(cluster.node(1).role(), Role::Leader);
    for node in 1..=3 {
        assert_eq!(cluster.node(node).term(), term, "n{node}'s term");
        assert_eq!(
            cluster.node(node).leader(),
            Some(NodeId(1)),
            "n{node}'s leader"
        );
    }
}

/// Raft thesis §6.2, CheckQuorum: a leader that hears from no majority for an election timeout
/// steps down by itself (in the same term), and the majority elects another.
#[test]
fn a_leader_cut_off_from_the_majority_steps_down_under_check_quorum() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let term = cluster.node(1).term();
    let timeout = cluster.node(1).config().election_timeout_ticks_min;

    cluster.isolate(1);
    let mut stepped_down_after = None;
    for tick in 1..=4 * timeout {
        cluster.tick(1, 1);
        cluster.stabilize();
        if cluster.node(1).role() != Role::Leader {
            stepped_down_after = Some(tick);
            break;
        }
    }
    let ticks = stepped_down_after.expect("n1 kept leading without a quorum");
    assert!(ticks <= 2 * timeout, "stepped down after {ticks} ticks");
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(
        cluster.node(1).term(),
        term,
        "stepping down does not change the term"
    );
    assert_eq!(cluster.node(1).leader(), None);

    for _ in 0..100 {
        cluster.tick(2, 1);
        cluster.tick(3, 1);
        cluster.stabilize();
    }
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_ne!(leaders[0].0, NodeId(1));
    assert!(leaders[0].1 > term);
}

/// §5.3 with the optimization at its end: a follower whose log conflicts over many entries is
/// caught up with one rejected probe per conflicting term, not one per entry (Figure 7 (f)).
#[test]
fn a_lagging_follower_is_caught_up_by_backtracking_a_term_at_a_time() {
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let follower_log = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]; // Figure 7 (f)
    let mut cluster = Cluster::builder(3)
        .restore(1, disk(&leader_log, 6, None, 0))
        .restore(2, disk(&leader_log, 6, None, 0))
        .restore(3, disk(&follower_log, 3, None, 0))
        .build();
    cluster.campaign(1);
    let mut rejections = 0;
    let mut appends_to_3 = 0;
    for _ in 0..100 {
        let delivered = cluster.deliver_all();
        if delivered.is_empty() {
            break;
        }
        for m in &delivered {
            if m.from == NodeId(3)
                && matches!(
                    m.body,
                    MessageBody::AppendResponse(AppendResponse::Rejected { .. })
                )
            {
                rejections += 1;
            }
            if m.to == NodeId(3) && matches!(m.body, MessageBody::Append { .. }) {
                appends_to_3 += 1;
            }
        }
    }
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.log(3), cluster.log(1), "n3 caught up");
    assert_eq!(cluster.log_terms(3), [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7]);
    let conflicting_terms = 2; // n3's terms 2 and 3, over 8 entries
    assert!(rejections >= 1, "the first probe must be rejected");
    assert!(
        rejections <= conflicting_terms,
        "{rejections} rejections for {conflicting_terms} conflicting terms"
    );
    assert!(
        appends_to_3 <= 1 + conflicting_terms + 1,
        "{appends_to_3} appends"
    );
}

/// A follower forwards a proposal to the leader; its proposer gets the applied result as if it
/// had asked the leader.
#[test]
fn a_follower_forwards_a_proposal_and_its_proposer_gets_the_result() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let put = cluster.propose_kv(2, &KvInput::put("x", "1"));
    let forwarded = cluster.deliver_all();
    assert!(
        forwarded.iter().any(|m| is_forward(m) && m.to == NodeId(1)),
        "{forwarded:?}"
    );
    cluster.stabilize();
    let read = cluster.propose_kv(3, &KvInput::get("x"));
    cluster.stabilize();
    match (cluster.outcome(put), cluster.outcome(read)) {
        (
            Some(ProposalOutcome::Applied {
                node: put_node,
                output: Some(KvOutput::Ok),
                ..
            }),
            Some(ProposalOutcome::Applied {
                node: read_node,
                output: Some(read_output),
                ..
            }),
        ) => {
            assert_eq!((*put_node, *read_node), (NodeId(2), NodeId(3)));
            assert_eq!(read_output, &KvOutput::found("1"));
        }
        other => panic!("unexpected outcomes {other:?}"),
    }
}

/// With no leader, a proposal waits `proposal_wait_ticks` for one, then fails with `NoLeader`:
/// a definite error (it was never appended).
#[test]
fn with_no_leader_a_proposal_fails_with_no_leader_after_the_wait() {
    let mut cluster = Cluster::new(3);
    let wait = cluster.node(1).config().proposal_wait_ticks;
    let proposal = cluster.propose(1, "nobody leads");
    cluster.tick(1, wait - 1); // its elections never get out: nothing is delivered
    assert_eq!(cluster.outcome(proposal), None, "still waiting");
    cluster.tick(1, 1);
    match cluster.outcome(proposal) {
        Some(ProposalOutcome::Failed { error, .. }) => {
            assert_eq!(error, &ProposeError::NoLeader);
            assert!(error.is_definite());
        }
        other => panic!("expected NoLeader, got {other:?}"),
    }
}

/// The leader holds at most `uncommitted_bytes_max` of uncommitted commands; past it a
/// proposal is refused with `UncommittedFull`, and accepted again once the log commits.
#[test]
fn the_uncommitted_limit_refuses_proposals_until_the_log_commits() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.uncommitted_bytes_max = 100)
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    let forty = Bytes::from(vec![b'x'; 40]);
    let first = cluster.propose(1, forty.clone());
    let second = cluster.propose(1, forty.clone()); // 80 bytes uncommitted
    let third = cluster.propose(1, forty.clone()); // 120 > 100: refused
    assert!(matches!(
        cluster.outcome(third),
        Some(ProposalOutcome::Failed {
            error: ProposeError::UncommittedFull,
            ..
        })
    ));
    cluster.stabilize();
    for proposal in [first, second] {
        assert!(matches!(
            cluster.outcome(proposal),
            Some(ProposalOutcome::Applied { .. })
        ));
    }
    let fourth = cluster.propose(1, forty);
    cluster.stabilize();
    assert!(matches!(
        cluster.outcome(fourth),
        Some(ProposalOutcome::Applied { .. })
    ));
}

/// Occurrences of `command` in `node`'s log.
/// Payload bytes of the entries node `node` holds in memory.
fn log_bytes(cluster: &Cluster, node: u64) -> usize {
    let raw = cluster.node(node);
    (raw.first_index().0..=raw.last_index().0)
        .map(|k| {
            raw.entry(LogIndex(k))
                .expect("held")
                .payload
                .payload_bytes()
        })
        .sum()
}

/// `log_bytes_max` bounds the in-memory log (and the store, which purges with it) even with
/// the entry-count policy off (`snapshot_interval_entries = 0`, which used to leave the log
/// unbounded): past the bound each node takes a snapshot and compacts, keeping a tail of at
/// most half the bound. The commands are 100 bytes, so a hundred of them are five times it.
#[test]
fn the_log_byte_bound_takes_snapshots_with_the_entry_count_policy_off() {
    const LOG_BYTES_MAX: usize = 2_000;
    let mut cluster = Cluster::builder(3)
        .config(|c| {
            c.snapshot_interval_entries = 0;
            c.log_bytes_max = LOG_BYTES_MAX;
            c.proposal_bytes_max = 100;
        })
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    let command = Bytes::from(vec![b'x'; 100]);
    let mut held_max = 0;
    for _ in 0..100 {
        cluster.propose(1, command.clone());
        cluster.stabilize();
        for node in 1..=3 {
            held_max = held_max.max(log_bytes(&cluster, node));
        }
    }
    // Applied entries held stay within the bound; at most the last apply batch (one entry
    // here, one per stabilize) is over it until the snapshot it asks for compacts.
    assert!(
        held_max <= LOG_BYTES_MAX + 100,
        "a node held {held_max} bytes of log"
    );
    for node in 1..=3 {
        let raw = cluster.node(node);
        assert!(raw.snapshot().is_some(), "n{node} took a snapshot");
        assert!(raw.first_index() > LogIndex(50), "n{node} compacted");
    }
    assert_eq!(cluster.committed_commands().len(), 100);
}

fn copies_in_log(cluster: &Cluster, node: u64, command: &Bytes) -> usize {
    cluster
        .log(node)
        .iter()
        .filter(|e| e.payload == EntryPayload::Command(command.clone()))
        .count()
}

/// A forward the network duplicates reaches the leader twice; the leader appends it once and
/// answers the copy with the same placement.
#[test]
fn a_duplicated_forward_is_applied_once() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let command = raft_core::testkit::sim::kv::encode(&KvInput::put("x", "once"));
    let proposal = cluster.propose(2, command.clone());
    assert_eq!(cluster.duplicate_in_flight(is_forward), 1);
    let delivered = cluster.deliver_all();
    assert_eq!(delivered.iter().filter(|m| is_forward(m)).count(), 2);
    cluster.stabilize();
    assert_eq!(copies_in_log(&cluster, 1, &command), 1);
    assert!(matches!(
        cluster.outcome(proposal),
        Some(ProposalOutcome::Applied {
            node: NodeId(2),
            ..
        })
    ));
}

/// The same, when the copy arrives after the leader stepped down (CheckQuorum, same term): its
/// refusal must not send the follower to forward the command again, since the first copy is in
/// the log and may commit.
#[test]
fn a_duplicated_forward_refused_after_a_step_down_is_applied_once() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let command = raft_core::testkit::sim::kv::encode(&KvInput::put("x", "once"));
    let proposal = cluster.propose(2, command.clone());
    cluster.duplicate_in_flight(is_forward);
    let mut first = true;
    cluster.deliver_matching(|m| is_forward(m) && std::mem::take(&mut first));
    // n1 appended the command; only n3 hears of it, and the answer to n2 is lost.
    cluster.drop_in_flight(|m| matches!(m.body, MessageBody::ForwardResponse { .. }));
    cluster.deliver_matching(|m| m.to == NodeId(3) && !is_forward(m));
    cluster.deliver_matching(|m| m.from == NodeId(3));
    assert_eq!(copies_in_log(&cluster, 3, &command), 1);

    // n1 hears from nobody and steps down in the same term.
    let timeout = cluster.node(1).config().election_timeout_ticks_min;
    for _ in 0..2 * timeout {
        cluster.tick(1, 1);
        cluster.drop_in_flight(|m| !is_forward(m));
    }
    assert_eq!(cluster.node(1).role(), Role::Follower);

    // n2 gives up on n1 (a pre-vote round forgets the leader), then the late copy reaches n1.
    cluster.campaign(2);
    cluster.drop_in_flight(|m| !is_forward(m));
    cluster.deliver_all(); // the copy, to n1 (now a follower)
    cluster.deliver_all(); // n1's answer, to n2

    // n3, which holds the command, leads the next term and everything settles.
    cluster.campaign(3);
    cluster.stabilize();
    for _ in 0..50 {
        cluster.tick_all(1);
        cluster.stabilize();
    }
    assert_eq!(cluster.leader(), Some(NodeId(3)));
    for node in 1..=3 {
        assert_eq!(
            copies_in_log(&cluster, node, &command),
            1,
            "n{node}'s log holds the command {} times",
            copies_in_log(&cluster, node, &command)
        );
    }
    assert!(
        !matches!(cluster.outcome(proposal), Some(ProposalOutcome::Failed { error, .. }) if error.is_definite()),
        "the command is in the log: it may not be reported as never applied"
    );
}

/// A follower forwards a command to the leader, which appends it (only n3 hears of it) and
/// dies before its answer reaches the follower. Nobody will ever answer that forward. Once a
/// leader of a newer term has committed an entry here, everything the dead leader placed that
/// survives is committed below it (here the command itself), so the forward ends at once with
/// an outcome-unknown error instead of waiting out `proposal_wait_ticks`.
#[test]
fn a_forward_to_a_dead_leader_ends_unknown_once_a_newer_leader_commits_here() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.check_quorum = false) // no lease: n3 may be elected at once
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    let command = raft_core::testkit::sim::kv::encode(&KvInput::put("x", "lost answer"));
    let proposal = cluster.propose(2, command.clone());
    cluster.deliver_matching(is_forward); // n1 appends it at i2
    cluster.drop_in_flight(|m| matches!(m.body, MessageBody::ForwardResponse { .. }));
    cluster.deliver_matching(|m| m.to == NodeId(3)); // only n3 holds i2
    cluster.drop_in_flight(|_| true);
    assert_eq!(copies_in_log(&cluster, 3, &command), 1);
    assert_eq!(copies_in_log(&cluster, 2, &command), 0);
    cluster.crash(1);

    cluster.campaign(3);
    cluster.stabilize(); // n3 leads term 2 and commits its blank entry, with i2 below it
    assert_eq!(cluster.leader(), Some(NodeId(3)));
    let node = cluster.node(2);
    assert_eq!(node.entry_term(node.commit_index()), Some(Term(2)));
    assert_eq!(
        copies_in_log(&cluster, 2, &command),
        1,
        "the command committed"
    );
    match cluster.outcome(proposal) {
        Some(ProposalOutcome::Failed { error, .. }) => {
            assert_eq!(error, &ProposeError::LeaderReplaced);
            assert!(!error.is_definite(), "the command did commit");
        }
        other => panic!("the forward should end at once, not after the wait: {other:?}"),
    }
}

/// The rule's other half: a newer term alone, with nothing of it committed here yet, does not
/// end a forward (the old leader's entries may still commit, and their answer with them).
#[test]
fn a_forward_waits_while_the_newer_leader_has_not_committed_here() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.check_quorum = false)
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    let proposal = cluster.propose(2, "answer lost");
    cluster.deliver_matching(is_forward);
    cluster.drop_in_flight(|_| true);
    cluster.crash(1);
    cluster.campaign(3);
    // n2 votes (pre-vote, then vote); n3 wins, but n2 never hears of its blank entry.
    for _ in 0..10 {
        cluster.drop_in_flight(|m| {
            matches!(
                m.body,
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
            )
        });
        cluster.deliver_all();
    }
    assert_eq!(cluster.node(3).role(), Role::Leader);
    assert_eq!(cluster.node(2).term(), Term(2));
    assert_eq!(
        cluster.outcome(proposal),
        None,
        "term 2 has committed nothing here"
    );
}

/// A client in a session whose answer is lost retries the same (session, sequence) at another
/// node: the command is in the log twice, the state machines apply it once (the session table
/// answers the copy), and the retry gets the first answer. A compare-and-swap shows it: applied
/// twice, the copy would answer `Swapped(false)`.
#[test]
fn a_retry_in_a_session_applies_once_and_gets_the_first_answer() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let tag = SessionTag {
        session: SessionId(77),
        sequence: 1,
    };
    let swap = KvInput::cas("x", None, "once");
    let first = cluster.propose_kv_in_session(2, tag, &swap);
    cluster.deliver_matching(is_forward); // n1 appends it; its answer to n2 is lost
    cluster.drop_in_flight(|m| matches!(m.body, MessageBody::ForwardResponse { .. }));
    cluster.stabilize();
    assert_eq!(
        cluster.outcome(first),
        None,
        "n2 never learnt where its command went"
    );

    let retry = cluster.propose_kv_in_session(3, tag, &swap);
    cluster.stabilize();
    let commands: Vec<LogIndex> = cluster
        .log(1)
        .iter()
        .filter(|e| matches!(&e.payload, EntryPayload::SessionCommand(c) if c.tag == tag))
        .map(|e| e.index)
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "the command and its retry are both in the log"
    );
    match cluster.outcome(retry) {
        Some(ProposalOutcome::Applied {
            output,
            duplicate_of,
            index,
            ..
        }) => {
            assert_eq!(output, &Some(KvOutput::Swapped(true)), "the first answer");
            assert_eq!(*duplicate_of, Some(commands[0]));
            assert_eq!(*index, commands[1]);
        }
        other => panic!("the retry was not answered: {other:?}"),
    }
    for node in 1..=3 {
        assert_eq!(
            cluster.kv(node).get("x").map(|v| &v[..]),
            Some(&b"once"[..])
        );
        assert_eq!(cluster.sessions(node).last_sequence(tag.session), Some(1));
    }
}

/// Raft §5.2 (and Figure 2, "persistent state... updated on stable storage before responding"):
/// a granted vote leaves only after the hard state naming it is written. In the ready, the vote
/// travels in `messages_after_write` and the ready's write carries that hard state.
#[test]
fn a_vote_leaves_only_with_the_hard_state_that_records_it() {
    let mut cluster = Cluster::builder(3).record_readies(true).build();
    cluster.campaign(1);
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Leader);
    let mut votes_seen = 0;
    for ready in cluster.ready_records() {
        let granted = |m: &&Message| {
            matches!(
                m.body,
                MessageBody::VoteResponse {
                    pre_vote: false,
                    granted: true,
                    ..
                }
            )
        };
        assert_eq!(
            ready.messages.iter().filter(granted).count(),
            0,
            "{ready:?}"
        );
        for vote in ready.messages_after_write.iter().filter(granted) {
            votes_seen += 1;
            let hard_state = ready
                .write
                .hard_state
                .expect("the vote's hard state is written");
            assert_eq!(hard_state.term, vote.term, "{ready:?}");
            assert_eq!(hard_state.vote, Some(vote.to), "{ready:?}");
        }
    }
    assert_eq!(votes_seen, 2, "n2 and n3 each voted once");
}

/// Found by the simulation (seed 49): a follower's forward is placed by the leader at an index
/// the follower's log does not reach; the follower then leads the next term and puts its own
/// proposal at that index. The first proposal's entry may still commit elsewhere or not, so it
/// ends `OutcomeUnknown` (it used to panic the node); the second one applies.
#[test]
fn a_proposal_displaced_at_its_index_by_a_new_leader_ends_unknown() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.check_quorum = false) // no lease: n1 may campaign at once
        .build();
    cluster.campaign(2);
    cluster.stabilize();
    cluster.propose(3, "from n3"); // the leader puts it at i2
    cluster.deliver_matching(is_forward);
    let displaced = cluster.propose(1, "from n1"); // ... and this one at i3
    cluster.deliver_matching(is_forward);
    cluster.drop_in_flight(|m| matches!(m.body, MessageBody::Append { .. }));
    cluster.stabilize(); // n1 learns its proposal is at i3/t1; nobody else holds i2 or i3
    assert_eq!(cluster.node(1).last_index(), LogIndex(1));

    cluster.crash(2);
    cluster.campaign(1);
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Leader); // i2 is its blank entry
    let own = cluster.propose(1, "n1 as leader"); // at i3 again, in term 2
    cluster.stabilize();
    assert!(matches!(
        cluster.outcome(displaced),
        Some(ProposalOutcome::Failed {
            error: ProposeError::OutcomeUnknown,
            ..
        })
    ));
    assert!(matches!(
        cluster.outcome(own),
        Some(ProposalOutcome::Applied {
            index: LogIndex(3),
            ..
        })
    ));
}

// ----- reads without the log (Raft thesis §6.4) --------------------------------------------
//
// `Cluster::read_kv` asks a node for a read index and serves the read from its state machine
// once it applied that far. The simulator fails any read whose index is below an entry known
// committed when the read was asked ("stale read"), so a scenario that lets one through fails
// even before its own assertions.

/// The read index and value a read without the log returned; `None` while it waits.
fn read_answer(cluster: &Cluster, read: ProposalId) -> Option<(LogIndex, KvOutput)> {
    match cluster.outcome(read)? {
        ProposalOutcome::Read { index, output, .. } => Some((*index, output.clone())),
        other => panic!("read {read:?} ended {other:?}"),
    }
}

/// Why a read without the log failed; `None` while it waits.
fn read_failure(cluster: &Cluster, read: ProposalId) -> Option<ProposeError> {
    match cluster.outcome(read)? {
        ProposalOutcome::Failed { error, .. } => Some(error.clone()),
        other => panic!("read {read:?} ended {other:?}"),
    }
}

/// Where a proposal applied.
fn applied_at(cluster: &Cluster, proposal: ProposalId) -> LogIndex {
    match cluster.outcome(proposal) {
        Some(ProposalOutcome::Applied { index, .. }) => *index,
        other => panic!("proposal {proposal:?} did not apply: {other:?}"),
    }
}

fn is_append(message: &Message) -> bool {
    matches!(message.body, MessageBody::Append { .. })
}

fn is_read_index_response(message: &Message) -> bool {
    matches!(message.body, MessageBody::ReadIndexResponse { .. })
}

fn is_timeout_now(message: &Message) -> bool {
    matches!(message.body, MessageBody::TimeoutNow)
}

/// Raft thesis §6.4 step 1: a new leader does not know the commit index of the terms before
/// it until an entry of its own term commits. n2 holds x=1 at i2, which n1 committed and
/// acknowledged, but n2 never heard it was committed; as the new leader it must not answer a
/// read with its stale commit index (i1, where x is absent), even after a heartbeat round
/// confirms it leads. The read waits for n2's blank entry to commit.
#[test]
fn a_read_index_before_the_new_leader_commits_in_its_term_waits() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.check_quorum = false) // no lease: n2 may campaign at once
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    let put = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.deliver_matching(|m| m.to == NodeId(2)); // i2 reaches n2 ...
    cluster.deliver_matching(|m| m.from == NodeId(2)); // ... and n1 commits it
    assert_eq!(applied_at(&cluster, put), LogIndex(2));
    cluster.drop_in_flight(|_| true); // nobody else hears i2 committed
    cluster.crash(1);
    assert_eq!(cluster.node(2).commit_index(), LogIndex(1));

    cluster.campaign(2);
    cluster.deliver_all(); // pre-vote
    cluster.deliver_all(); // pre-vote granted
    cluster.deliver_all(); // vote
    cluster.deliver_all(); // vote granted
    assert_eq!(cluster.node(2).role(), Role::Leader);
    assert_eq!(cluster.node(2).commit_index(), LogIndex(1));

    let read = cluster.read_kv(2, "x");
    // Heartbeat rounds get answered, but the appends carrying n2's blank entry are held back.
    let heartbeat = cluster.node(2).config().heartbeat_interval_ticks;
    let mut heartbeats_answered = 0;
    for _ in 0..3 {
        cluster.tick(2, heartbeat);
        for _ in 0..3 {
            cluster.drop_in_flight(is_append);
            let delivered = cluster.deliver_all();
            heartbeats_answered += delivered
                .iter()
                .filter(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. }))
                .count();
        }
    }
    assert!(heartbeats_answered >= 3, "{heartbeats_answered} answers");
    assert_eq!(
        cluster.outcome(read),
        None,
        "the read waits for i3/t2 to commit"
    );

    cluster.tick(2, heartbeat); // the next answers bring appends, delivered this time
    cluster.stabilize();
    let (index, value) = read_answer(&cluster, read).expect("answered once i3 committed");
    assert!(index >= LogIndex(3), "read index {index}");
    assert_eq!(value, KvOutput::found("1"));
}

/// A retried read under the same ID (or a restarted node counting its IDs from 1 again) must
/// not take the answer to an earlier request: that answer's index predates a write the retry
/// must see. n2's read gets the read index i2 from n1, but the answer is held up until n2 gave
/// up; x=2 commits at i3; the client retries the read under the same ID, and the old answer
/// arrives first. It used to answer the retry with i2 (x=1).
#[test]
fn a_retried_read_index_request_does_not_return_an_older_index() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.proposal_wait_ticks = 5) // n2 gives up before any election timeout
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    let first = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.stabilize();
    assert_eq!(applied_at(&cluster, first), LogIndex(2));

    let read = cluster.read_kv(2, "x");
    cluster.deliver_all(); // n2 asks n1; n1 sends a heartbeat round
    cluster.deliver_all(); // n2 and n3 answer it
    cluster.deliver_all(); // the round is confirmed; n1 answers n2
    let held: Vec<Message> = cluster
        .in_flight()
        .into_iter()
        .filter(is_read_index_response)
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(matches!(
        held[0].body,
        MessageBody::ReadIndexResponse {
            index: Some(LogIndex(2)),
            ..
        }
    ));
    cluster.tick(2, 5);
    assert_eq!(
        read_failure(&cluster, read),
        Some(ProposeError::ReadAborted)
    );

    let second = cluster.propose_kv(1, &KvInput::put("x", "2"));
    for _ in 0..10 {
        cluster.deliver_matching(|m| !is_read_index_response(m));
    }
    assert_eq!(applied_at(&cluster, second), LogIndex(3));
    assert_eq!(cluster.kv(2).applied_index(), LogIndex(3));

    cluster.retry_read(2, read, "x");
    let late = cluster.deliver_matching(|m| *m == held[0]);
    assert_eq!(late.len(), 1, "the old answer reached n2");
    assert_eq!(
        cluster.outcome(read),
        None,
        "it answers the old request only"
    );
    cluster.stabilize();
    let (index, value) = read_answer(&cluster, read).expect("the retry is answered");
    assert!(index >= LogIndex(3), "read index {index}");
    assert_eq!(value, KvOutput::found("2"));
}

/// A deposed leader never answers a read: n1 is cut off, n2 and n3 elect a leader and commit
/// x=2, and n1, which still believes it leads, gets no majority for its heartbeat rounds. With
/// CheckQuorum it steps down and fails the read; without it the read waits until n1 hears of
/// the new term.
#[test]
fn a_deposed_leader_never_answers_a_read() {
    for check_quorum in [true, false] {
        let mut cluster = Cluster::builder(3)
            .config(|c| c.check_quorum = check_quorum)
            .build();
        cluster.campaign(1);
        cluster.stabilize();
        cluster.propose_kv(1, &KvInput::put("x", "1"));
        cluster.stabilize();
        let old_term = cluster.node(1).term();

        let cut = cluster.isolate(1);
        for _ in 0..100 {
            cluster.tick(2, 1);
            cluster.tick(3, 1);
            cluster.stabilize();
        }
        let new_leader = cluster.leader().expect("n2 and n3 elect a leader");
        assert_ne!(new_leader, NodeId(1));
        let put = cluster.propose_kv(new_leader, &KvInput::put("x", "2"));
        cluster.stabilize();
        applied_at(&cluster, put);
        assert_eq!(cluster.node(1).role(), Role::Leader, "n1 has not ticked");
        assert_eq!(cluster.node(1).term(), old_term);

        let read = cluster.read_kv(1, "x");
        let timeout = cluster.node(1).config().election_timeout_ticks_min;
        for _ in 0..4 * timeout {
            cluster.tick(1, 1);
            cluster.stabilize();
            let answered = matches!(cluster.outcome(read), Some(ProposalOutcome::Read { .. }));
            assert!(!answered, "check_quorum {check_quorum}");
        }
        if check_quorum {
            assert_ne!(cluster.node(1).role(), Role::Leader, "stepped down");
            assert_eq!(
                read_failure(&cluster, read),
                Some(ProposeError::ReadAborted)
            );
        } else {
            assert_eq!(cluster.node(1).role(), Role::Leader, "it never learnt");
            assert_eq!(cluster.outcome(read), None);
            cluster.heal(cut);
            cluster.tick(1, cluster.node(1).config().heartbeat_interval_ticks);
            cluster.stabilize();
            assert_eq!(cluster.node(1).role(), Role::Follower);
            assert_eq!(
                read_failure(&cluster, read),
                Some(ProposeError::ReadAborted)
            );
        }
    }
}

/// A 3-node cluster with lease reads whose leader n1 holds x=1 at i2 and has just had a
/// heartbeat round answered by both followers (its lease starts when that round left).
fn leased_cluster() -> Cluster {
    let mut cluster = Cluster::builder(3).config(|c| c.lease_reads = true).build();
    // With lease reads a node that just started refuses votes for an election timeout (it may
    // have promised a lease before it crashed): let that pass, dropping early pre-votes.
    let timeout = cluster.node(1).config().election_timeout_ticks_min;
    cluster.tick_all(timeout);
    cluster.drop_in_flight(|_| true);
    cluster.campaign(1);
    cluster.stabilize();
    let put = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.stabilize();
    assert_eq!(applied_at(&cluster, put), LogIndex(2));
    let heartbeat = cluster.node(1).config().heartbeat_interval_ticks;
    cluster.tick_all(heartbeat); // n1's heartbeat round leaves on its last tick
    cluster.stabilize();
    cluster
}

/// Raft thesis §6.4.1: a lease read is served at once while the lease runs (no message), and
/// refused once it ran out: n1, cut off right after a confirmed round, serves reads for
/// `read_lease_ticks - 1` ticks, then needs a round no one answers. Clocks tick in step here;
/// the followers refuse to vote for `election_timeout_ticks_min` ticks, so a new leader comes
/// only after the lease ended, and commits x=2 that n1 must never hide.
#[test]
fn a_lease_read_is_refused_after_the_lease_expired() {
    let mut cluster = leased_cluster();
    cluster.isolate(1);
    let lease = cluster.node(1).config().read_lease_ticks;
    let served = cluster.read_kv(1, "x");
    assert_eq!(
        read_answer(&cluster, served),
        Some((LogIndex(2), KvOutput::found("1"))),
        "served from the lease at once"
    );
    cluster.tick_all(lease - 1);
    cluster.stabilize();
    let late_in_lease = cluster.read_kv(1, "x");
    assert_eq!(
        read_answer(&cluster, late_in_lease),
        Some((LogIndex(2), KvOutput::found("1")))
    );
    assert_eq!(
        cluster.leader(),
        Some(NodeId(1)),
        "nobody else could be elected yet"
    );

    cluster.tick_all(1);
    cluster.stabilize();
    assert_eq!(
        cluster.node(1).role(),
        Role::Leader,
        "n1 still believes it leads"
    );
    let expired = cluster.read_kv(1, "x");
    assert_eq!(
        cluster.outcome(expired),
        None,
        "the lease ran out: a round must confirm it"
    );

    for _ in 0..100 {
        cluster.tick(2, 1);
        cluster.tick(3, 1);
        cluster.stabilize();
    }
    let new_leader = cluster.leader().expect("n2 and n3 elect a leader");
    assert_ne!(new_leader, NodeId(1));
    let put = cluster.propose_kv(new_leader, &KvInput::put("x", "2"));
    cluster.stabilize();
    applied_at(&cluster, put);
    assert_eq!(read_answer(&cluster, expired), None);
    let timeout = cluster.node(1).config().election_timeout_ticks_min;
    cluster.tick(1, 2 * timeout);
    assert_eq!(
        read_failure(&cluster, expired),
        Some(ProposeError::ReadAborted)
    );
}

/// Why the lease assumes clocks that tick at close rates (`protocol` reads): if the followers'
/// clocks run three times as fast as the leader's, they stop honouring the lease, elect a new
/// leader and commit x=2 while the old leader's clock says its lease still runs, and its lease
/// read would be stale. The simulator catches it once the new leader commits while n1's lease
/// runs, before any read; the randomized simulation keeps clocks within the assumption
/// (`lease_clock_margin_holds`).
#[test]
#[should_panic(expected = "would serve reads from its lease")]
fn a_lease_read_is_stale_when_clocks_drift_past_the_assumption() {
    let mut cluster = leased_cluster();
    cluster.isolate(1);
    for _ in 0..100 {
        cluster.tick(2, 3);
        cluster.tick(3, 3);
        cluster.tick(1, 1);
        cluster.stabilize();
        if cluster.leader().is_some_and(|leader| leader != NodeId(1)) {
            break;
        }
    }
    let new_leader = cluster.leader().expect("n2 and n3 elect a leader");
    assert_ne!(new_leader, NodeId(1));
    let put = cluster.propose_kv(new_leader, &KvInput::put("x", "2"));
    cluster.stabilize();
    applied_at(&cluster, put);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    cluster.read_kv(1, "x"); // n1's slow clock still says it holds the lease
}

/// Found by the randomized simulation (seeds 3 and 8 once transfers and lease reads joined
/// it): a leader that hands over may not serve reads from its lease. Its target campaigns
/// with voters setting their lease promise aside, so it can win and commit while the old
/// leader, cut off, still counts its lease. n1 transfers to n2 and is cut off as n2 campaigns;
/// n2 wins with n3's vote and commits x=2; n1 used to answer a read from its lease with x=1.
#[test]
fn a_leader_that_began_a_transfer_serves_no_lease_reads() {
    let mut cluster = leased_cluster();
    let served = cluster.read_kv(1, "x");
    assert!(read_answer(&cluster, served).is_some(), "the lease holds");

    cluster
        .transfer_leadership(1, 2)
        .expect("n1 leads, n2 is a voter");
    assert_eq!(cluster.deliver_matching(is_timeout_now).len(), 1);
    assert_eq!(cluster.node(2).role(), Role::Candidate);
    let cut = cluster.isolate(1);
    cluster.stabilize();
    assert_eq!(
        cluster.node(2).role(),
        Role::Leader,
        "n3 voted despite its lease"
    );
    let put = cluster.propose_kv(2, &KvInput::put("x", "2"));
    cluster.stabilize();
    applied_at(&cluster, put);

    assert_eq!(cluster.node(1).role(), Role::Leader, "n1 heard nothing");
    let read = cluster.read_kv(1, "x");
    assert_eq!(
        cluster.outcome(read),
        None,
        "no lease read after a transfer began"
    );

    // The transfer times out, n1 resumes its term, and still confirms every read by a round.
    let timeout = cluster.node(1).config().election_timeout_ticks_min;
    cluster.tick(1, timeout);
    assert_eq!(cluster.node(1).role(), Role::Leader);
    let again = cluster.read_kv(1, "x");
    assert_eq!(cluster.outcome(again), None);
    cluster.heal(cut);
    cluster.tick(1, cluster.node(1).config().heartbeat_interval_ticks);
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Follower);
    for read in [read, again] {
        assert_eq!(
            read_failure(&cluster, read),
            Some(ProposeError::ReadAborted)
        );
    }
}

// ----- leadership transfer (Raft thesis §3.10) ---------------------------------------------

/// n1 hands over to n3, which holds the whole log: n1 tells it to campaign at once and n3
/// wins the next term without anyone waiting for an election timeout (voters set their
/// CheckQuorum lease aside for it). Meanwhile n1 refuses proposals: they did not happen.
#[test]
fn leadership_transfer_to_an_up_to_date_target_succeeds() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let put = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.stabilize();
    applied_at(&cluster, put);
    let term = cluster.node(1).term();

    cluster
        .transfer_leadership(1, 3)
        .expect("n1 leads, n3 is a voter");
    assert_eq!(cluster.node(1).transferring_to(), Some(NodeId(3)));
    let in_flight = cluster.in_flight();
    assert!(
        in_flight
            .iter()
            .any(|m| is_timeout_now(m) && m.to == NodeId(3)),
        "{in_flight:?}"
    );
    assert!(!in_flight.iter().any(is_append), "n3 lacks nothing");
    let refused = cluster.propose_kv(1, &KvInput::put("y", "1"));
    match cluster.outcome(refused) {
        Some(ProposalOutcome::Failed { error, .. }) => {
            assert_eq!(error, &ProposeError::TransferInProgress(NodeId(3)));
            assert!(error.is_definite());
        }
        other => panic!("expected TransferInProgress, got {other:?}"),
    }

    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![(NodeId(3), term.next())]);
    for node in 1..=3 {
        assert_eq!(cluster.node(node).leader(), Some(NodeId(3)), "n{node}");
    }
    assert!(cluster.take_transfer_failures().is_empty());
    let put = cluster.propose_kv(1, &KvInput::put("x", "2")); // forwarded to n3
    cluster.stabilize();
    applied_at(&cluster, put);
    for node in 1..=3 {
        assert_eq!(
            cluster.kv(node).get("y"),
            None,
            "the refused put never applied"
        );
        assert_eq!(cluster.kv(node).get("x").map(|v| &v[..]), Some(&b"2"[..]));
    }
}

/// n3 missed five writes while cut off. Asked to hand over to it, n1 first sends it what it
/// lacks, and tells it to campaign only once it acknowledged the whole log, so n3 can win.
#[test]
fn leadership_transfer_brings_a_lagging_target_up_to_date_first() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let cut = cluster.isolate(3);
    for k in 0..5 {
        cluster.propose_kv(1, &KvInput::put("x", format!("{k}")));
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), LogIndex(6));
    assert_eq!(cluster.node(3).last_index(), LogIndex(1));
    cluster.heal(cut);

    cluster
        .transfer_leadership(1, 3)
        .expect("n1 leads, n3 is a voter");
    // n1's probe of n3 went unanswered: n3 hears from it at the next heartbeat, answers, and
    // is sent what it lacks. No TimeoutNow leaves before n3 acknowledged the whole log.
    let timeout = cluster.node(1).config().election_timeout_ticks_min;
    assert!(!cluster.in_flight().iter().any(is_timeout_now), "n3 lags");
    let mut timeout_now_sent = false;
    for _ in 0..timeout - 1 {
        cluster.tick(1, 1);
        for _ in 0..10 {
            if cluster.in_flight().iter().any(is_timeout_now) {
                timeout_now_sent = true;
                break;
            }
            cluster.deliver_all();
        }
        if timeout_now_sent {
            break;
        }
    }
    assert!(timeout_now_sent, "n3 caught up within an election timeout");
    let last = cluster.node(1).last_index();
    let progress = cluster.node(1).status().progress;
    let n3 = progress.iter().find(|p| p.id == NodeId(3)).expect("n3");
    assert_eq!(n3.match_index, last, "n3 acknowledged the whole log first");
    assert_eq!(cluster.node(3).last_index(), last);
    assert_eq!(cluster.node(3).commit_index(), LogIndex(6));

    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(NodeId(3)));
    assert_eq!(cluster.log_terms(3)[..6], cluster.log_terms(1)[..6]);
    assert_eq!(cluster.kv(3).get("x").map(|v| &v[..]), Some(&b"4"[..]));
}

/// Thesis §3.10: a leader hands over with one `TimeoutNow`, however many answers its target
/// sends once caught up (a second would start a needless election after the first). n3's
/// answer to x=1 is held back and duplicated; the transfer starts, both copies arrive: the
/// first shows n3 caught up and sends `TimeoutNow`, the second sends nothing. (cargo-mutants
/// found that nothing checked this.)
#[test]
fn a_transfer_sends_one_timeout_now() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.deliver_all(); // the appends: the answers are in flight
    let is_ack_from_3 = |m: &Message| {
        m.from == NodeId(3)
            && matches!(
                m.body,
                MessageBody::AppendResponse(AppendResponse::Accepted { .. })
            )
    };
    cluster.deliver_matching(|m| m.from == NodeId(2)); // x=1 commits with n2
    assert_eq!(cluster.duplicate_in_flight(is_ack_from_3), 1);

    cluster
        .transfer_leadership(1, 3)
        .expect("n1 leads, n3 is a voter");
    assert!(
        !cluster.in_flight().iter().any(is_timeout_now),
        "n1 has not yet heard that n3 holds x=1"
    );
    assert_eq!(cluster.deliver_matching(is_ack_from_3).len(), 2);
    let timeout_nows = cluster
        .in_flight()
        .iter()
        .filter(|m| is_timeout_now(m))
        .count();
    assert_eq!(timeout_nows, 1, "{:?}", cluster.in_flight());
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(NodeId(3)));
}

/// Flow control (etcd's `MaxInflightMsgs`): a pipelining leader keeps at most
/// `inflight_messages_max` appends unanswered per follower, and sends more as answers free
/// room. Five proposals in one go leave two appends to each follower; the rest follow the
/// answers, and everything commits. (cargo-mutants found that no test hit this limit.)
#[test]
fn a_leader_keeps_at_most_the_inflight_limit_of_appends_per_follower() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.inflight_messages_max = 2)
        .build();
    cluster.campaign(1);
    cluster.stabilize(); // the blank entry is acknowledged: both followers are pipelined
    for k in 0..5 {
        cluster.propose_kv(1, &KvInput::put("x", format!("{k}")));
    }
    for follower in [2, 3] {
        let appends = cluster
            .in_flight()
            .iter()
            .filter(|m| m.to == NodeId(follower) && is_append(m))
            .count();
        assert_eq!(appends, 2, "n{follower}: {:?}", cluster.in_flight());
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), LogIndex(6));
    assert_eq!(cluster.log_terms(3), [1; 6]);
}

/// Heartbeat answers without progress mean a lost append only while appends are outstanding:
/// an idle pipelined follower stays pipelined (not sent back to probing) however many
/// heartbeat rounds pass. (cargo-mutants found that nothing checked this.)
#[test]
fn an_idle_follower_stays_pipelined_across_heartbeats() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let heartbeat = cluster.node(1).config().heartbeat_interval_ticks;
    for _ in 0..5 {
        cluster.tick(1, heartbeat);
        cluster.stabilize();
    }
    let progress = cluster.node(1).status().progress;
    assert_eq!(progress.len(), 2);
    for follower in progress {
        assert!(follower.pipelined, "{follower:?}");
        assert_eq!(follower.inflight_messages, 0, "{follower:?}");
    }
}

/// A target that cannot be reached never takes over: after an election timeout n1 gives up
/// (`TransferError::TimedOut`), resumes leading in the same term, and takes proposals again.
#[test]
fn leadership_transfer_to_an_isolated_target_times_out_and_the_leader_resumes() {
    let mut cluster = Cluster::new(3);
    cluster.campaign(1);
    cluster.stabilize();
    let term = cluster.node(1).term();
    cluster.isolate(3);
    cluster
        .transfer_leadership(1, 3)
        .expect("n1 leads, n3 is a voter");
    let refused = cluster.propose_kv(1, &KvInput::put("x", "refused"));
    assert!(matches!(
        cluster.outcome(refused),
        Some(ProposalOutcome::Failed {
            error: ProposeError::TransferInProgress(NodeId(3)),
            ..
        })
    ));

    let timeout = cluster.node(1).config().election_timeout_ticks_min;
    for tick in 1..=timeout {
        cluster.tick(1, 1);
        cluster.tick(2, 1);
        cluster.stabilize();
        let failures = cluster.take_transfer_failures();
        if tick < timeout {
            assert!(failures.is_empty(), "tick {tick}: {failures:?}");
            assert_eq!(cluster.node(1).transferring_to(), Some(NodeId(3)));
        } else {
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert_eq!(failures[0].error, TransferError::TimedOut(NodeId(3)));
            assert_eq!((failures[0].role, failures[0].term), (Role::Leader, term));
        }
    }
    assert_eq!(cluster.node(1).transferring_to(), None);
    assert_eq!(
        cluster.leaders(),
        vec![(NodeId(1), term)],
        "n1 resumed in its term"
    );
    let put = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.stabilize();
    applied_at(&cluster, put);
    assert_eq!(cluster.kv(2).get("x").map(|v| &v[..]), Some(&b"1"[..]));
}

/// With one append in flight per follower, a follower whose ack reaches the leader after the
/// entry committed (on the other follower's ack) still learns the commit index right away, from
/// an empty append sent on its ack, not from the next heartbeat. (A lost commit index here once
/// cost a forwarded write a whole heartbeat interval.)
#[test]
fn a_follower_acking_after_the_commit_learns_it_without_a_heartbeat() {
    let mut cluster = Cluster::builder(3)
        .config(|c| c.inflight_messages_max = 1)
        .build();
    cluster.campaign(1);
    cluster.stabilize();
    let put = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.deliver_all(); // the appends to 2 and 3
                           // n2's ack commits the entry while n3's ack is still on its way.
    cluster.deliver_matching(|m| m.from == NodeId(2));
    let committed = cluster.node(1).commit_index();
    assert!(
        committed >= cluster.node(1).last_index(),
        "n2's ack commits"
    );
    assert!(cluster.outcome(put).is_some(), "the leader applied it");
    // No ticks from here on, so no heartbeat can carry the commit index.
    cluster.stabilize();
    assert_eq!(cluster.node(3).commit_index(), committed);
    assert_eq!(cluster.node(2).commit_index(), committed);
}

/// A storage error must stop the node before anything that waited for the write leaves (the
/// driver fail-stops, as etcd's and TigerBeetle's do): n2's write of its vote for n1 fails, so
/// n2 stops and its vote never leaves; n1 still wins with n3's. Restarted from its disk, n2
/// holds neither the vote nor the failed write's term, and rejoins as a follower of n1.
#[test]
fn a_failed_write_stops_the_node_before_its_vote_leaves() {
    let mut cluster = Cluster::builder(3).config(|c| c.pre_vote = false).build();
    cluster.fail_next_write(2);
    cluster.campaign(1);
    let delivered = cluster.deliver_all(); // the vote requests
    assert_eq!(delivered.len(), 2);
    assert!(!cluster.is_up(2), "n2 fail-stopped on its write");
    let votes: Vec<NodeId> = cluster
        .in_flight()
        .iter()
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::VoteResponse {
                    pre_vote: false,
                    granted: true,
                    ..
                }
            )
        })
        .map(|m| m.from)
        .collect();
    assert_eq!(votes, [NodeId(3)], "only n3's vote leaves");
    assert_eq!(cluster.durable(2).hard_state, HardState::default());
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(NodeId(1)));
    assert_eq!(cluster.stats().writes_failed, 1);

    cluster.restart(2);
    let heartbeat = cluster.node(1).config().heartbeat_interval_ticks;
    cluster.tick(1, heartbeat); // n1 finds n2 again
    cluster.stabilize();
    let put = cluster.propose_kv(1, &KvInput::put("x", "1"));
    cluster.stabilize();
    applied_at(&cluster, put);
    assert_eq!(cluster.node(2).leader(), Some(NodeId(1)));
    assert_eq!(cluster.kv(2).get("x").map(|v| &v[..]), Some(&b"1"[..]));
}

/// Issue 12, scenario 3: the lease promise holds however a node learns of a higher term. n1
/// leads and is cut off from n3; n3 wins a pre-vote and campaigns for term+1, and its vote
/// request to n2 is held back. n2 then pre-votes; n3's rejection of it (carrying term+1) is
/// held back too. n1's heartbeat reaches n2, so n1 holds a lease. The rejection arrives: n2
/// adopts term+1 with no leader. Then n3's vote request arrives. n2 heard n1 a moment ago and
/// must refuse; granting let n3 commit x=2 while n1 served x=1 from its lease.
#[test]
fn a_late_pre_vote_rejection_does_not_break_the_lease() {
    let mut cluster = leased_cluster();
    let term = cluster.node(1).term();
    cluster.cut_one_way(1, 3);
    cluster.cut_one_way(3, 1);
    let min = cluster.node(1).config().election_timeout_ticks_min;
    // n2 has not heard from n1 for a minimum election timeout (n1's clock stands still), so it
    // grants n3's pre-vote; n3 campaigns and its vote request to n2 is held back.
    cluster.tick(2, min);
    cluster.drop_in_flight(|m| m.from == NodeId(2));
    cluster.campaign(3);
    cluster.deliver_all(); // pre-vote to n2
    cluster.deliver_all(); // its grant back to n3, which campaigns
    assert_eq!(cluster.node(3).role(), Role::Candidate);
    assert_eq!(cluster.node(3).term(), term.next());
    let is_vote_request = |m: &Message| {
        m.to == NodeId(2)
            && matches!(
                m.body,
                MessageBody::VoteRequest {
                    pre_vote: false,
                    ..
                }
            )
    };
    assert_eq!(
        cluster
            .in_flight()
            .iter()
            .filter(|m| is_vote_request(m))
            .count(),
        1
    );

    // n2 pre-votes; n3's rejection (term + 1) is held back; n1 ignores it (its own lease).
    cluster.campaign(2);
    assert_eq!(cluster.node(2).role(), Role::PreCandidate);
    cluster.deliver_matching(|m| m.from == NodeId(2));
    let is_rejection = |m: &Message| {
        m.from == NodeId(3)
            && m.to == NodeId(2)
            && matches!(m.body, MessageBody::VoteResponse { pre_vote: true, .. })
    };
    assert_eq!(
        cluster
            .in_flight()
            .iter()
            .filter(|m| is_rejection(m))
            .count(),
        1
    );

    // n1's heartbeat round reaches n2, which answers: n1 holds a lease from here on.
    let heartbeat = cluster.node(1).config().heartbeat_interval_ticks;
    cluster.tick(1, heartbeat);
    cluster.deliver_matching(|m| m.from == NodeId(1) && m.to == NodeId(2));
    assert_eq!(cluster.node(2).leader(), Some(NodeId(1)));
    cluster.deliver_matching(|m| m.from == NodeId(2) && m.to == NodeId(1));
    cluster.cut_one_way(2, 1); // n1 hears nothing more
    let leased = cluster.read_kv(1, "x");
    assert_eq!(
        read_answer(&cluster, leased),
        Some((LogIndex(2), KvOutput::found("1"))),
        "n1 serves from its lease"
    );

    // The late rejection, then n3's vote request.
    cluster.deliver_matching(is_rejection);
    assert_eq!(
        cluster.node(2).term(),
        term.next(),
        "n2 adopts the higher term"
    );
    cluster.deliver_matching(is_vote_request);
    cluster.stabilize();
    assert_ne!(
        cluster.node(3).role(),
        Role::Leader,
        "n2 heard n1 within the minimum election timeout and must not vote"
    );
    let put = cluster.propose_kv(3, &KvInput::put("x", "2"));
    cluster.stabilize();
    let served = cluster.read_kv(1, "x");
    assert_eq!(
        read_answer(&cluster, served),
        Some((LogIndex(2), KvOutput::found("1")))
    );
    assert!(
        !matches!(cluster.outcome(put), Some(ProposalOutcome::Applied { .. })),
        "nothing commits while n1's lease runs"
    );
}

/// Bad input changes nothing: an append whose entries do not follow its previous index
/// without a gap, or that carries an entry of a term newer than the leader's own, is ignored
/// by the follower (no entry taken, no acknowledgement), while a well-formed one is taken.
/// A follower that took such entries would hold a log no leader sent, and acknowledge it.
#[test]
fn a_follower_ignores_an_append_with_a_gap_or_a_term_beyond_the_leaders() {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let mut follower = raft_core::protocol::RawNode::new(
        raft_core::Config::new(NodeId(2), voters),
        disk(&[], 0, None, 0),
    )
    .expect("starts");
    let entry = |index: u64, term: u64| Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command(Bytes::from(format!("{index}/{term}"))),
    };
    let append = |entries: Vec<Entry>| Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        incarnation: raft_core::Incarnation(0),
        body: MessageBody::Append {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries,
            leader_commit: LogIndex(0),
        },
    };
    let accepted = |ready: &raft_core::protocol::Ready| {
        ready
            .messages
            .iter()
            .chain(&ready.messages_after_write)
            .any(|m| {
                matches!(
                    m.body,
                    MessageBody::AppendResponse(AppendResponse::Accepted { .. })
                )
            })
    };
    for (what, entries) in [
        ("a gap", vec![entry(1, 1), entry(3, 1)]),
        ("a term beyond the leader's", vec![entry(1, 1), entry(2, 2)]),
    ] {
        follower.step(append(entries));
        let ready = follower.ready();
        assert!(ready.write.entries.is_empty(), "{what}: no entry taken");
        assert!(!accepted(&ready), "{what}: nothing acknowledged");
        assert_eq!(follower.status().last_index, LogIndex(0), "{what}");
    }
    follower.step(append(vec![entry(1, 1), entry(2, 1)]));
    let ready = follower.ready();
    assert_eq!(
        ready.write.entries.len(),
        2,
        "a well-formed append is taken"
    );
    assert!(accepted(&ready));
}
