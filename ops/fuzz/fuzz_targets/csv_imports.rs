//! Arbitrary bytes read as the CSV files finance imports: a subsidy list (补助名单)
//! and a top-up channel's statement under the built-in adapter and under a bank's
//! (semicolon-separated, title lines, amounts in fen, a date-time column). Readers
//! must never panic, must refuse what they cannot read with a line number, and must
//! yield no more rows than the file has lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onecard_ops::api::subsidy_rows_from_csv;
use onecard_ops::channels::{Adapter, AmountUnit, read_statement};

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|b| **b == b'\n' || **b == b'\r').count() + 1;
    if let Ok(rows) = subsidy_rows_from_csv(data) {
        assert!(rows.len() < lines, "{} rows from {lines} lines", rows.len());
        for row in rows {
            assert!(row["card_number"].is_u64() && row["amount_fen"].is_i64(), "{row}");
        }
    }
    let bank = Adapter {
        name: "bank".to_owned(),
        delimiter: ';',
        skip_lines: 2,
        reference_column: "流水号".to_owned(),
        reference_prefix: "OC".to_owned(),
        amount_column: "金额(分)".to_owned(),
        amount_unit: AmountUnit::Fen,
        date_column: Some("交易时间".to_owned()),
    };
    for adapter in [Adapter::built_in(), bank] {
        let Ok(statement) = read_statement(&adapter, data) else { continue };
        let mut read = 0;
        for line in statement {
            read += 1;
            assert!(read <= lines, "{read} statement lines from {lines} lines");
            match line {
                Ok(line) => assert!(line.line >= 1 && line.line <= lines as u64 + 1, "{line:?}"),
                Err(malformed) => assert!(malformed.line <= lines as u64 + 1, "{malformed:?}"),
            }
        }
    }
});
