#![doc = include_str!("../../docs/guide.md")]

mod ledger;

pub use ledger::Ledger;
