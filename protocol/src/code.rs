//! Fixed-number enumerations of the wire: answer codes, card states, meal periods and
//! top-up channels.
//!
//! A number, once given, is never reused for anything else. New values are added at the
//! end; a retired value stays reserved in docs/PROTOCOL.md.

/// Declares a `#[repr]` enum with its wire number and a checked conversion from it.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ty, $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The value's number on the wire.
            #[must_use]
            pub const fn to_wire(self) -> $repr {
                self as $repr
            }

            /// The value a wire number stands for.
            ///
            /// # Errors
            /// [`crate::DecodeError::InvalidValue`] for a number that names no value.
            pub const fn from_wire(value: $repr) -> Result<Self, crate::DecodeError> {
                match value {
                    $( $value => Ok(Self::$variant), )+
                    other => Err(crate::DecodeError::InvalidValue {
                        field: $field,
                        value: other as u64,
                    }),
                }
            }
        }
    };
}

wire_enum! {
    /// The server's decision on a request. `Approved` is the only success; every refusal
    /// is an answer, not an error, and the terminal shows it to the cardholder.
    pub enum AnswerCode: u16, "code" {
        /// Done and durable.
        Approved = 0,
        /// The card's purses cannot cover the amount.
        InsufficientFunds = 1,
        /// The card was reported lost.
        CardLost = 2,
        /// The card is frozen by the card centre.
        CardFrozen = 3,
        /// The card is past its expiry date.
        CardExpired = 4,
        /// The card's account is closed.
        CardClosed = 5,
        /// No card has this number.
        UnknownCard = 6,
        /// Above the card's per-transaction limit.
        TransactionLimit = 7,
        /// Would pass the card's daily limit.
        DailyLimit = 8,
        /// Above the no-PIN limit and no PIN block was sent.
        PinRequired = 9,
        /// The PIN does not match.
        WrongPin = 10,
        /// A retry of a request already decided; the original answer follows.
        Duplicate = 11,
        /// No terminal has this id.
        UnknownTerminal = 12,
        /// The terminal is disabled.
        TerminalDisabled = 13,
        /// The frame's MAC does not match.
        BadMac = 14,
        /// The sequence is not above the last one seen and is not a retry.
        StaleSequence = 15,
        /// The frame or its body does not parse.
        Malformed = 16,
        /// The frame's version is not spoken here.
        UnsupportedVersion = 17,
        /// A queue is full; retry the same request later.
        ServerBusy = 18,
        /// Only sign-on is accepted before sign-on.
        NotSignedOn = 19,
        /// The frame's MAC algorithm is unknown or not enabled.
        UnsupportedMacAlgorithm = 20,
        /// The message type is not defined.
        UnknownMessageType = 21,
        /// The transfer a refund names does not exist or is not a purchase.
        UnknownTransfer = 22,
        /// The refund would return more than the purchase left unrefunded.
        RefundExceedsPurchase = 23,
        /// A top-up would take the card above its maximum balance.
        BalanceLimit = 24,
        /// The card was replaced by a reissued one and never works again.
        CardReplaced = 25,
        /// The amount is zero or outside what the message allows.
        InvalidAmount = 26,
        /// The transfer a refund names was taken at another merchant.
        WrongMerchant = 27,
        /// The request was already reversed.
        AlreadyReversed = 28,
        /// Too many wrong PINs; the card centre must reset it.
        PinLocked = 29,
        /// The server is shutting down; retry after reconnecting.
        ShuttingDown = 30,
        /// The server cannot commit right now (storage fault); retry later.
        ServiceUnavailable = 31,
        /// The terminal may not take top-ups through this channel.
        ChannelNotAllowed = 32,
        /// A reversal's card or amount differs from the request it names.
        ReversalMismatch = 33,
        /// The sequence jumps more than `SEQUENCE_JUMP_MAX` above the highest the
        /// server has seen; nothing happened. A sign-on's answer carries the last
        /// sequence to resume above.
        SequenceJump = 34,
        /// This node of a cell does not lead it; the `Redirect` answer names the node
        /// that does, if one is known. Nothing happened; sign on there.
        NotLeader = 35,
    }
}

/// An enum's name in snake case (`AnswerCode::BadMac` → `"bad_mac"`): how metrics,
/// reports and the admin API spell the protocol's and the engine's enums.
#[must_use]
pub fn snake_case(value: impl std::fmt::Debug) -> String {
    let name = format!("{value:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

impl AnswerCode {
    /// Whether the request took effect.
    #[must_use]
    pub const fn is_approved(self) -> bool {
        matches!(self, Self::Approved)
    }
}

impl std::fmt::Display for AnswerCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}({})", self.to_wire())
    }
}

wire_enum! {
    /// Where a card stands, as a terminal sees it.
    pub enum CardState: u8, "card_state" {
        /// Usable.
        Active = 1,
        /// Reported lost; every debit refused.
        Lost = 2,
        /// Frozen by the card centre.
        Frozen = 3,
        /// Account closed.
        Closed = 4,
        /// Replaced by a reissued card.
        Replaced = 5,
    }
}

wire_enum! {
    /// The meal a canteen purchase belongs to, as the terminal knows it.
    pub enum MealPeriod: u8, "meal_period" {
        /// The terminal does not say; the server derives it from the time.
        Unspecified = 0,
        /// 早餐.
        Breakfast = 1,
        /// 午餐.
        Lunch = 2,
        /// 晚餐.
        Dinner = 3,
        /// 夜宵.
        Night = 4,
    }
}

wire_enum! {
    /// The channel a top-up's money came through.
    pub enum Channel: u8, "channel" {
        /// The mobile app.
        App = 1,
        /// The e-code (payment QR) channel.
        ECode = 2,
        /// A self-service cash machine.
        CashMachine = 3,
        /// A card-centre counter.
        Counter = 4,
        /// A bank load (圈存) from the holder's bank account.
        BankLoad = 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_code_round_trips_and_unknown_numbers_are_refused() {
        for code in AnswerCode::ALL {
            assert_eq!(AnswerCode::from_wire(code.to_wire()), Ok(*code));
        }
        let next = u16::try_from(AnswerCode::ALL.len()).expect("codes fit u16");
        assert!(AnswerCode::from_wire(next).is_err());
        assert!(AnswerCode::from_wire(u16::MAX).is_err());
    }

    #[test]
    fn answer_codes_are_dense_from_zero() {
        for (index, code) in AnswerCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.to_wire()), index, "{code:?}");
        }
    }
}
