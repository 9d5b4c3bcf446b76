//! Adjustments (调账): the only way a discrepancy is corrected. An adjustment is a new
//! transfer, never an edit; it runs only once approved (the approval is the caller's:
//! two different operators through the API), and exactly once: its id is its
//! idempotency key, stored in the same write as the transfer.

use std::sync::Arc;

use crate::account::{AccountId, AccountKind};
use crate::cards::CardAccount;
use crate::journal::TransferKind;
use crate::ledger::{ControlError, ControlTransfer, Ledger};
use crate::store::{CF_CONTROL, control_key, prefixed_key};

/// An approved adjustment to post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdjustmentOrder {
    /// The adjustment's id: posting the same id twice posts once.
    pub id: u64,
    /// The account debited.
    pub debit: AccountId,
    /// The account credited.
    pub credit: AccountId,
    /// Fen, positive.
    pub amount_fen: i64,
}

fn posted_key(id: u64) -> Vec<u8> {
    prefixed_key(control_key::ADJUSTMENT, &id.to_be_bytes())
}

impl Ledger {
    /// The transfer adjustment `id` posted, if it has been.
    ///
    /// # Errors
    /// A failed read.
    pub fn adjustment_transfer(&self, id: u64) -> Result<Option<u64>, ControlError> {
        let store = self.store();
        let value = store.db().get_cf(store.cf(CF_CONTROL), posted_key(id))?;
        Ok(value
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Posts an approved adjustment and returns its transfer id; an id already
    /// posted returns the transfer it posted and posts nothing. A card purse may be
    /// on either side: credited once the write is durable, or debited only from
    /// what it holds.
    ///
    /// # Errors
    /// [`ControlError::InvalidAmount`] for a non-positive amount or one a card purse
    /// does not hold; [`ControlError::UnknownMerchant`] or
    /// [`ControlError::UnknownCard`] for an account that does not exist;
    /// [`ControlError::Corrupt`] for the same account on both sides; a failed write.
    pub fn post_adjustment(&self, order: AdjustmentOrder) -> Result<u64, ControlError> {
        if order.amount_fen <= 0 || order.amount_fen > i64::from(u32::MAX) * 100 {
            return Err(ControlError::InvalidAmount(order.amount_fen));
        }
        if order.debit == order.credit {
            return Err(ControlError::SameAccount(order.debit.to_string()));
        }
        let mut cards: Vec<Arc<CardAccount>> = Vec::new();
        for account in [order.debit, order.credit] {
            match account.kind() {
                AccountKind::Merchant => {
                    let id = account.merchant_id().unwrap_or(0);
                    if !self.merchants().iter().any(|m| m.id == id) {
                        return Err(ControlError::UnknownMerchant(id));
                    }
                }
                AccountKind::Card | AccountKind::CardRestricted => {
                    let card = self
                        .shared
                        .cards
                        .account(account.number())
                        .ok_or(ControlError::UnknownCard(account.number()))?;
                    cards.push(card);
                }
                AccountKind::ChannelClearing => {
                    let wire = u8::try_from(account.number()).unwrap_or(0);
                    if onecard_protocol::Channel::from_wire(wire).is_err() {
                        return Err(ControlError::UnknownAccount(account.to_string()));
                    }
                }
                // The university's single accounts are number 0 alone.
                _ if account.number() != 0 => {
                    return Err(ControlError::UnknownAccount(account.to_string()));
                }
                _ => {}
            }
        }
        cards.sort_by_key(|card| card.number);
        cards.dedup_by_key(|card| card.number);
        if let Some(card) = cards.iter().find(|card| card.in_doubt()) {
            return Err(ControlError::InDoubt(card.number));
        }
        // Card accounts first, in account order, then the control journal: the order
        // every control operation takes them in.
        let mut guards: Vec<_> = cards.iter().map(|card| (card.number, card.lock())).collect();
        let mut control = self.control();
        if let Some(transfer_id) = self.adjustment_transfer(order.id)? {
            return Ok(transfer_id);
        }
        if order.debit.kind().is_card() {
            let (_, state) = guards
                .iter()
                .find(|(number, _)| *number == order.debit.number())
                .ok_or(ControlError::UnknownCard(order.debit.number()))?;
            let purse = if order.debit.kind() == AccountKind::Card {
                state.balance_fen
            } else {
                state.restricted_fen
            };
            if purse < order.amount_fen {
                return Err(ControlError::InvalidAmount(order.amount_fen));
            }
        }
        let transfer_id = control.tail.next_transfer_id();
        let transfer = ControlTransfer {
            debit: order.debit,
            credit: order.credit,
            amount_fen: order.amount_fen,
            kind: TransferKind::Adjustment,
            card_number: 0,
        };
        self.commit_control(&mut control, &[], &[transfer], |write, cf| {
            write.put_cf(cf, posted_key(order.id), transfer_id.to_be_bytes());
        })?;
        drop(control);
        for (number, state) in &mut guards {
            for (account, sign) in [(order.credit, 1), (order.debit, -1)] {
                if account.kind().is_card() && account.number() == *number {
                    if account.kind() == AccountKind::Card {
                        state.balance_fen += sign * order.amount_fen;
                    } else {
                        state.restricted_fen += sign * order.amount_fen;
                    }
                }
            }
        }
        tracing::info!(id = order.id, transfer_id, debit = %order.debit, credit = %order.credit, fen = order.amount_fen, "adjustment posted");
        Ok(transfer_id)
    }
}
