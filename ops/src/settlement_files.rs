//! The settlement files finance pulls: per business date, a merchant file, a terminal
//! detail file and a meal-period file as CSV, and the three as sheets of one .xlsx.
//!
//! docs/SETTLEMENT_FILES.md is the contract; this module is its one implementation.
//! Every file is rendered from the stored settlement record alone, with no clock and
//! no map iteration order in it, so rendering a date twice gives the same bytes.
//!
//! CSV: UTF-8 with a byte-order mark (Excel then reads Chinese names right), CRLF line
//! ends, RFC 4180 quoting, amounts in yuan with two decimals, a header row, one row
//! per record, and a trailer row `TRAILER,...` whose last field is the SHA-256 of the
//! body: every byte after the BOM up to the trailer.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use onecard_engine::settlement::{MerchantSettlement, Sales, Settlement};
use rust_decimal::Decimal;
use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Formula, Workbook, Worksheet};
use sha2::{Digest, Sha256};

use crate::api::money::yuan;

/// UTF-8's byte-order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The first field of a CSV file's trailer row.
pub const TRAILER_TAG: &str = "TRAILER";

/// One of a date's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One row per merchant: the settlement itself.
    Merchants,
    /// One row per terminal that had movement.
    Terminals,
    /// One row per merchant and meal period.
    Meals,
    /// The three as sheets of one workbook.
    Workbook,
}

impl FileKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Merchants, Self::Terminals, Self::Meals, Self::Workbook];

    /// The kind named `name` (`merchants`, `terminals`, `meals`, `xlsx`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The kind's name in the API's `?kind=` parameter.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Merchants => "merchants",
            Self::Terminals => "terminals",
            Self::Meals => "meals",
            Self::Workbook => "xlsx",
        }
    }

    /// The file name for `date` (`yyyymmdd`).
    #[must_use]
    pub fn file_name(self, date: u32) -> String {
        match self {
            Self::Workbook => format!("settlement-{date}.xlsx"),
            other => format!("settlement-{date}-{}.csv", other.name()),
        }
    }

    /// The HTTP content type.
    #[must_use]
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Workbook => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            _ => "text/csv; charset=utf-8",
        }
    }
}

/// A cell: text, a whole number, or fen (written as yuan).
#[derive(Debug, Clone)]
enum Cell {
    Text(String),
    Count(u64),
    Fen(i64),
    Rate(Decimal),
}

impl Cell {
    fn csv(&self) -> String {
        match self {
            Self::Text(text) => defuse(text),
            Self::Count(count) => count.to_string(),
            Self::Fen(fen) => yuan(*fen),
            Self::Rate(rate) => rate.normalize().to_string(),
        }
    }
}

/// Text a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab, CR) gets a
/// leading apostrophe, so a merchant name can never run in finance's Excel.
pub fn defuse(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// A table: a header, rows, and which columns are summed in the totals.
struct Table {
    sheet: &'static str,
    header: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

const SALES_COLUMNS: [&str; 10] = [
    "purchase_count",
    "purchase_yuan",
    "cardholders",
    "refund_count",
    "refund_yuan",
    "reversal_count",
    "reversal_yuan",
    "adjustment_count",
    "adjustment_yuan",
    "gross_yuan",
];

fn sales_cells(sales: &Sales) -> [Cell; 10] {
    [
        Cell::Count(sales.purchases.count),
        Cell::Fen(sales.purchases.fen),
        Cell::Count(sales.cardholders),
        Cell::Count(sales.refunds.count),
        Cell::Fen(sales.refunds.fen),
        Cell::Count(sales.reversals.count),
        Cell::Fen(sales.reversals.fen),
        Cell::Count(sales.adjustments.count),
        Cell::Fen(sales.adjustments.fen),
        Cell::Fen(sales.net_fen),
    ]
}

fn date_text(date: u32) -> String {
    format!("{:04}-{:02}-{:02}", date / 10_000, date / 100 % 100, date % 100)
}

fn merchant_prefix(date: u32, merchant: &MerchantSettlement) -> [Cell; 3] {
    [
        Cell::Text(date_text(date)),
        Cell::Count(u64::from(merchant.merchant_id)),
        Cell::Text(merchant.name.clone()),
    ]
}

fn table(settlement: &Settlement, kind: FileKind) -> Table {
    let date = settlement.business_date;
    let mut header = vec!["business_date", "merchant_id", "merchant_name"];
    let mut rows = Vec::new();
    let sheet = match kind {
        FileKind::Merchants | FileKind::Workbook => {
            header.extend(SALES_COLUMNS);
            header.extend(["commission_rate", "commission_yuan", "net_payable_yuan"]);
            for merchant in &settlement.merchants {
                let mut row = merchant_prefix(date, merchant).to_vec();
                row.extend(sales_cells(&merchant.sales));
                row.extend([
                    Cell::Rate(merchant.commission_rate),
                    Cell::Fen(merchant.commission_fen),
                    Cell::Fen(merchant.net_payable_fen),
                ]);
                rows.push(row);
            }
            "merchants"
        }
        FileKind::Terminals => {
            header.push("terminal_id");
            header.extend(SALES_COLUMNS);
            for merchant in &settlement.merchants {
                for terminal in &merchant.terminals {
                    let mut row = merchant_prefix(date, merchant).to_vec();
                    row.push(Cell::Count(u64::from(terminal.terminal_id)));
                    row.extend(sales_cells(&terminal.sales));
                    rows.push(row);
                }
            }
            "terminals"
        }
        FileKind::Meals => {
            header.push("meal");
            header.extend(SALES_COLUMNS);
            for merchant in &settlement.merchants {
                for meal in &merchant.meals {
                    let mut row = merchant_prefix(date, merchant).to_vec();
                    row.push(Cell::Text(meal.meal.clone()));
                    row.extend(sales_cells(&meal.sales));
                    rows.push(row);
                }
            }
            "meals"
        }
    };
    Table { sheet, header, rows }
}

impl Table {
    /// The sum of a money column, fen.
    fn fen_total(&self, column: usize) -> i64 {
        self.rows
            .iter()
            .map(|row| if let Some(Cell::Fen(fen)) = row.get(column) { *fen } else { 0 })
            .sum()
    }

    /// The sum of a count column.
    fn count_total(&self, column: usize) -> u64 {
        self.rows
            .iter()
            .map(|row| if let Some(Cell::Count(count)) = row.get(column) { *count } else { 0 })
            .sum()
    }

    /// The trailer's figures: the totals of its gross, commission and net payable
    /// columns (commission and net payable only in the merchant file).
    fn trailer_totals(&self) -> Vec<i64> {
        ["gross_yuan", "commission_yuan", "net_payable_yuan"]
            .into_iter()
            .filter_map(|name| self.header.iter().position(|h| *h == name))
            .map(|column| self.fen_total(column))
            .collect()
    }
}

fn render_csv(table: &Table) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .flexible(true)
        .from_writer(BOM.to_vec());
    writer.write_record(&table.header)?;
    for row in &table.rows {
        writer.write_record(row.iter().map(Cell::csv))?;
    }
    writer.flush().context("finishing the CSV body")?;
    let digest = hex::encode(Sha256::digest(&writer.get_ref()[BOM.len()..]));
    let mut trailer = vec![TRAILER_TAG.to_owned(), table.rows.len().to_string()];
    trailer.extend(table.trailer_totals().into_iter().map(yuan));
    trailer.push(digest);
    writer.write_record(&trailer)?;
    writer.into_inner().context("finishing the CSV trailer")
}

fn column_letter(index: usize) -> String {
    let mut index = index + 1;
    let mut letters = Vec::new();
    while index > 0 {
        let rem = (index - 1) % 26;
        letters.push(char::from(b'A' + u8::try_from(rem).unwrap_or(0)));
        index = (index - 1) / 26;
    }
    letters.iter().rev().collect()
}

fn fill_sheet(sheet: &mut Worksheet, table: &Table) -> anyhow::Result<()> {
    let bold = Format::new().set_bold();
    let money = Format::new().set_num_format("0.00");
    let money_bold = Format::new().set_num_format("0.00").set_bold();
    sheet.set_name(table.sheet)?;
    for (column, name) in (0u16..).zip(&table.header) {
        sheet.write_string_with_format(0, column, *name, &bold)?;
    }
    for (row_index, row) in (1u32..).zip(&table.rows) {
        for (column, cell) in (0u16..).zip(row) {
            match cell {
                Cell::Text(text) => sheet.write_string(row_index, column, text.as_str())?,
                Cell::Count(count) => sheet.write_number(row_index, column, u32_or_max(*count))?,
                Cell::Fen(fen) => {
                    sheet.write_with_format(row_index, column, Decimal::new(*fen, 2), &money)?
                }
                Cell::Rate(rate) => sheet.write(row_index, column, *rate)?,
            };
        }
    }
    // A totals row: SUM formulas over every money and count column, with the exact
    // totals stored as their results, so the sheet shows them before Excel recalculates
    // and Excel's recalculation gives the same figures.
    let total_row = u32::try_from(table.rows.len() + 1).context("rows fit a sheet")?;
    sheet.write_string_with_format(total_row, 0, "TOTAL", &bold)?;
    let last = total_row;
    for (column, name) in (0u16..).zip(&table.header) {
        if !(name.ends_with("_yuan") || name.ends_with("_count")) {
            continue;
        }
        let letter = column_letter(usize::from(column));
        let index = usize::from(column);
        let (text, is_money) = if name.ends_with("_yuan") {
            (Decimal::new(table.fen_total(index), 2).to_string(), true)
        } else {
            (table.count_total(index).to_string(), false)
        };
        // An empty sheet's SUM would reach up into its own row: write 0 instead.
        let formula = if table.rows.is_empty() {
            Formula::new("=0").set_result("0")
        } else {
            Formula::new(format!("=SUM({letter}2:{letter}{last})")).set_result(text)
        };
        if is_money {
            sheet.write_formula_with_format(total_row, column, formula, &money_bold)?;
        } else {
            sheet.write_formula_with_format(total_row, column, formula, &bold)?;
        }
    }
    sheet.set_freeze_panes(1, 0)?;
    Ok(())
}

fn u32_or_max(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn render_workbook(settlement: &Settlement) -> anyhow::Result<Vec<u8>> {
    let mut workbook = Workbook::new();
    let date = settlement.business_date;
    let created = ExcelDateTime::from_ymd(
        u16::try_from(date / 10_000).context("year")?,
        u8::try_from(date / 100 % 100).context("month")?,
        u8::try_from(date % 100).context("day")?,
    )?;
    let properties = DocProperties::new()
        .set_title(format!("onecard settlement {}", date_text(date)))
        .set_author("onecard")
        .set_creation_datetime(&created);
    workbook.set_properties(&properties);
    for kind in [FileKind::Merchants, FileKind::Terminals, FileKind::Meals] {
        let table = table(settlement, kind);
        fill_sheet(workbook.add_worksheet(), &table)?;
    }
    Ok(workbook.save_to_buffer()?)
}

/// One rendered file.
#[derive(Debug, Clone)]
pub struct RenderedFile {
    /// Its name, `settlement-yyyymmdd-merchants.csv` and so on.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Renders one of a settlement's files.
///
/// # Errors
/// If a writer fails (it writes to memory; only a sheet over Excel's limits can).
pub fn render(settlement: &Settlement, kind: FileKind) -> anyhow::Result<RenderedFile> {
    let bytes = match kind {
        FileKind::Workbook => render_workbook(settlement)?,
        other => render_csv(&table(settlement, other))?,
    };
    Ok(RenderedFile { name: kind.file_name(settlement.business_date), bytes })
}

/// Writes every file of a settlement into `dir/yyyy-mm-dd/`, each through a temporary
/// file and a rename, so finance never pulls half a file. Returns the paths.
///
/// # Errors
/// If the directory cannot be created or a file cannot be written.
pub fn write_all(settlement: &Settlement, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // The day task and an operator may write the same date at once; one at a time,
    // so neither renames the other's half-written file.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let folder = dir.join(date_text(settlement.business_date));
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let mut paths = Vec::new();
    for kind in FileKind::ALL {
        let file = render(settlement, kind)?;
        let path = folder.join(&file.name);
        let partial = folder.join(format!(".{}.partial", file.name));
        let mut out = std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        std::io::Write::write_all(&mut out, &file.bytes)
            .and_then(|()| out.sync_all())
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("renaming {} into place", path.display()))?;
        paths.push(path);
    }
    // The renames are durable once the folder is.
    std::fs::File::open(&folder)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", folder.display()))?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use onecard_engine::settlement::{MealSales, Tally, TerminalSales};

    use super::*;

    fn sample() -> Settlement {
        let sales = |purchases: i64, refunds: i64| Sales {
            purchases: Tally { count: 3, fen: purchases },
            cardholders: 2,
            refunds: Tally { count: 1, fen: refunds },
            reversals: Tally::default(),
            adjustments: Tally::default(),
            net_fen: purchases - refunds,
        };
        let merchant = |id: u32, name: &str, purchases: i64, refunds: i64| {
            let rate = Decimal::new(15, 3);
            let net = purchases - refunds;
            let commission = onecard_engine::settlement::commission_fen(net, rate);
            MerchantSettlement {
                merchant_id: id,
                name: name.to_owned(),
                shard: 0,
                commission_rate: rate,
                sales: sales(purchases, refunds),
                commission_fen: commission,
                net_payable_fen: net - commission,
                terminals: vec![TerminalSales {
                    terminal_id: id * 10,
                    sales: sales(purchases, refunds),
                }],
                meals: vec![MealSales {
                    meal: "lunch".to_owned(),
                    sales: sales(purchases, refunds),
                }],
            }
        };
        Settlement {
            business_date: 20_260_901,
            settled_at_ms: 1_788_300_000_000,
            first_transfer_id: 1,
            transfer_count: 4,
            merchants: vec![
                merchant(1, "第一食堂, \"北区\"", 123_456, 1_000),
                merchant(2, "=cmd()", 99, 0),
            ],
        }
    }

    #[test]
    fn the_csv_has_a_bom_a_header_rows_and_a_trailer_whose_hash_is_the_body() {
        let file = render(&sample(), FileKind::Merchants).expect("renders");
        assert!(file.bytes.starts_with(BOM));
        let text = std::str::from_utf8(&file.bytes[BOM.len()..]).expect("utf-8");
        let trailer_at = text.trim_end().rfind("\r\n").expect("lines") + 2;
        let (body, trailer) = text.split_at(trailer_at);
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> =
            reader.records().collect::<Result<_, _>>().expect("parses");
        assert_eq!(records.len(), 3, "two merchants and the trailer");
        assert_eq!(&records[0][2], "第一食堂, \"北区\"");
        assert_eq!(&records[1][2], "'=cmd()", "a formula-looking name is defused");
        assert_eq!(&records[0][4], "1234.56");
        let trailer_fields: Vec<&str> = trailer.trim_end().split(',').collect();
        assert_eq!(trailer_fields[0], TRAILER_TAG);
        assert_eq!(trailer_fields[1], "2");
        assert_eq!(trailer_fields[2], "1225.55", "gross: 1,224.56 + 0.99");
        let commission = 18_37 + 1; // 1.5% of 1,224.56 and of 0.99, each rounded
        assert_eq!(trailer_fields[3], yuan(commission));
        assert_eq!(trailer_fields[4], yuan(122_555 - commission));
        assert_eq!(trailer_fields[5], hex::encode(Sha256::digest(body.as_bytes())));
    }

    #[test]
    fn rendering_twice_gives_the_same_bytes() {
        for kind in FileKind::ALL {
            let first = render(&sample(), kind).expect("renders");
            let second = render(&sample(), kind).expect("renders");
            assert_eq!(first.bytes, second.bytes, "{}", first.name);
        }
    }

    #[test]
    fn the_workbook_opens_and_its_numbers_and_totals_match_the_csv() {
        use calamine::{Data, Reader as _, Xlsx};
        let settlement = sample();
        let file = render(&settlement, FileKind::Workbook).expect("renders");
        let mut workbook: Xlsx<_> =
            Xlsx::new(std::io::Cursor::new(file.bytes)).expect("a workbook");
        assert_eq!(workbook.sheet_names(), ["merchants", "terminals", "meals"]);
        let sheet = workbook.worksheet_range("merchants").expect("merchants");
        let header: Vec<String> =
            sheet.rows().next().expect("header").iter().map(|c| c.to_string()).collect();
        let csv = render(&settlement, FileKind::Merchants).expect("renders");
        let mut reader =
            csv::ReaderBuilder::new().flexible(true).from_reader(&csv.bytes[BOM.len()..]);
        assert_eq!(reader.headers().expect("header").iter().collect::<Vec<_>>(), header);
        let rows: Vec<csv::StringRecord> =
            reader.records().collect::<Result<_, _>>().expect("rows");
        let cells: Vec<&[Data]> = sheet.rows().skip(1).collect();
        assert_eq!(cells.len(), rows.len(), "the merchants and the totals row, as the trailer");
        let fen = |cell: &Data| -> i64 {
            let text = match cell {
                Data::Float(value) => format!("{value:.2}"),
                Data::Int(value) => format!("{value}.00"),
                Data::String(text) => text.clone(),
                other => panic!("not a number: {other:?}"),
            };
            crate::api::money::parse_yuan(&text).expect("yuan")
        };
        for (cells, row) in cells.iter().zip(&rows).take(settlement.merchants.len()) {
            for (column, name) in header.iter().enumerate() {
                if name.ends_with("_yuan") {
                    assert_eq!(
                        fen(&cells[column]),
                        crate::api::money::parse_yuan(&row[column]).expect("yuan"),
                        "{name}"
                    );
                }
            }
        }
        let totals = cells.last().expect("totals row");
        assert_eq!(totals[0], Data::String("TOTAL".to_owned()));
        let trailer = rows.last().expect("trailer");
        let column = |name: &str| header.iter().position(|h| h == name).expect("column");
        for (name, field) in [("gross_yuan", 2), ("commission_yuan", 3), ("net_payable_yuan", 4)] {
            let expected = crate::api::money::parse_yuan(&trailer[field]).expect("yuan");
            assert_eq!(fen(&totals[column(name)]), expected, "{name}");
        }
    }

    #[test]
    fn columns_are_lettered_like_excel() {
        assert_eq!(column_letter(0), "A");
        assert_eq!(column_letter(25), "Z");
        assert_eq!(column_letter(26), "AA");
        assert_eq!(column_letter(27 * 26), "AAA");
    }
}
