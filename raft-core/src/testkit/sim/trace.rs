//! The run's trace: one line per event, with the virtual time first. The same seed gives the
//! same bytes, so two traces can be compared with `diff`.

use crate::message::{AppendResponse, ForwardRefusal, Message, MessageBody};
use crate::types::{Entry, EntryPayload};
use std::fmt::{self, Write as _};

/// Default bound on a trace's size: a long run's trace stops there (with a note) instead of
/// growing without limit.
pub const TRACE_BYTES_MAX_DEFAULT: usize = 512 << 20;

/// A bounded text trace, or nothing when disabled (then recording costs a branch).
#[derive(Debug, Default)]
pub struct Trace {
    enabled: bool,
    text: String,
    bytes_max: usize,
    truncated: bool,
}

impl Trace {
    /// A trace that records up to `bytes_max` bytes when `enabled`.
    pub fn new(enabled: bool, bytes_max: usize) -> Trace {
        Trace {
            enabled,
            text: String::new(),
            bytes_max,
            truncated: false,
        }
    }

    /// True when lines are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Appends one line for an event at virtual time `now` (milliseconds).
    pub fn line(&mut self, now: u64, args: fmt::Arguments<'_>) {
        if !self.enabled || self.truncated {
            return;
        }
        if self.text.len() >= self.bytes_max {
            self.truncated = true;
            self.text
                .push_str("... trace truncated at trace_bytes_max\n");
            return;
        }
        let _ = write!(self.text, "{now:>9} ");
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
    }

    /// The text recorded so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Takes the text recorded so far, leaving the trace empty.
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.text)
    }
}

/// Formats a message compactly for the trace, e.g.
/// `n1->n2 t3 append prev=i4/t3 [i5/t3 cmd 12B] commit=i4`.
pub struct ShowMessage<'a>(pub &'a Message);

impl fmt::Display for ShowMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{}->{} {} ", m.from, m.to, m.term)?;
        // The fallback arm keeps message kinds added later printable (as Debug), and the
        // struct patterns match the heartbeat answer with or without fields.
        #[allow(unreachable_patterns, clippy::unneeded_struct_pattern)]
        match &m.body {
            MessageBody::VoteRequest {
                pre_vote,
                last_log_index,
                last_log_term,
                transfer,
            } => {
                let kind = if *pre_vote { "prevote" } else { "vote" };
                let why = if *transfer { " transfer" } else { "" };
                write!(f, "{kind} last={last_log_index}/{last_log_term}{why}")
            }
            MessageBody::TimeoutNow => write!(f, "timeout-now"),
            MessageBody::VoteResponse {
                pre_vote, granted, ..
            } => {
                let kind = if *pre_vote { "prevote" } else { "vote" };
                let answer = if *granted { "granted" } else { "refused" };
                write!(f, "{kind}-{answer}")
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                write!(f, "append prev={prev_log_index}/{prev_log_term} [")?;
                show_entries(f, entries)?;
                write!(f, "] commit={leader_commit}")
            }
            MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) => {
                write!(f, "append-ok match={match_index}")
            }
            MessageBody::AppendResponse(AppendResponse::Rejected {
                rejected_index,
                hint_term,
                hint_index,
            }) => write!(
                f,
                "append-rejected at={rejected_index} hint={hint_index}/{hint_term}"
            ),
            MessageBody::Heartbeat { commit, .. } => write!(f, "heartbeat commit={commit}"),
            MessageBody::HeartbeatResponse { .. } => write!(f, "heartbeat-ok"),
            MessageBody::Forward { proposals } => {
                write!(f, "forward")?;
                for p in proposals {
                    write!(f, " {:x}({}B)", p.id.0, p.data.len())?;
                }
                Ok(())
            }
            MessageBody::ForwardResponse { outcomes } => {
                write!(f, "forward-answer")?;
                for o in outcomes {
                    match o.result {
                        Ok((term, index)) => write!(f, " {:x}={index}/{term}", o.id.0)?,
                        Err(ForwardRefusal::NotLeader) => write!(f, " {:x}=not-leader", o.id.0)?,
                        Err(ForwardRefusal::UncommittedFull) => write!(f, " {:x}=full", o.id.0)?,
                        Err(ForwardRefusal::TooLarge { .. }) => {
                            write!(f, " {:x}=too-large", o.id.0)?
                        }
                    }
                }
                Ok(())
            }
            other => write!(f, "{other:?}"),
        }
    }
}

/// Entries as `i5/t3 cmd 12B, i6/t3 blank`, abbreviated past a few.
pub(crate) fn show_entries(f: &mut fmt::Formatter<'_>, entries: &[Entry]) -> fmt::Result {
    const SHOWN_MAX: usize = 4;
    for (k, entry) in entries.iter().take(SHOWN_MAX).enumerate() {
        if k > 0 {
            write!(f, ", ")?;
        }
        match &entry.payload {
            EntryPayload::Blank => write!(f, "{}/{} blank", entry.index, entry.term)?,
            EntryPayload::Membership(membership) => {
                write!(f, "{}/{} {membership}", entry.index, entry.term)?
            }
            EntryPayload::Command(data) => {
                write!(f, "{}/{} cmd {}B", entry.index, entry.term, data.len())?
            }
            EntryPayload::SessionCommand(command) => write!(
                f,
                "{}/{} cmd {} {}B",
                entry.index,
                entry.term,
                command.tag,
                command.command.len()
            )?,
        }
    }
    if entries.len() > SHOWN_MAX {
        write!(f, ", ... {} more", entries.len() - SHOWN_MAX)?;
    }
    Ok(())
}

/// Formats a list of entries like `show_entries`.
pub struct ShowEntries<'a>(pub &'a [Entry]);

impl fmt::Display for ShowEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show_entries(f, self.0)
    }
}
