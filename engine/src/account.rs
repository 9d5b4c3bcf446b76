//! The chart of accounts: what every account id means.
//!
//! An [`AccountId`] is a `u64` whose top byte is the [`AccountKind`] and whose low 56
//! bits number the account within its kind (a card account number, a merchant id, a
//! channel number, or 0 for the university's single accounts). The id is also the
//! account's key in the balances column family, so a range scan of one kind is a scan
//! of one key prefix.
//!
//! Balances follow the liability convention: an account's balance is its credits less
//! its debits. A card's balance is what the university owes the holder; a top-up
//! debits the channel's clearing account and credits the card; a purchase debits the
//! card and credits the merchant. The balances of all accounts sum to zero.

use onecard_protocol::Channel;

/// What an account is, to finance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum AccountKind {
    /// A card account's main purse: stored value the university owes the holder.
    Card = 1,
    /// A card account's restricted purse (a utility subsidy), spendable only at
    /// utility merchants and paid from first there.
    CardRestricted = 2,
    /// Owed to a merchant until settlement pays it out. Numbered by merchant id.
    Merchant = 3,
    /// Money a top-up channel has collected and must hand over. Numbered by channel.
    ChannelClearing = 4,
    /// The university's subsidy budget.
    SubsidyFunding = 5,
    /// Subsidies granted and not yet credited to cards.
    PendingSubsidy = 6,
    /// Deposits (押金) held while cards are out.
    Deposit = 7,
    /// Card fee (工本费) income.
    CardFeeIncome = 8,
    /// Commission income from merchant settlement.
    CommissionIncome = 9,
    /// Money paid out to merchants at settlement.
    SettlementPayout = 10,
    /// Held for review: quarantined offline records, discrepancies.
    Suspense = 11,
    /// Owed to holders of closed cards until finance pays them.
    RefundPayable = 12,
}

impl AccountKind {
    /// Every kind, in number order.
    pub const ALL: [Self; 12] = [
        Self::Card,
        Self::CardRestricted,
        Self::Merchant,
        Self::ChannelClearing,
        Self::SubsidyFunding,
        Self::PendingSubsidy,
        Self::Deposit,
        Self::CardFeeIncome,
        Self::CommissionIncome,
        Self::SettlementPayout,
        Self::Suspense,
        Self::RefundPayable,
    ];

    /// The kind numbered `byte`, if any.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u8 == byte)
    }

    /// Whether the account is one of a card's purses.
    #[must_use]
    pub const fn is_card(self) -> bool {
        matches!(self, Self::Card | Self::CardRestricted)
    }

    /// The name finance sees.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::CardRestricted => "card_restricted",
            Self::Merchant => "merchant",
            Self::ChannelClearing => "channel_clearing",
            Self::SubsidyFunding => "subsidy_funding",
            Self::PendingSubsidy => "pending_subsidy",
            Self::Deposit => "deposit",
            Self::CardFeeIncome => "card_fee_income",
            Self::CommissionIncome => "commission_income",
            Self::SettlementPayout => "settlement_payout",
            Self::Suspense => "suspense",
            Self::RefundPayable => "refund_payable",
        }
    }
}

/// The largest number an account can have within its kind.
pub const ACCOUNT_NUMBER_MAX: u64 = (1 << 56) - 1;

/// One account: kind in the top byte, number in the low 56 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(u64);

impl AccountId {
    /// The account `number` of `kind`.
    ///
    /// # Panics
    /// If `number` exceeds [`ACCOUNT_NUMBER_MAX`]; numbers are assigned by the engine.
    #[must_use]
    pub const fn new(kind: AccountKind, number: u64) -> Self {
        assert!(number <= ACCOUNT_NUMBER_MAX, "account number out of range");
        Self(((kind as u64) << 56) | number)
    }

    /// A card account's main purse.
    #[must_use]
    pub const fn card(account_number: u64) -> Self {
        Self::new(AccountKind::Card, account_number)
    }

    /// A card account's restricted purse.
    #[must_use]
    pub const fn card_restricted(account_number: u64) -> Self {
        Self::new(AccountKind::CardRestricted, account_number)
    }

    /// A merchant's account.
    #[must_use]
    pub const fn merchant(merchant_id: u32) -> Self {
        Self::new(AccountKind::Merchant, merchant_id as u64)
    }

    /// A top-up channel's clearing account.
    #[must_use]
    pub const fn channel(channel: Channel) -> Self {
        Self::new(AccountKind::ChannelClearing, channel.to_wire() as u64)
    }

    /// One of the university's single accounts (number 0).
    #[must_use]
    pub const fn single(kind: AccountKind) -> Self {
        Self::new(kind, 0)
    }

    /// The id as stored.
    #[must_use]
    pub const fn to_u64(self) -> u64 {
        self.0
    }

    /// Reads a stored id.
    ///
    /// # Errors
    /// The raw value, if its kind byte names no kind.
    pub fn from_u64(raw: u64) -> Result<Self, u64> {
        let kind = u8::try_from(raw >> 56).map_err(|_| raw)?;
        AccountKind::from_byte(kind).map(|_| Self(raw)).ok_or(raw)
    }

    /// The account's kind.
    #[must_use]
    pub fn kind(self) -> AccountKind {
        let byte = u8::try_from(self.0 >> 56).unwrap_or(0);
        AccountKind::from_byte(byte).expect("an AccountId is built only with a valid kind")
    }

    /// The account's number within its kind.
    #[must_use]
    pub const fn number(self) -> u64 {
        self.0 & ACCOUNT_NUMBER_MAX
    }

    /// The card account number, where this is one of a card's purses.
    #[must_use]
    pub fn card_account(self) -> Option<u64> {
        self.kind().is_card().then_some(self.number())
    }

    /// The merchant id, where this is a merchant account.
    #[must_use]
    pub fn merchant_id(self) -> Option<u32> {
        (self.kind() == AccountKind::Merchant).then(|| u32::try_from(self.number()).ok()).flatten()
    }
}

impl std::fmt::Debug for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind().name(), self.number())
    }
}

/// Parses `kind:number` (`merchant:12`, `suspense:0`, `card:41`), the form the API
/// and the workflows' forms name accounts in; `None` if it is not one.
#[must_use]
pub fn parse_account(text: &str) -> Option<AccountId> {
    let (kind, number) = text.split_once(':')?;
    let kind = AccountKind::ALL.into_iter().find(|k| k.name() == kind)?;
    let number: u64 = number.parse().ok()?;
    (number <= ACCOUNT_NUMBER_MAX).then(|| AccountId::new(kind, number))
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_keep_kind_and_number_apart() {
        for kind in AccountKind::ALL {
            let id = AccountId::new(kind, ACCOUNT_NUMBER_MAX);
            assert_eq!(id.kind(), kind);
            assert_eq!(id.number(), ACCOUNT_NUMBER_MAX);
            assert_eq!(AccountId::from_u64(id.to_u64()), Ok(id));
        }
        assert!(AccountId::from_u64(0).is_err());
        assert!(AccountId::from_u64(0xFF << 56).is_err());
        assert_eq!(AccountId::merchant(7).merchant_id(), Some(7));
        assert_eq!(AccountId::card(9).card_account(), Some(9));
        assert_eq!(AccountId::card_restricted(9).card_account(), Some(9));
    }

    #[test]
    fn ids_of_one_kind_sort_together() {
        assert!(AccountId::card(u32::MAX.into()) < AccountId::card_restricted(0));
    }
}
