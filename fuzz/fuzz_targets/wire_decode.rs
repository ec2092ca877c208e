//! Feeds arbitrary bytes to the wire decoder as a reader would see them: a stream of frames
//! under a limit chosen by the first input byte. The decoder must never panic, never hand back
//! a frame over the limit, and whatever it accepts must encode back to a frame that decodes to
//! the same value. Run with `-malloc_limit_mb` to catch an allocation a forged length asks for:
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode corpus/wire_decode seeds/wire_decode \
//!     -- -max_total_time=900 -malloc_limit_mb=128
//! ```
//!
//! (`RUSTC_BOOTSTRAP=1` lets a stable toolchain build with the sanitizer flags cargo-fuzz uses.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_core::wire::{self, Frame};

fuzz_target!(|input: &[u8]| {
    let Some((&limit_choice, stream)) = input.split_first() else {
        return;
    };
    // Limits from the smallest allowed (64 bytes) to 16 MiB.
    let frame_bytes_max = (*wire::FRAME_BYTES_MAX_RANGE.start() << (limit_choice % 19))
        .min(*wire::FRAME_BYTES_MAX_RANGE.end());
    let mut rest = stream;
    loop {
        match wire::decode(rest, frame_bytes_max) {
            Ok(Some((frame, used))) => {
                assert!(used <= frame_bytes_max && used <= rest.len());
                assert_eq!(
                    wire::parse(&rest[..used], frame_bytes_max).as_ref(),
                    Ok(&frame)
                );
                round_trip(frame, frame_bytes_max);
                rest = &rest[used..];
            }
            Ok(None) => {
                // A reader waits for more; at end of stream the tail is a truncated frame.
                assert!(wire::parse(rest, frame_bytes_max).is_err() || rest.is_empty());
                break;
            }
            Err(_) => break,
        }
    }
    // `parse` alone on the whole input: must refuse or decode, never panic.
    let _ = wire::parse(stream, frame_bytes_max);
});

fn round_trip(frame: Frame, frame_bytes_max: usize) {
    let encoded = match &frame {
        Frame::Handshake(handshake) => wire::encode_handshake(handshake),
        // A decoded frame's canonical encoding is never longer than the input (varints may be
        // written in a longer form than needed, never a shorter one).
        Frame::Message(message) => wire::encode_message(message, frame_bytes_max)
            .expect("a decoded message fits the limit it came in under"),
    };
    assert_eq!(wire::parse(&encoded, frame_bytes_max), Ok(frame));
}
