//! Decoding never allocates on a forged length: a frame of a few bytes that claims a
//! gigabyte-long byte string or entry list is refused without allocating anywhere near that.
//! This file is its own test binary because it installs a global allocator that records the
//! largest single allocation.

use raft_core::message::{ForwardedProposal, MessageBody};
use raft_core::wire::{self, FrameError};
use raft_core::{Incarnation, LogIndex, Message, NodeId, ProposalId, Term};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

struct Recording;

static LARGEST_ALLOCATION_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the thread being measured: the test harness allocates on its own threads (to
    /// report other tests) while a decode is measured.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn record(bytes: usize) {
    if MEASURING.with(Cell::get) {
        LARGEST_ALLOCATION_BYTES.fetch_max(bytes, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// Tests in one binary run on parallel threads; the allocation record is global.
static SERIAL: Mutex<()> = Mutex::new(());

/// The payload of `body`'s message frame, so the forged frames below follow the real encoding
/// of the message types whatever their variant order.
fn payload_of(body: MessageBody) -> Vec<u8> {
    let message = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        incarnation: Incarnation(0),
        body,
    };
    let frame = wire::encode_message(&message, 1 << 20).unwrap();
    frame[wire::HEADER_BYTES..].to_vec()
}

/// A message frame around `payload`.
fn message_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
    frame.push(wire::FORMAT_VERSION);
    frame.push(wire::KIND_MESSAGE);
    frame.extend_from_slice(payload);
    frame
}

/// bincode's standard varint for a `u64`: 0xfd then eight little-endian bytes.
fn varint_u64(value: u64) -> Vec<u8> {
    let mut bytes = vec![0xfd];
    bytes.extend_from_slice(&value.to_le_bytes());
    bytes
}

fn largest_allocation_while(decode: impl FnOnce()) -> usize {
    LARGEST_ALLOCATION_BYTES.store(0, Ordering::Relaxed);
    MEASURING.with(|measuring| measuring.set(true));
    decode();
    MEASURING.with(|measuring| measuring.set(false));
    LARGEST_ALLOCATION_BYTES.load(Ordering::Relaxed)
}

/// A `Forward` whose single proposal claims a 1 GiB command in a 30-byte frame.
#[test]
fn forged_byte_string_length_is_refused_before_allocating() {
    let _serial = SERIAL.lock().unwrap();
    // One proposal with an empty command and no session: the payload ends with the command's
    // length, 0, then the session's "none" tag, 0.
    let mut payload = payload_of(MessageBody::Forward {
        proposals: vec![ForwardedProposal {
            id: ProposalId(5),
            data: Default::default(),
            session: None,
        }],
    });
    assert_eq!(payload.pop(), Some(0), "the session's tag");
    assert_eq!(payload.pop(), Some(0), "the command's length");
    payload.extend(varint_u64(1 << 30));
    let frame = message_frame(&payload);
    let mut result = None;
    let largest = largest_allocation_while(|| result = Some(wire::parse(&frame, 1 << 20)));
    assert!(
        matches!(result, Some(Err(FrameError::Malformed { .. }))),
        "{result:?}"
    );
    assert!(largest < 4096, "decoding allocated {largest} bytes at once");
}

/// An `Append` that claims 2^40 entries: the entry list grows only as entries are read, after
/// at most serde's cautious preallocation (1 MiB).
#[test]
fn forged_sequence_length_is_refused_before_allocating() {
    let _serial = SERIAL.lock().unwrap();
    // No entries and commit 0: the payload ends with the entry count 0, then the commit 0.
    let mut payload = payload_of(MessageBody::Append {
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: Vec::new(),
        leader_commit: LogIndex(0),
    });
    assert_eq!(payload.split_off(payload.len() - 2), vec![0, 0]);
    payload.extend(varint_u64(1 << 40));
    payload.push(0);
    let frame = message_frame(&payload);
    let mut result = None;
    let largest = largest_allocation_while(|| result = Some(wire::parse(&frame, 1 << 20)));
    assert!(
        matches!(result, Some(Err(FrameError::Malformed { .. }))),
        "{result:?}"
    );
    assert!(
        largest <= 1 << 20,
        "decoding allocated {largest} bytes at once"
    );
}

/// A header announcing a 4 GiB frame is refused from its first four bytes.
#[test]
fn forged_frame_length_is_refused_before_allocating() {
    let _serial = SERIAL.lock().unwrap();
    let mut result = None;
    let largest = largest_allocation_while(|| {
        result = Some(wire::check(&[0xff, 0xff, 0xff, 0xff, 1, 2], 1 << 20))
    });
    assert!(matches!(result, Some(Err(FrameError::TooLarge { .. }))));
    assert_eq!(largest, 0, "checking a header allocates nothing");
}
