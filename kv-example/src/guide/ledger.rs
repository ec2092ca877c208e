//! The guide's bank ledger: a [`StateMachine`] whose refusals are answers, with versioned
//! snapshots. See [the guide](crate::guide).

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use raft_core::{LogIndex, StateMachine, StateMachineError};
use std::collections::BTreeMap;

/// Balances by account. Commands: `deposit ACCOUNT AMOUNT`, `transfer FROM TO AMOUNT`;
/// answers: `balance N` after a deposit, `ok` after a transfer, or `refused: WHY`.
#[derive(Debug, Default)]
pub struct Ledger {
    balances: BTreeMap<String, u64>,
}

impl Ledger {
    /// The balance of `account` (0 for one never seen).
    pub fn balance(&self, account: &str) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }
}

#[async_trait]
impl StateMachine for Ledger {
    async fn apply(
        &mut self,
        _index: LogIndex,
        command: Bytes,
    ) -> Result<Bytes, StateMachineError> {
        let text = String::from_utf8_lossy(&command);
        let words: Vec<&str> = text.split(' ').collect();
        let answer = match words.as_slice() {
            ["deposit", account, amount] => match amount.parse::<u64>() {
                Ok(amount) => {
                    let balance = self.balances.entry(account.to_string()).or_default();
                    *balance += amount;
                    format!("balance {balance}")
                }
                Err(_) => "refused: the amount is not a number".to_string(),
            },
            ["transfer", from, to, amount] => match amount.parse::<u64>() {
                Ok(amount) if self.balance(from) >= amount => {
                    *self.balances.entry(from.to_string()).or_default() -= amount;
                    *self.balances.entry(to.to_string()).or_default() += amount;
                    "ok".to_string()
                }
                Ok(_) => "refused: insufficient funds".to_string(),
                Err(_) => "refused: the amount is not a number".to_string(),
            },
            _ => "refused: unknown command".to_string(),
        };
        Ok(Bytes::from(answer))
    }

    fn snapshot_format_version(&self) -> u32 {
        1
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        // Format 1: `account=balance` lines.
        let text: String = self
            .balances
            .iter()
            .map(|(a, b)| format!("{a}={b}\n"))
            .collect();
        out.write(text.as_bytes()).await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let bytes = data.read_to_end().await?;
        let damaged = || StateMachineError(format!("the ledger at {} is damaged", meta.last_index));
        let text = std::str::from_utf8(&bytes).map_err(|_| damaged())?;
        let mut balances = BTreeMap::new();
        for line in text.lines() {
            let (account, balance) = line.split_once('=').ok_or_else(damaged)?;
            balances.insert(account.to_string(), balance.parse().map_err(|_| damaged())?);
        }
        self.balances = balances;
        Ok(())
    }
}
