//! proptest strategies for every message.

use onecard_protocol::code::{AnswerCode, CardState, Channel, MealPeriod};
use onecard_protocol::limits::{BLACKLIST_ENTRIES_MAX, OFFLINE_RECORDS_MAX};
use onecard_protocol::message::{
    Answer, BalanceAnswer, BalanceInquiry, BlacklistAnswer, BlacklistDownload, BlacklistEntry,
    Heartbeat, HeartbeatAnswer, OfflineRecord, OfflineResult, OfflineUpload, OfflineUploadAnswer,
    Purchase, Reference, Refund, Reject, Request, Reversal, SignOffAnswer, SignOn, SignOnAnswer,
    TopUp, TransferAnswer,
};
use onecard_protocol::pin::PinBlock;
use proptest::collection::vec;
use proptest::prelude::*;

fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

/// Any code but `Duplicate`, which only travels as a prefix.
fn code() -> impl Strategy<Value = AnswerCode> {
    pick(AnswerCode::ALL).prop_filter("Duplicate is a prefix", |c| *c != AnswerCode::Duplicate)
}

fn meal() -> impl Strategy<Value = MealPeriod> {
    pick(MealPeriod::ALL)
}

fn reference() -> impl Strategy<Value = Reference> {
    vec(any::<u8>(), 0..=32).prop_map(|bytes| Reference::new(&bytes).expect("at most 32"))
}

fn offline_record() -> impl Strategy<Value = OfflineRecord> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>(), meal(), any::<u32>()).prop_map(
        |(sequence, card_number, amount_fen, taken_at_ms, meal_period, item_code)| OfflineRecord {
            sequence,
            card_number,
            amount_fen,
            taken_at_ms,
            meal_period,
            item_code,
        },
    )
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u64>(), any::<u32>()).prop_map(|(blacklist_version, software_version)| {
            Request::SignOn(SignOn { blacklist_version, software_version })
        }),
        any::<u64>().prop_map(|v| Request::Heartbeat(Heartbeat { blacklist_version: v })),
        (any::<u64>(), any::<u32>(), meal(), any::<u32>(), any::<Option<[u8; 8]>>()).prop_map(
            |(card_number, amount_fen, meal_period, item_code, pin)| {
                Request::Purchase(Purchase {
                    card_number,
                    amount_fen,
                    meal_period,
                    item_code,
                    pin_block: pin.map(PinBlock),
                })
            }
        ),
        (any::<u64>(), any::<u32>(), pick(Channel::ALL), reference()).prop_map(
            |(card_number, amount_fen, channel, reference)| {
                Request::TopUp(TopUp { card_number, amount_fen, channel, reference })
            }
        ),
        any::<u64>()
            .prop_map(|card_number| Request::BalanceInquiry(BalanceInquiry { card_number })),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(card_number, id, amount_fen)| {
            Request::Refund(Refund { card_number, purchase_transfer_id: id, amount_fen })
        }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(seq, card_number, amount_fen)| {
            Request::Reversal(Reversal { original_sequence: seq, card_number, amount_fen })
        }),
        vec(offline_record(), 0..=OFFLINE_RECORDS_MAX)
            .prop_map(|records| Request::OfflineUpload(OfflineUpload { records })),
        (any::<u64>(), any::<u16>()).prop_map(|(since_version, entries_max)| {
            Request::BlacklistDownload(BlacklistDownload { since_version, entries_max })
        }),
        Just(Request::SignOff),
    ]
}

fn transfer_answer() -> impl Strategy<Value = TransferAnswer> {
    (any::<bool>(), code(), any::<u64>(), any::<i64>(), any::<i64>()).prop_map(
        |(duplicate, code, transfer_id, balance_fen, restricted_balance_fen)| TransferAnswer {
            duplicate,
            code,
            transfer_id,
            balance_fen,
            restricted_balance_fen,
        },
    )
}

pub fn answer() -> impl Strategy<Value = Answer> {
    let offline_result = (any::<u64>(), pick(AnswerCode::ALL), any::<u64>(), any::<i64>())
        .prop_map(|(sequence, code, transfer_id, balance_fen)| OfflineResult {
            sequence,
            code,
            transfer_id,
            balance_fen,
        });
    let entry = (any::<u64>(), any::<u64>(), any::<bool>())
        .prop_map(|(version, card_number, listed)| BlacklistEntry { version, card_number, listed });
    prop_oneof![
        (code(), any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(code, server_time_ms, business_date, blacklist_version, last_sequence)| {
                Answer::SignOn(SignOnAnswer {
                    code,
                    server_time_ms,
                    business_date,
                    blacklist_version,
                    last_sequence,
                })
            }
        ),
        (code(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
            |(code, server_time_ms, business_date, blacklist_version)| {
                Answer::Heartbeat(HeartbeatAnswer {
                    code,
                    server_time_ms,
                    business_date,
                    blacklist_version,
                })
            }
        ),
        transfer_answer().prop_map(Answer::Purchase),
        transfer_answer().prop_map(Answer::TopUp),
        transfer_answer().prop_map(Answer::Refund),
        transfer_answer().prop_map(Answer::Reversal),
        (code(), pick(CardState::ALL), any::<i64>(), any::<i64>(), any::<u32>()).prop_map(
            |(code, card_state, balance_fen, restricted_balance_fen, expiry_date)| {
                Answer::BalanceInquiry(BalanceAnswer {
                    code,
                    card_state,
                    balance_fen,
                    restricted_balance_fen,
                    expiry_date,
                })
            }
        ),
        (any::<bool>(), code(), vec(offline_result, 0..=OFFLINE_RECORDS_MAX)).prop_map(
            |(duplicate, code, results)| {
                Answer::OfflineUpload(OfflineUploadAnswer { duplicate, code, results })
            }
        ),
        (code(), any::<u64>(), vec(entry, 0..=BLACKLIST_ENTRIES_MAX)).prop_map(
            |(code, current_version, entries)| {
                Answer::BlacklistDownload(BlacklistAnswer { code, current_version, entries })
            }
        ),
        code().prop_map(|code| Answer::SignOff(SignOffAnswer { code })),
        (code(), any::<u16>())
            .prop_map(|(code, refused_type)| { Answer::Reject(Reject { code, refused_type }) }),
    ]
}
