//! `onecard-loadtest`: run a scenario against a running `onecard serve --demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use onecard_loadtest::scenario::Scenario;
use onecard_loadtest::{RunConfig, run};

/// Offer a peak-meal load to a running onecard and report what it did.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A built-in scenario (lunch-peak, steady, top-up-rush, max) or a TOML file.
    #[arg(long, default_value = "lunch-peak")]
    scenario: String,

    /// The server's data directory: the demo campus's files are read from its demo/.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,

    /// The server's terminal port.
    #[arg(long, default_value = "127.0.0.1:7700")]
    terminal_addr: SocketAddr,

    /// The server's admin port.
    #[arg(long, default_value = "127.0.0.1:7780")]
    admin_addr: SocketAddr,

    /// Run for this many seconds instead, squeezing the rate curve into it.
    #[arg(long)]
    duration_secs: Option<f64>,

    /// Multiply the scenario's rate curve by this.
    #[arg(long)]
    rate_scale: Option<f64>,

    /// Offer a flat rate, requests per second, open loop (any scenario's mix).
    #[arg(long)]
    rate: Option<f64>,

    /// Use this many merchant terminals instead.
    #[arg(long)]
    terminals: Option<usize>,

    /// Closed loop: requests each terminal keeps in flight instead.
    #[arg(long)]
    in_flight: Option<u32>,

    /// Where to write report.txt, report.json and the .hgrm files.
    #[arg(long, default_value = "loadtest-report")]
    out: PathBuf,

    /// Also draw latency-over-time and percentile plots (SVG).
    #[arg(long)]
    plot: bool,

    /// Skip the ledger check (for a server that has other traffic).
    #[arg(long)]
    no_check: bool,

    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    match main_result() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("onecard-loadtest: the run FAILED its checks; see the report");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("onecard-loadtest: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn main_result() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let mut scenario = Scenario::load(&cli.scenario)?;
    if let Some(rate) = cli.rate {
        scenario.mode = onecard_loadtest::scenario::Mode::Open;
        scenario.rate = vec![[0.0, rate]];
    }
    scenario.reshape(cli.duration_secs, cli.rate_scale);
    if let Some(terminals) = cli.terminals {
        scenario.terminals = terminals;
    }
    if let Some(in_flight) = cli.in_flight {
        scenario.in_flight_per_terminal = in_flight;
    }
    scenario.check()?;
    let config = RunConfig {
        terminal_addr: cli.terminal_addr,
        admin_addr: cli.admin_addr,
        data_dir: cli.data_dir,
        scenario,
        out_dir: Some(cli.out.clone()),
        plot: cli.plot,
        check: !cli.no_check,
        progress: !cli.quiet,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadtest")
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(run(config))?;
    print!("{}", report.text());
    println!("\nreport files in {}", cli.out.display());
    Ok(report.passed())
}
