//! Property tests of the wire format (`raft_core::wire`): every message and handshake survives
//! a round trip, frames split anywhere reassemble, and random or mutated bytes are refused with
//! an error, never a panic, and never decode into a frame over the limit.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::message::{
    AppendResponse, ForwardOutcome, ForwardRefusal, ForwardedProposal, MessageBody,
};
use raft_core::wire::{self, ClusterId, Frame, FrameError, Handshake};
use raft_core::{
    Entry, EntryPayload, Incarnation, Lane, LogIndex, Message, NodeId, ProposalId, SessionCommand,
    SessionId, SessionTag, Term,
};

const FRAME_BYTES_MAX: usize = 64 << 10;

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![1..8u64, any::<u64>()].prop_map(NodeId)
}

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![0..100u64, any::<u64>()].prop_map(Term)
}

fn index() -> impl Strategy<Value = LogIndex> {
    prop_oneof![0..1000u64, any::<u64>()].prop_map(LogIndex)
}

fn data() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn session_tag() -> impl Strategy<Value = SessionTag> {
    (any::<u64>(), any::<u64>()).prop_map(|(session, sequence)| SessionTag {
        session: SessionId(session),
        sequence,
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        data().prop_map(EntryPayload::Command),
        (session_tag(), data()).prop_map(|(tag, command)| EntryPayload::SessionCommand(
            SessionCommand { tag, command }
        ))
    ];
    (term(), index(), payload).prop_map(|(term, index, payload)| Entry {
        term,
        index,
        payload,
    })
}

fn forward_outcome() -> impl Strategy<Value = ForwardOutcome> {
    let refusal = prop_oneof![
        Just(ForwardRefusal::NotLeader),
        Just(ForwardRefusal::UncommittedFull),
        any::<u64>().prop_map(|limit| ForwardRefusal::TooLarge { limit }),
    ];
    let result = prop_oneof![(term(), index()).prop_map(Ok), refusal.prop_map(Err),];
    (any::<u64>(), result).prop_map(|(id, result)| ForwardOutcome {
        id: ProposalId(id),
        result,
    })
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), index(), term(), any::<bool>()).prop_map(
            |(pre_vote, last_log_index, last_log_term, transfer)| MessageBody::VoteRequest {
                pre_vote,
                last_log_index,
                last_log_term,
                transfer,
            }
        ),
        Just(MessageBody::TimeoutNow),
        (any::<bool>(), any::<bool>(), any::<u64>()).prop_map(|(pre_vote, granted, life)| {
            MessageBody::VoteResponse {
                pre_vote,
                granted,
                candidate_incarnation: Incarnation(life),
            }
        }),
        (
            index(),
            term(),
            proptest::collection::vec(entry(), 0..8),
            index()
        )
            .prop_map(|(prev_log_index, prev_log_term, entries, leader_commit)| {
                MessageBody::Append {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                }
            }),
        index().prop_map(
            |match_index| MessageBody::AppendResponse(AppendResponse::Accepted { match_index })
        ),
        (index(), term(), index()).prop_map(|(rejected_index, hint_term, hint_index)| {
            MessageBody::AppendResponse(AppendResponse::Rejected {
                rejected_index,
                hint_term,
                hint_index,
            })
        }),
        (index(), any::<u64>()).prop_map(|(commit, read_seq)| MessageBody::Heartbeat {
            commit,
            read_seq,
            follower_incarnation: Incarnation(read_seq >> 3),
        }),
        any::<u64>().prop_map(|read_seq| MessageBody::HeartbeatResponse { read_seq }),
        any::<u64>().prop_map(|id| MessageBody::ReadIndexRequest { id: ProposalId(id) }),
        (any::<u64>(), proptest::option::of(index())).prop_map(|(id, index)| {
            MessageBody::ReadIndexResponse {
                id: ProposalId(id),
                index,
            }
        }),
        proptest::collection::vec(
            (any::<u64>(), data(), proptest::option::of(session_tag())).prop_map(
                |(id, data, session)| ForwardedProposal {
                    id: ProposalId(id),
                    data,
                    session,
                }
            ),
            0..8
        )
        .prop_map(|proposals| MessageBody::Forward { proposals }),
        proptest::collection::vec(forward_outcome(), 0..8)
            .prop_map(|outcomes| MessageBody::ForwardResponse { outcomes }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (node(), node(), term(), any::<u64>(), body()).prop_map(|(from, to, term, life, body)| {
        Message {
            from,
            to,
            term,
            incarnation: Incarnation(life),
            body,
        }
    })
}

fn handshake() -> impl Strategy<Value = Handshake> {
    let lane = prop_oneof![Just(Lane::Ordinary), Just(Lane::Snapshot)];
    (any::<u64>(), node(), node(), lane).prop_map(|(cluster, from, to, lane)| Handshake {
        cluster: ClusterId(cluster),
        from,
        to,
        lane,
    })
}

fn refusal() -> impl Strategy<Value = wire::Refusal> {
    (any::<u64>(), node(), node()).prop_map(|(cluster, from, to)| wire::Refusal {
        cluster: ClusterId(cluster),
        from,
        to,
        reason: wire::RefusalReason::Removed,
    })
}

/// Decodes every frame in `stream`, as a reader would, until the bytes run out or an error.
fn decode_all(stream: &[u8], frame_bytes_max: usize) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    let mut rest = stream;
    while let Some((frame, used)) = wire::decode(rest, frame_bytes_max)? {
        assert!(
            used <= frame_bytes_max,
            "a decoded frame is within the limit"
        );
        assert!(used >= wire::HEADER_BYTES, "a decoded frame has a header");
        frames.push(frame);
        rest = &rest[used..];
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every message encodes to one frame that decodes to the same message.
    #[test]
    fn message_round_trip(message in message()) {
        let frame = wire::encode_message(&message, FRAME_BYTES_MAX).expect("fits");
        prop_assert_eq!(wire::check(&frame, FRAME_BYTES_MAX), Ok(Some(frame.len())));
        prop_assert_eq!(wire::parse(&frame, FRAME_BYTES_MAX), Ok(Frame::Message(message)));
    }

    /// Every handshake round-trips and fits in the smallest allowed frame limit.
    #[test]
    fn handshake_round_trip(handshake in handshake()) {
        let frame = wire::encode_handshake(&handshake);
        prop_assert!(frame.len() <= *wire::FRAME_BYTES_MAX_RANGE.start());
        prop_assert_eq!(
            wire::parse(&frame, *wire::FRAME_BYTES_MAX_RANGE.start()),
            Ok(Frame::Handshake(handshake))
        );
    }

    /// Every refusal round-trips and fits in the smallest allowed frame limit.
    #[test]
    fn refusal_round_trip(refusal in refusal()) {
        let frame = wire::encode_refusal(&refusal);
        prop_assert!(frame.len() <= *wire::FRAME_BYTES_MAX_RANGE.start());
        prop_assert_eq!(
            wire::parse(&frame, *wire::FRAME_BYTES_MAX_RANGE.start()),
            Ok(Frame::Refusal(refusal))
        );
    }

    /// A stream of frames cut at any point decodes the whole frames before the cut and asks
    /// for more bytes at the cut, never an error: a reader can resume after any short read.
    #[test]
    fn cut_stream_asks_for_more(
        handshake in handshake(),
        messages in proptest::collection::vec(message(), 1..6),
        cut_fraction in 0.0f64..1.0,
    ) {
        let mut stream = wire::encode_handshake(&handshake).to_vec();
        let mut boundaries = vec![stream.len()];
        for message in &messages {
            stream.extend_from_slice(&wire::encode_message(message, FRAME_BYTES_MAX).unwrap());
            boundaries.push(stream.len());
        }
        let cut = (stream.len() as f64 * cut_fraction) as usize;
        let frames = decode_all(&stream[..cut], FRAME_BYTES_MAX).expect("a prefix is never an error");
        let whole = boundaries.iter().filter(|&&end| end <= cut).count();
        prop_assert_eq!(frames.len(), whole);
        let all = decode_all(&stream, FRAME_BYTES_MAX).unwrap();
        prop_assert_eq!(all.len(), messages.len() + 1);
        prop_assert_eq!(&all[0], &Frame::Handshake(handshake));
        for (decoded, sent) in all[1..].iter().zip(&messages) {
            prop_assert_eq!(decoded, &Frame::Message(sent.clone()));
        }
    }

    /// Random bytes never panic the decoder; whatever it accepts is within the limit.
    #[test]
    fn random_bytes_are_refused_or_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(&bytes, 256);
        let _ = wire::parse(&bytes, 256);
    }

    /// Random bytes behind a valid header reach the payload decoder, which refuses them or
    /// decodes something that fits exactly; it never panics.
    #[test]
    fn random_payload_behind_valid_header(
        kind in prop_oneof![Just(wire::KIND_HANDSHAKE), Just(wire::KIND_MESSAGE), Just(wire::KIND_REFUSAL)],
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut frame = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
        frame.push(wire::FORMAT_VERSION);
        frame.push(kind);
        frame.extend_from_slice(&payload);
        if let Ok(decoded) = wire::parse(&frame, FRAME_BYTES_MAX) {
            // What decodes must encode back to the same value (not necessarily the same bytes:
            // varints have one canonical form, but the decoder may accept others).
            match decoded {
                Frame::Message(message) => {
                    let again = wire::encode_message(&message, FRAME_BYTES_MAX).unwrap();
                    prop_assert_eq!(wire::parse(&again, FRAME_BYTES_MAX), Ok(Frame::Message(message)));
                }
                Frame::Handshake(handshake) => {
                    let again = wire::encode_handshake(&handshake);
                    prop_assert_eq!(wire::parse(&again, FRAME_BYTES_MAX), Ok(Frame::Handshake(handshake)));
                }
                Frame::Refusal(refusal) => {
                    let again = wire::encode_refusal(&refusal);
                    prop_assert_eq!(wire::parse(&again, FRAME_BYTES_MAX), Ok(Frame::Refusal(refusal)));
                }
            }
        }
    }

    /// A valid frame with bytes flipped, removed or appended is refused or decodes cleanly;
    /// it never panics and a truncated frame is never taken for a whole one.
    #[test]
    fn mutated_frames_never_panic(
        message in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        truncate in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let frame = wire::encode_message(&message, FRAME_BYTES_MAX).unwrap().to_vec();
        let mut flipped = frame.clone();
        for (at, value) in &flips {
            let at = at.index(flipped.len());
            flipped[at] ^= value;
        }
        let _ = decode_all(&flipped, FRAME_BYTES_MAX);
        let _ = wire::parse(&flipped, FRAME_BYTES_MAX);

        let cut = truncate.index(frame.len());
        prop_assert_eq!(wire::check(&frame[..cut], FRAME_BYTES_MAX), Ok(None));
        let truncated = wire::parse(&frame[..cut], FRAME_BYTES_MAX);
        prop_assert!(matches!(truncated, Err(FrameError::Truncated { .. })), "{:?}", truncated);

        let mut longer = frame.clone();
        longer.extend_from_slice(&extra);
        if !extra.is_empty() {
            prop_assert!(wire::parse(&longer, FRAME_BYTES_MAX).is_err());
        }
    }

    /// A message whose frame is over the limit is refused by the encoder with its exact size,
    /// and a header announcing such a frame is refused before its body arrives.
    #[test]
    fn over_the_limit_is_refused(message in message(), limit in 64usize..2048) {
        let frame = wire::encode_message(&message, usize::MAX).unwrap();
        match wire::encode_message(&message, limit) {
            Ok(fits) => prop_assert!(fits.len() <= limit),
            Err(error) => {
                prop_assert_eq!(error, FrameError::TooLarge { bytes: frame.len(), limit });
                prop_assert_eq!(
                    wire::check(&frame[..wire::LENGTH_BYTES], limit),
                    Err(FrameError::TooLarge { bytes: frame.len(), limit })
                );
            }
        }
    }

    /// Any version byte but the current one is refused as soon as it is seen.
    #[test]
    fn unknown_version_is_refused(message in message(), version in any::<u8>()) {
        prop_assume!(version != wire::FORMAT_VERSION);
        let mut frame = wire::encode_message(&message, FRAME_BYTES_MAX).unwrap().to_vec();
        frame[wire::LENGTH_BYTES] = version;
        prop_assert_eq!(
            wire::check(&frame[..wire::LENGTH_BYTES + 1], FRAME_BYTES_MAX),
            Err(FrameError::UnknownVersion { version })
        );
        prop_assert_eq!(wire::parse(&frame, FRAME_BYTES_MAX), Err(FrameError::UnknownVersion { version }));
    }
}

/// The fixed cases next to the properties: each kind of refusal, with its exact error.
#[test]
fn each_refusal_has_its_error() {
    let message = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        incarnation: Incarnation(0),
        body: MessageBody::HeartbeatResponse { read_seq: 0 },
    };
    let frame = wire::encode_message(&message, FRAME_BYTES_MAX)
        .unwrap()
        .to_vec();

    let mut unknown_kind = frame.clone();
    unknown_kind[wire::LENGTH_BYTES + 1] = 9;
    assert_eq!(
        wire::check(&unknown_kind, FRAME_BYTES_MAX),
        Err(FrameError::UnknownKind { kind: 9 })
    );

    assert_eq!(
        wire::check(&[0, 0, 0, 1, 1], FRAME_BYTES_MAX),
        Err(FrameError::TooShort { length: 1 })
    );
    assert_eq!(
        wire::check(&[0xff, 0xff, 0xff, 0xff], FRAME_BYTES_MAX),
        Err(FrameError::TooLarge {
            bytes: 0xffff_ffff + 4,
            limit: FRAME_BYTES_MAX
        })
    );

    // A payload that is a valid message followed by one more byte, with the length covering it.
    let mut trailing = frame.clone();
    trailing.push(0);
    let length = (trailing.len() - wire::LENGTH_BYTES) as u32;
    trailing[..4].copy_from_slice(&length.to_be_bytes());
    assert!(matches!(
        wire::parse(&trailing, FRAME_BYTES_MAX),
        Err(FrameError::Malformed { .. })
    ));

    // A handshake payload in a message frame is malformed, not a message.
    let handshake = wire::encode_handshake(&Handshake {
        cluster: ClusterId(7),
        from: NodeId(1),
        to: NodeId(2),
        lane: Lane::Snapshot,
    })
    .to_vec();
    let mut swapped = handshake.clone();
    swapped[wire::LENGTH_BYTES + 1] = wire::KIND_MESSAGE;
    assert!(wire::parse(&swapped, FRAME_BYTES_MAX).is_err());

    // An unknown lane code in a handshake is malformed.
    let mut bad_lane = handshake;
    *bad_lane.last_mut().unwrap() = 2;
    assert!(matches!(
        wire::parse(&bad_lane, FRAME_BYTES_MAX),
        Err(FrameError::Malformed { .. })
    ));
}

/// The handshake and sender checks refuse each kind of impostor and accept a good peer.
#[test]
fn handshake_checks() {
    let cluster = ClusterId(42);
    let local = NodeId(1);
    let known = |id: NodeId| id == NodeId(2) || id == NodeId(3);
    let good = Handshake {
        cluster,
        from: NodeId(2),
        to: local,
        lane: Lane::Ordinary,
    };
    assert_eq!(
        wire::check_handshake(&good, cluster, local, known, None),
        Ok(())
    );
    assert_eq!(
        wire::check_handshake(&good, cluster, local, known, Some(NodeId(2))),
        Ok(())
    );
    let foreign = Handshake {
        cluster: ClusterId(43),
        ..good
    };
    assert_eq!(
        wire::check_handshake(&foreign, cluster, local, known, None),
        Err(wire::HandshakeError::ForeignCluster {
            expected: cluster,
            received: ClusterId(43)
        })
    );
    let stranger = Handshake {
        from: NodeId(9),
        ..good
    };
    assert_eq!(
        wire::check_handshake(&stranger, cluster, local, known, None),
        Err(wire::HandshakeError::UnknownNode { from: NodeId(9) })
    );
    let myself = Handshake {
        from: local,
        ..good
    };
    assert!(wire::check_handshake(&myself, cluster, local, |_| true, None).is_err());
    let misdirected = Handshake {
        to: NodeId(3),
        ..good
    };
    assert_eq!(
        wire::check_handshake(&misdirected, cluster, local, known, None),
        Err(wire::HandshakeError::WrongRecipient {
            local,
            to: NodeId(3)
        })
    );
    assert_eq!(
        wire::check_handshake(&good, cluster, local, known, Some(NodeId(3))),
        Err(wire::HandshakeError::PeerMismatch {
            expected: NodeId(3),
            claimed: NodeId(2)
        })
    );

    let spoofed = Message {
        from: NodeId(3),
        to: local,
        term: Term(1),
        incarnation: Incarnation(0),
        body: MessageBody::HeartbeatResponse { read_seq: 0 },
    };
    assert!(wire::check_sender(&spoofed, NodeId(2)).is_err());
    assert_eq!(wire::check_sender(&spoofed, NodeId(3)), Ok(()));
}
