//! Top-up channels' statement files: the adapters that read them, and the report of a
//! channel reconciliation (CSV and JSON).
//!
//! A channel's statement is a CSV file; an adapter says which column is the channel's
//! reference, which the amount (and in yuan or fen), which the date, how many lines
//! come before the header, and the delimiter. A new channel is a new adapter file in
//! the adapters directory (`<name>.toml`), not new code. The built-in adapter
//! `onecard` reads onecard's own statement format (docs/SETTLEMENT_FILES.md).
//!
//! The file is read as a stream, one record at a time: a line that cannot be read is
//! reported with its line number and the rest still reconciles.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use onecard_engine::statement::{
    ChannelReconciliation, ClassifiedLine, MalformedLine, StatementLine,
};
use onecard_engine::{BusinessDate, Ledger};
use onecard_protocol::{Channel, snake_case};
use serde::Deserialize;

use crate::api::money::{parse_yuan, yuan};

/// Longest reference a statement line may carry, in bytes.
pub const REFERENCE_BYTES_MAX: usize = 64;

/// Largest statement accepted over HTTP; a local file may be any size.
pub const STATEMENT_BYTES_MAX: u64 = 512 << 20;

/// The name of the built-in adapter.
pub const BUILT_IN_ADAPTER: &str = "onecard";

/// How a channel states amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountUnit {
    /// `12.50`.
    #[default]
    Yuan,
    /// `1250`.
    Fen,
}

/// How one channel's statement file maps to statement lines.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adapter {
    /// The adapter's name (the file's stem).
    #[serde(default)]
    pub name: String,
    /// The field delimiter, one ASCII character.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// Lines before the header row (a bank's title lines).
    #[serde(default)]
    pub skip_lines: u64,
    /// The column holding the channel's reference (its order number).
    pub reference_column: String,
    /// A prefix the channel puts before our reference, taken off.
    #[serde(default)]
    pub reference_prefix: String,
    /// The column holding the amount.
    pub amount_column: String,
    /// Yuan or fen.
    #[serde(default)]
    pub amount_unit: AmountUnit,
    /// The column holding the date (`YYYY-MM-DD`, `YYYYMMDD`, or a date-time that
    /// begins with either), if the statement has one.
    #[serde(default)]
    pub date_column: Option<String>,
}

const fn comma() -> char {
    ','
}

impl Adapter {
    /// onecard's own statement format: `reference,amount_yuan,date`.
    #[must_use]
    pub fn built_in() -> Self {
        Self {
            name: BUILT_IN_ADAPTER.to_owned(),
            delimiter: ',',
            skip_lines: 0,
            reference_column: "reference".to_owned(),
            reference_prefix: String::new(),
            amount_column: "amount_yuan".to_owned(),
            amount_unit: AmountUnit::Yuan,
            date_column: Some("date".to_owned()),
        }
    }

    /// Adapter `name`: the built-in one, or `dir/<name>.toml`.
    ///
    /// # Errors
    /// A bad name, a missing or malformed file.
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<Self> {
        if name == BUILT_IN_ADAPTER {
            return Ok(Self::built_in());
        }
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "adapter name {name:?} must be 1 to 64 letters, digits, - or _"
        );
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no adapter {name:?} ({} unreadable)", path.display()))?;
        let mut adapter: Self =
            toml::from_str(&text).with_context(|| format!("adapter {}", path.display()))?;
        anyhow::ensure!(
            adapter.delimiter.is_ascii(),
            "adapter {name}: the delimiter must be ASCII"
        );
        adapter.name = name.to_owned();
        Ok(adapter)
    }
}

/// Why a statement could not be read at all (a bad line is not this: it is reported
/// and skipped).
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// The header lacks a column the adapter names.
    #[error("the statement has no column {0:?}")]
    MissingColumn(String),
    /// The file ended before its header.
    #[error("the statement has no header row")]
    NoHeader,
}

/// The channel named `name` in paths and commands (`app`, `e_code`, `cash_machine`,
/// `counter`, `bank_load`).
#[must_use]
pub fn channel_named(name: &str) -> Option<Channel> {
    Channel::ALL.iter().copied().find(|channel| channel_name(*channel) == name)
}

/// A channel's name in paths, commands and file names.
#[must_use]
pub fn channel_name(channel: Channel) -> String {
    snake_case(channel)
}

fn parse_date(text: &str) -> Option<BusinessDate> {
    let text = text.trim();
    let digits: String = if text.get(4..5) == Some("-") {
        text.get(..10)?.chars().filter(|c| *c != '-').collect()
    } else {
        text.get(..8)?.to_owned()
    };
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().and_then(BusinessDate::from_yyyymmdd)
}

/// Reads statement lines from `input` as `adapter` says, one at a time.
///
/// # Errors
/// [`StatementError`] if the header cannot be found or lacks a column.
pub fn read_statement<R: Read>(
    adapter: &Adapter,
    input: R,
) -> Result<impl Iterator<Item = Result<StatementLine, MalformedLine>> + use<R>, StatementError> {
    // The CSV reader numbers the lines of a CRLF file one short (it counts a record's
    // line at its CR); the first line's ending says which this file uses.
    let mut input = std::io::BufReader::new(input);
    let crlf = std::io::BufRead::fill_buf(&mut input)
        .ok()
        .and_then(|start| {
            start.iter().position(|b| *b == b'\n').map(|at| at > 0 && start[at - 1] == b'\r')
        })
        .unwrap_or(false);
    let line_of =
        move |position: Option<&csv::Position>| position.map_or(0, |p| p.line() + u64::from(crlf));
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(u8::try_from(adapter.delimiter).unwrap_or(b','))
        .from_reader(input);
    let mut records = reader.into_byte_records();
    let mut header = None;
    let mut skipped = 0;
    for record in records.by_ref() {
        let Ok(record) = record else { continue };
        if skipped < adapter.skip_lines {
            skipped += 1;
            continue;
        }
        header = Some(record);
        break;
    }
    let header = header.ok_or(StatementError::NoHeader)?;
    let names: Vec<String> = header
        .iter()
        .map(|field| {
            String::from_utf8_lossy(field).trim().trim_start_matches('\u{feff}').to_owned()
        })
        .collect();
    let column = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| StatementError::MissingColumn(name.to_owned()))
    };
    let reference_at = column(&adapter.reference_column)?;
    let amount_at = column(&adapter.amount_column)?;
    let date_at = adapter.date_column.as_deref().map(column).transpose()?;
    let adapter = adapter.clone();
    Ok(records.map(move |record| {
        let record = record.map_err(|error| MalformedLine {
            line: line_of(error.position()),
            reason: format!("not CSV: {error}"),
        })?;
        let line = line_of(record.position());
        let bad = |reason: String| MalformedLine { line, reason };
        let field = |at: usize, name: &str| -> Result<String, MalformedLine> {
            let bytes = record.get(at).ok_or_else(|| bad(format!("no {name} field")))?;
            let text =
                std::str::from_utf8(bytes).map_err(|_| bad(format!("{name} is not UTF-8")))?;
            Ok(text.trim().to_owned())
        };
        let raw_reference = field(reference_at, "reference")?;
        let reference =
            raw_reference.strip_prefix(adapter.reference_prefix.as_str()).unwrap_or(&raw_reference);
        if reference.is_empty() || reference.len() > REFERENCE_BYTES_MAX {
            return Err(bad(format!("reference {raw_reference:?} is empty or too long")));
        }
        let amount_text = field(amount_at, "amount")?;
        let amount_fen = match adapter.amount_unit {
            AmountUnit::Yuan => parse_yuan(&amount_text).map_err(bad)?,
            AmountUnit::Fen => amount_text
                .parse::<i64>()
                .map_err(|_| bad(format!("amount {amount_text:?} is not a count of fen")))?,
        };
        if amount_fen <= 0 {
            return Err(bad(format!("amount {amount_text:?} is not a top-up")));
        }
        let date = match date_at {
            Some(at) => {
                let text = field(at, "date")?;
                Some(parse_date(&text).ok_or_else(|| bad(format!("date {text:?} is not a date")))?)
            }
            None => None,
        };
        Ok(StatementLine { line, reference: reference.to_owned(), amount_fen, date })
    }))
}

/// Where a channel reconciliation's report goes: `dir/YYYY-MM-DD/channel-<name>-<date>`
/// plus `.csv` or `.json`.
#[must_use]
pub fn report_path(dir: &Path, date: BusinessDate, channel: Channel, extension: &str) -> PathBuf {
    dir.join(date.to_string()).join(format!(
        "channel-{}-{}.{extension}",
        channel_name(channel),
        date.to_yyyymmdd()
    ))
}

fn csv_row(writer: &mut csv::Writer<BufWriter<File>>, line: &ClassifiedLine) -> csv::Result<()> {
    // The channel's own text is defused: the report opens in finance's Excel.
    writer.write_record([
        line.line.map_or_else(String::new, |n| n.to_string()),
        line.class.name().to_owned(),
        crate::settlement_files::defuse(&line.reference),
        line.channel_fen.map_or_else(String::new, yuan),
        line.our_fen.map_or_else(String::new, yuan),
        line.transfer_id.map_or_else(String::new, |id| id.to_string()),
        crate::settlement_files::defuse(&line.note),
    ])
}

/// Reconciles the statement in `statement` for `channel` on `date` and writes the
/// report's CSV (every line, classified) and JSON (totals and discrepancies) into
/// `dir`. Returns the reconciliation and the JSON report.
///
/// # Errors
/// An unreadable statement header, an open date, a failed read or write.
pub fn reconcile_statement(
    ledger: &Ledger,
    date: BusinessDate,
    channel: Channel,
    adapter: &Adapter,
    statement: &Path,
    dir: &Path,
) -> anyhow::Result<(ChannelReconciliation, serde_json::Value)> {
    let file = File::open(statement).with_context(|| format!("opening {}", statement.display()))?;
    let lines = read_statement(adapter, std::io::BufReader::new(file))?;
    let csv_path = report_path(dir, date, channel, "csv");
    if let Some(folder) = csv_path.parent() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    let partial = csv_path.with_file_name(format!(
        ".{}.partial",
        csv_path.file_name().and_then(|n| n.to_str()).unwrap_or("report")
    ));
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(BufWriter::new(File::create(&partial)?));
    writer.write_record([
        "line",
        "class",
        "reference",
        "channel_yuan",
        "our_yuan",
        "transfer_id",
        "note",
    ])?;
    let reconciliation =
        ledger.reconcile_channel(date, channel, lines, |line| csv_row(&mut writer, line))?;
    let inner = writer.into_inner().map_err(|error| anyhow::anyhow!("{error}"))?;
    inner.into_inner().map_err(|error| anyhow::anyhow!("{error}"))?.sync_all()?;
    std::fs::rename(&partial, &csv_path)?;
    let mut json = crate::api::fen_as_yuan(serde_json::to_value(&reconciliation)?);
    if let Some(object) = json.as_object_mut() {
        object.insert("adapter".to_owned(), adapter.name.clone().into());
        let classes: BTreeMap<String, serde_json::Value> = reconciliation
            .classes
            .iter()
            .map(|(name, totals)| {
                let value = serde_json::json!({
                    "count": totals.count,
                    "channel_yuan": yuan(totals.channel_fen),
                    "our_yuan": yuan(totals.our_fen),
                });
                (name.clone(), value)
            })
            .collect();
        object.insert("classes".to_owned(), serde_json::to_value(classes)?);
    }
    let json_path = report_path(dir, date, channel, "json");
    let json_partial = json_path.with_file_name(format!(
        ".{}.partial",
        json_path.file_name().and_then(|n| n.to_str()).unwrap_or("report")
    ));
    let mut out = File::create(&json_partial)?;
    out.write_all(&serde_json::to_vec_pretty(&json)?)?;
    out.sync_all()?;
    std::fs::rename(&json_partial, &json_path)
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok((reconciliation, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bank_layout_is_an_adapter_not_code() {
        let adapter: Adapter = toml::from_str(
            "delimiter = ';'\nskip_lines = 2\nreference_column = \"流水号\"\nreference_prefix = \"BK\"\n\
             amount_column = \"金额(分)\"\namount_unit = \"fen\"\ndate_column = \"交易时间\"\n",
        )
        .expect("an adapter");
        let file = "某银行对账单\n2026-09-01\n流水号;金额(分);交易时间\nBK001;1250;20260901 12:00:00\n\
                    BK002;x;20260901\n;100;20260901\n";
        let lines: Vec<_> = read_statement(&adapter, file.as_bytes()).expect("a header").collect();
        assert_eq!(lines.len(), 3);
        let first = lines[0].as_ref().expect("reads");
        assert_eq!((first.line, first.reference.as_str(), first.amount_fen), (4, "001", 1250));
        assert_eq!(first.date, BusinessDate::from_yyyymmdd(20_260_901));
        let bad = lines[1].as_ref().expect_err("a bad amount");
        assert_eq!(bad.line, 5);
        assert!(lines[2].is_err(), "an empty reference");
    }

    #[test]
    fn the_built_in_format_reads_with_a_bom_and_a_missing_column_is_an_error() {
        let file = "\u{feff}reference,amount_yuan,date\nWX-1,12.50,2026-09-01 11:59:00\n";
        let lines: Vec<_> =
            read_statement(&Adapter::built_in(), file.as_bytes()).expect("a header").collect();
        assert_eq!(lines[0].as_ref().expect("reads").amount_fen, 1250);
        let crlf = "reference,amount_yuan,date\r\nA,1.00,2026-09-01\r\nB,x,2026-09-01\r\nC,1.00,2026-09-01\r\n";
        let lines: Vec<_> =
            read_statement(&Adapter::built_in(), crlf.as_bytes()).expect("a header").collect();
        let numbers: Vec<u64> =
            lines.iter().map(|l| l.as_ref().map_or_else(|bad| bad.line, |ok| ok.line)).collect();
        assert_eq!(numbers, [2, 3, 4], "CRLF lines are numbered as lines");
        let missing = read_statement(&Adapter::built_in(), "reference,amount\n".as_bytes());
        assert!(matches!(missing, Err(StatementError::MissingColumn(_))));
        assert!(matches!(
            read_statement(&Adapter::built_in(), "".as_bytes()),
            Err(StatementError::NoHeader)
        ));
    }

    #[test]
    fn channels_are_named_in_snake_case() {
        for channel in Channel::ALL {
            assert_eq!(channel_named(&channel_name(*channel)), Some(*channel));
        }
        assert_eq!(channel_named("e_code"), Some(Channel::ECode));
        assert_eq!(channel_named("paypal"), None);
    }
}
