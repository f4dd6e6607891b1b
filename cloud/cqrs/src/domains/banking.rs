//! Banking: OpenAccount, Deposit, Withdraw, Transfer, CloseAccount.
//!
//! * Balances are `u64` cents and every debit is checked: a balance never goes negative.
//! * The audit trail is the account's stream (the API's history); snapshots every 100 events.
//! * **Fraud check** on Withdraw: more than [`FRAUD_MAX_WITHDRAWALS`] withdrawals within
//!   [`FRAUD_WINDOW_MS`], or an amount above [`FRAUD_AMOUNT_CENTS`], appends `FraudSuspected`
//!   beside `Withdrawn` (the withdrawal stands; the read model `fraud/<account>` lists alerts).
//! * **Transfer** is a process manager driven by events, with no distributed lock: `Transfer` on
//!   the source account debits it (`TransferDebited`, the money is now in flight); the
//!   [`TransferManager`] sees that event and sends `CreditTransfer` to the target; when the
//!   target accepts (`TransferCredited`) it sends `CompleteTransfer` to the source, and when the
//!   target refuses (closed, missing) it sends `RefundTransfer` to the source (compensation:
//!   `TransferRefunded` restores the balance). Each step's command id is derived from the
//!   transfer id, and both accounts remember the transfer ids they saw, so the whole transfer is
//!   idempotent by transfer id however often events are re-delivered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use outrider_store::{Event, EventStore, StreamFilter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::aggregate::{Aggregate, CommandContext, DomainError};
use crate::error::{CqrsError, HandleError};
use crate::processor::EventHandler;
use crate::projection::{Docs, Projection};
use crate::repository::{decode_event, Repository};

/// More withdrawals than this within the window raise FraudSuspected.
pub const FRAUD_MAX_WITHDRAWALS: usize = 3;
pub const FRAUD_WINDOW_MS: i64 = 60_000;
/// A single withdrawal above this raises FraudSuspected.
pub const FRAUD_AMOUNT_CENTS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AccountStatus {
    #[default]
    None,
    Open,
    Closed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub status: AccountStatus,
    pub owner: String,
    pub balance_cents: u64,
    /// Times (ms) of recent withdrawals, for the velocity check.
    pub recent_withdrawals: VecDeque<i64>,
    /// Outgoing transfers debited but not completed or refunded: id → amount.
    pub pending_transfers: BTreeMap<String, u64>,
    /// Every transfer id this account debited or credited (idempotency by transfer id).
    pub seen_transfers: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AccountCommand {
    OpenAccount {
        owner: String,
    },
    Deposit {
        amount_cents: u64,
    },
    Withdraw {
        amount_cents: u64,
    },
    /// Starts a transfer from this account.
    Transfer {
        transfer_id: String,
        to_account: String,
        amount_cents: u64,
    },
    CloseAccount,
    /// Sent by the transfer process manager to the target.
    CreditTransfer {
        transfer_id: String,
        from_account: String,
        amount_cents: u64,
    },
    /// Sent by the transfer process manager to the source once the target was credited.
    CompleteTransfer {
        transfer_id: String,
    },
    /// Sent by the transfer process manager to the source when the target refused the credit.
    RefundTransfer {
        transfer_id: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AccountEvent {
    AccountOpened {
        owner: String,
    },
    Deposited {
        amount_cents: u64,
        balance_cents: u64,
    },
    Withdrawn {
        amount_cents: u64,
        balance_cents: u64,
        at_ms: i64,
    },
    FraudSuspected {
        reason: String,
        amount_cents: u64,
        at_ms: i64,
    },
    TransferDebited {
        transfer_id: String,
        to_account: String,
        amount_cents: u64,
        balance_cents: u64,
    },
    TransferCredited {
        transfer_id: String,
        from_account: String,
        amount_cents: u64,
        balance_cents: u64,
    },
    TransferCompleted {
        transfer_id: String,
    },
    TransferRefunded {
        transfer_id: String,
        amount_cents: u64,
        reason: String,
        balance_cents: u64,
    },
    AccountClosed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    #[error("account already exists")]
    AlreadyExists,
    #[error("account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance_cents}, requested {requested_cents}")]
    InsufficientFunds {
        balance_cents: u64,
        requested_cents: u64,
    },
    #[error("amount must be positive")]
    InvalidAmount,
    #[error("cannot close an account with balance {0}: withdraw it first")]
    BalanceNotZero(u64),
    #[error("cannot close an account with {0} transfers in flight")]
    TransfersPending(usize),
    #[error("a transfer needs another account")]
    SameAccount,
    #[error("no transfer {0:?} in flight")]
    UnknownTransfer(String),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl DomainError for BankError {
    fn code(&self) -> &'static str {
        match self {
            BankError::AlreadyExists => "already_exists",
            BankError::NotOpen => "account_not_open",
            BankError::InsufficientFunds { .. } => "insufficient_funds",
            BankError::InvalidAmount => "invalid_amount",
            BankError::BalanceNotZero(_) => "balance_not_zero",
            BankError::TransfersPending(_) => "transfers_pending",
            BankError::SameAccount => "same_account",
            BankError::UnknownTransfer(_) => "unknown_transfer",
            BankError::Invalid(_) => "invalid",
        }
    }
}

impl Account {
    fn open(&self) -> Result<(), BankError> {
        if self.status == AccountStatus::Open {
            Ok(())
        } else {
            Err(BankError::NotOpen)
        }
    }

    fn debit(&self, amount: u64) -> Result<u64, BankError> {
        if amount == 0 {
            return Err(BankError::InvalidAmount);
        }
        self.balance_cents
            .checked_sub(amount)
            .ok_or(BankError::InsufficientFunds {
                balance_cents: self.balance_cents,
                requested_cents: amount,
            })
    }

    fn credit(&self, amount: u64) -> Result<u64, BankError> {
        if amount == 0 {
            return Err(BankError::InvalidAmount);
        }
        self.balance_cents
            .checked_add(amount)
            .ok_or(BankError::Invalid("amount: the balance would overflow"))
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    const COMMANDS: &'static [&'static str] = &[
        "OpenAccount",
        "Deposit",
        "Withdraw",
        "Transfer",
        "CloseAccount",
        "CreditTransfer",
        "CompleteTransfer",
        "RefundTransfer",
    ];
    const SNAPSHOT_EVERY: u64 = 100;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = BankError;

    fn decide(
        &self,
        command: &AccountCommand,
        ctx: &CommandContext<'_>,
    ) -> Result<Vec<AccountEvent>, BankError> {
        use AccountCommand as C;
        use AccountEvent as E;
        match command {
            C::OpenAccount { owner } => {
                if self.status != AccountStatus::None {
                    return Err(BankError::AlreadyExists);
                }
                if owner.is_empty() {
                    return Err(BankError::Invalid("owner: empty"));
                }
                Ok(vec![E::AccountOpened {
                    owner: owner.clone(),
                }])
            }
            C::Deposit { amount_cents } => {
                self.open()?;
                Ok(vec![E::Deposited {
                    amount_cents: *amount_cents,
                    balance_cents: self.credit(*amount_cents)?,
                }])
            }
            C::Withdraw { amount_cents } => {
                self.open()?;
                let balance = self.debit(*amount_cents)?;
                let now = ctx.now_ms;
                let mut out = vec![E::Withdrawn {
                    amount_cents: *amount_cents,
                    balance_cents: balance,
                    at_ms: now,
                }];
                let recent = self
                    .recent_withdrawals
                    .iter()
                    .filter(|t| **t > now - FRAUD_WINDOW_MS)
                    .count();
                let reason = if *amount_cents > FRAUD_AMOUNT_CENTS {
                    Some(format!("amount above {FRAUD_AMOUNT_CENTS} cents"))
                } else if recent + 1 > FRAUD_MAX_WITHDRAWALS {
                    Some(format!(
                        "velocity: {} withdrawals within {} s",
                        recent + 1,
                        FRAUD_WINDOW_MS / 1000
                    ))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    out.push(E::FraudSuspected {
                        reason,
                        amount_cents: *amount_cents,
                        at_ms: now,
                    });
                }
                Ok(out)
            }
            C::Transfer {
                transfer_id,
                to_account,
                amount_cents,
            } => {
                self.open()?;
                if transfer_id.is_empty() {
                    return Err(BankError::Invalid("transfer_id: empty"));
                }
                if to_account == ctx.aggregate_id {
                    return Err(BankError::SameAccount);
                }
                if self.seen_transfers.contains(transfer_id) {
                    return Ok(Vec::new());
                }
                Ok(vec![E::TransferDebited {
                    transfer_id: transfer_id.clone(),
                    to_account: to_account.clone(),
                    amount_cents: *amount_cents,
                    balance_cents: self.debit(*amount_cents)?,
                }])
            }
            C::CreditTransfer {
                transfer_id,
                from_account,
                amount_cents,
            } => {
                if self.seen_transfers.contains(transfer_id) {
                    return Ok(Vec::new());
                }
                self.open()?;
                Ok(vec![E::TransferCredited {
                    transfer_id: transfer_id.clone(),
                    from_account: from_account.clone(),
                    amount_cents: *amount_cents,
                    balance_cents: self.credit(*amount_cents)?,
                }])
            }
            C::CompleteTransfer { transfer_id } => {
                if !self.pending_transfers.contains_key(transfer_id) {
                    // Already completed or refunded: nothing to do (idempotent).
                    return Ok(Vec::new());
                }
                Ok(vec![E::TransferCompleted {
                    transfer_id: transfer_id.clone(),
                }])
            }
            C::RefundTransfer {
                transfer_id,
                reason,
            } => {
                let Some(amount) = self.pending_transfers.get(transfer_id) else {
                    return Ok(Vec::new());
                };
                // A refund is allowed on a closed account too: the money must come back.
                Ok(vec![E::TransferRefunded {
                    transfer_id: transfer_id.clone(),
                    amount_cents: *amount,
                    reason: reason.clone(),
                    balance_cents: self.credit(*amount)?,
                }])
            }
            C::CloseAccount => {
                self.open()?;
                if !self.pending_transfers.is_empty() {
                    return Err(BankError::TransfersPending(self.pending_transfers.len()));
                }
                if self.balance_cents != 0 {
                    return Err(BankError::BalanceNotZero(self.balance_cents));
                }
                Ok(vec![E::AccountClosed])
            }
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        use AccountEvent as E;
        match event {
            E::AccountOpened { owner } => {
                self.status = AccountStatus::Open;
                self.owner.clone_from(owner);
            }
            E::Deposited { balance_cents, .. } => self.balance_cents = *balance_cents,
            E::Withdrawn {
                balance_cents,
                at_ms,
                ..
            } => {
                self.balance_cents = *balance_cents;
                self.recent_withdrawals.push_back(*at_ms);
                while self.recent_withdrawals.len() > FRAUD_MAX_WITHDRAWALS + 1 {
                    self.recent_withdrawals.pop_front();
                }
            }
            E::FraudSuspected { .. } => {}
            E::TransferDebited {
                transfer_id,
                amount_cents,
                balance_cents,
                ..
            } => {
                self.balance_cents = *balance_cents;
                self.pending_transfers
                    .insert(transfer_id.clone(), *amount_cents);
                self.seen_transfers.insert(transfer_id.clone());
            }
            E::TransferCredited {
                transfer_id,
                balance_cents,
                ..
            } => {
                self.balance_cents = *balance_cents;
                self.seen_transfers.insert(transfer_id.clone());
            }
            E::TransferCompleted { transfer_id } => {
                self.pending_transfers.remove(transfer_id);
            }
            E::TransferRefunded {
                transfer_id,
                balance_cents,
                ..
            } => {
                self.balance_cents = *balance_cents;
                self.pending_transfers.remove(transfer_id);
            }
            E::AccountClosed => self.status = AccountStatus::Closed,
        }
    }

    fn exists(&self) -> bool {
        self.status != AccountStatus::None
    }
}

/// The transfer process manager (see the module docs).
pub struct TransferManager<S> {
    accounts: Repository<Account, S>,
}

impl<S> TransferManager<S> {
    pub fn new(accounts: Repository<Account, S>) -> Self {
        Self { accounts }
    }
}

#[async_trait]
impl<S: EventStore + Clone + 'static> EventHandler for TransferManager<S> {
    fn name(&self) -> &str {
        "banking-transfers"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::Prefix("account-".into())
    }

    async fn handle(&self, event: &Event) -> crate::Result<()> {
        let source = super::aggregate_id(event, "account-");
        match decode_event::<Account>(event)? {
            AccountEvent::TransferDebited {
                transfer_id,
                to_account,
                amount_cents,
                ..
            } => {
                let credit = AccountCommand::CreditTransfer {
                    transfer_id: transfer_id.clone(),
                    from_account: source.clone(),
                    amount_cents,
                };
                let credited = self
                    .accounts
                    .handle(
                        &to_account,
                        &format!("transfer-{transfer_id}-credit"),
                        None,
                        &credit,
                    )
                    .await;
                let next = match credited {
                    Ok(_) => (
                        "complete",
                        AccountCommand::CompleteTransfer {
                            transfer_id: transfer_id.clone(),
                        },
                    ),
                    Err(HandleError::Domain(e)) => (
                        "refund",
                        AccountCommand::RefundTransfer {
                            transfer_id: transfer_id.clone(),
                            reason: format!("the target refused the credit: {e}"),
                        },
                    ),
                    // An invalid target id can never be credited either: refund.
                    Err(HandleError::Cqrs(CqrsError::InvalidAggregateId { reason, .. })) => (
                        "refund",
                        AccountCommand::RefundTransfer {
                            transfer_id: transfer_id.clone(),
                            reason: format!("invalid target account: {reason}"),
                        },
                    ),
                    Err(HandleError::Cqrs(e)) => return Err(e),
                };
                let (step, cmd) = next;
                match self
                    .accounts
                    .handle(
                        &source,
                        &format!("transfer-{transfer_id}-{step}"),
                        None,
                        &cmd,
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(HandleError::Domain(e)) => {
                        // The source is ours and holds the pending transfer: cannot refuse.
                        tracing::error!(transfer_id, error = %e, "source refused a transfer step");
                        Ok(())
                    }
                    Err(HandleError::Cqrs(e)) => Err(e),
                }
            }
            _ => Ok(()),
        }
    }
}

/// The `banking` projection: `account/<id>` (balance and status), `transfer/<id>` (where each
/// transfer is) and `fraud/<id>` (the account's fraud alerts).
pub struct BankingProjection;

#[async_trait]
impl Projection for BankingProjection {
    fn name(&self) -> &str {
        "banking"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::Prefix("account-".into())
    }

    async fn apply(&self, event: &Event, docs: &mut Docs) -> Result<(), String> {
        let ev: AccountEvent = serde_json::from_str(&event.detail).map_err(|e| e.to_string())?;
        let id = super::aggregate_id(event, "account-");
        let key = format!("account/{id}");
        let mut acc = docs
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| json!({"account_id": id, "status": "Open", "balance_cents": 0}));
        let mut transfer: Option<(String, serde_json::Value)> = None;
        match &ev {
            AccountEvent::AccountOpened { owner } => acc["owner"] = json!(owner),
            AccountEvent::Deposited { balance_cents, .. }
            | AccountEvent::Withdrawn { balance_cents, .. } => {
                acc["balance_cents"] = json!(balance_cents)
            }
            AccountEvent::FraudSuspected {
                reason,
                amount_cents,
                at_ms,
            } => {
                let fkey = format!("fraud/{id}");
                let mut f = docs
                    .get(&fkey)
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or_else(|| json!({"account_id": id, "alerts": []}));
                if let Some(a) = f["alerts"].as_array_mut() {
                    a.push(json!({"reason": reason, "amount_cents": amount_cents, "at_ms": at_ms, "version": event.version}));
                }
                docs.put(&fkey, f).await.map_err(|e| e.to_string())?;
            }
            AccountEvent::TransferDebited {
                transfer_id,
                to_account,
                amount_cents,
                balance_cents,
            } => {
                acc["balance_cents"] = json!(balance_cents);
                transfer = Some((
                    transfer_id.clone(),
                    json!({"from": id, "to": to_account, "amount_cents": amount_cents, "status": "debited"}),
                ));
            }
            AccountEvent::TransferCredited {
                transfer_id,
                balance_cents,
                ..
            } => {
                acc["balance_cents"] = json!(balance_cents);
                transfer = Some((transfer_id.clone(), json!({"status": "credited"})));
            }
            AccountEvent::TransferCompleted { transfer_id } => {
                transfer = Some((transfer_id.clone(), json!({"status": "completed"})));
            }
            AccountEvent::TransferRefunded {
                transfer_id,
                balance_cents,
                reason,
                ..
            } => {
                acc["balance_cents"] = json!(balance_cents);
                transfer = Some((
                    transfer_id.clone(),
                    json!({"status": "refunded", "reason": reason}),
                ));
            }
            AccountEvent::AccountClosed => acc["status"] = json!("Closed"),
        }
        acc["version"] = json!(event.version);
        docs.put(&key, acc).await.map_err(|e| e.to_string())?;
        if let Some((tid, patch)) = transfer {
            let tkey = format!("transfer/{tid}");
            let mut t = docs
                .get(&tkey)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| json!({"transfer_id": tid}));
            if let (Some(obj), Some(p)) = (t.as_object_mut(), patch.as_object()) {
                for (k, v) in p {
                    // A late "credited" must not overwrite "completed"/"refunded".
                    if k == "status"
                        && v == "credited"
                        && matches!(
                            obj.get("status").and_then(|s| s.as_str()),
                            Some("completed" | "refunded")
                        )
                    {
                        continue;
                    }
                    obj.insert(k.clone(), v.clone());
                }
            }
            docs.put(&tkey, t).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Starts the transfer process manager over `store`.
pub fn spawn_transfer_manager<S: EventStore + Clone + 'static>(
    store: S,
    cfg: crate::RunnerConfig,
) -> crate::ProcessorHandle {
    let dyn_store: Arc<dyn EventStore> = Arc::new(store.clone());
    crate::spawn_processor(
        dyn_store,
        Arc::new(TransferManager::new(Repository::new(store))),
        cfg,
    )
}
