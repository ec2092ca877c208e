//! Scenario tests: the situations the Raft paper (and the thesis, for PreVote and CheckQuorum)
//! describes, plus the protocol's own promises about proposals, each written as a short
//! transcript against the interactive simulator (`raft_core::testkit::sim::Cluster`, manual
//! timing: nothing moves unless the test says so). The simulator checks the safety invariants
//! after every step, so each scenario is also a safety check.

use bytes::Bytes;
use raft_core::message::{AppendResponse, MessageBody};
use raft_core::protocol::{ProposeError, Restore, Role};
use raft_core::testkit::linearizability::{KvInput, KvOutput};
use raft_core::testkit::sim::{Cluster, ProposalOutcome};
use raft_core::{Entry, EntryPayload, HardState, LogIndex, Message, NodeId, Term};

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
                        granted: false
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
                    granted: true
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
