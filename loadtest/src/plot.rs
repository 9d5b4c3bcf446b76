//! SVG plots of a run: latency over time (p50, p99 and max of the requests scheduled
//! in each second) and the latency percentile distribution.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

fn ms(micros: u64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "microseconds of a latency")]
    let micros = micros as f64;
    micros / 1_000.0
}

fn failed(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {error}")
}

/// Writes `latency-over-time.svg` and `latency-percentiles.svg` into `dir`.
///
/// # Errors
/// If a file cannot be drawn or written.
pub fn write(
    dir: &Path,
    title: &str,
    timeline: &[Histogram<u64>],
    all: &Histogram<u64>,
) -> anyhow::Result<()> {
    over_time(&dir.join("latency-over-time.svg"), title, timeline)?;
    percentiles(&dir.join("latency-percentiles.svg"), title, all)
}

fn over_time(path: &Path, title: &str, timeline: &[Histogram<u64>]) -> anyhow::Result<()> {
    let series = |q: Option<f64>| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(second, h)| {
                #[allow(clippy::cast_precision_loss, reason = "seconds of a run")]
                let t = second as f64;
                (t, ms(q.map_or_else(|| h.max(), |q| h.value_at_quantile(q))))
            })
            .collect()
    };
    let (p50, p99, max) = (series(Some(0.5)), series(Some(0.99)), series(None));
    let top = max.iter().map(|(_, v)| *v).fold(1.0_f64, f64::max) * 1.1;
    #[allow(clippy::cast_precision_loss, reason = "seconds of a run")]
    let end = timeline.len().max(1) as f64;
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: latency over time"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(failed)?;
    chart.configure_mesh().x_desc("seconds into the run").y_desc("ms").draw().map_err(failed)?;
    for (points, color, name) in [(p50, BLUE, "p50"), (p99, RED, "p99"), (max, BLACK, "max")] {
        chart
            .draw_series(LineSeries::new(points, color))
            .map_err(failed)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(failed)?;
    root.present().map_err(failed)
}

fn percentiles(path: &Path, title: &str, all: &Histogram<u64>) -> anyhow::Result<()> {
    // x: the percentile as 1/(1-p) on a log scale, so the tail gets the room.
    let points: Vec<(f64, f64)> = all
        .iter_quantiles(5)
        .map(|step| (step.quantile_iterated_to(), ms(step.value_iterated_to())))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, v)| (1.0 / (1.0 - q), v))
        .collect();
    let top = points.iter().map(|(_, v)| *v).fold(1.0_f64, f64::max) * 1.1;
    let right = points.iter().map(|(x, _)| *x).fold(10.0_f64, f64::max);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: latency by percentile"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..right).log_scale(), 0.0..top)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("percentile (10 = p90, 100 = p99, 1000 = p99.9)")
        .y_desc("ms")
        .draw()
        .map_err(failed)?;
    chart.draw_series(LineSeries::new(points, RED)).map_err(failed)?;
    root.present().map_err(failed)
}
