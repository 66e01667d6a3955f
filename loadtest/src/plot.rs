//! Charts of a sweep: throughput against load, and latency percentiles against load.

use std::path::Path;

use anyhow::bail;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::report::{secs, Report};
use crate::summary::{LevelSummary, Stats};

/// Checked before the run, so a bad path does not cost a whole sweep.
pub fn check_path(path: &Path) -> anyhow::Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => Ok(()),
        Some("png") => bail!(
            "--plot {}: PNG needs font rendering through the freetype/fontconfig C libraries, \
             which this build leaves out; write .svg (rsvg-convert or a browser turns it into PNG)",
            path.display()
        ),
        _ => bail!("--plot {}: the file name must end in .svg", path.display()),
    }
}

type Series = (&'static str, RGBColor, fn(&LevelSummary) -> Option<Stats>);

const LATENCIES: [Series; 3] = [
    ("TTFT", RGBColor(214, 39, 40), |l| l.ttft_seconds),
    ("ITL", RGBColor(44, 160, 44), |l| l.itl_seconds),
    ("E2E", RGBColor(31, 119, 180), |l| l.e2e_seconds),
];

pub fn write_svg(path: &Path, report: &Report) -> anyhow::Result<()> {
    let levels = &report.levels;
    if levels.is_empty() {
        bail!("nothing to plot");
    }
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!("{} ({} API, {})", report.model, report.api, report.server);
    let root = root.titled(&title, ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(700);

    let x_desc = if report.mode == "open" {
        "arrival rate (requests/s)"
    } else {
        "concurrency (workers)"
    };
    let loads: Vec<f64> = levels.iter().map(|l| l.load.value()).collect();
    // Sweeps usually double the load each level: a log axis spaces them evenly. Ticks sit
    // at the levels swept, not at round numbers between them.
    let (lo, hi) = bounds(loads.iter().copied());
    let x = || {
        (lo / 1.3..hi * 1.3)
            .log_scale()
            .with_key_points(loads.clone())
    };

    let tokens: Vec<(f64, f64)> = levels
        .iter()
        .map(|l| (l.load.value(), l.output_tokens_per_second))
        .collect();
    let top = tokens.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.15;
    let mut chart = base(&left, "Output tokens/s", x(), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("tokens/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v}"))
        .draw()?;
    chart.draw_series(LineSeries::new(tokens, BLUE.stroke_width(2)).point_size(4))?;

    let mut values = Vec::new();
    for (_, _, stat) in LATENCIES {
        for l in levels {
            values.extend(stat(l).into_iter().flat_map(|s| [s.p50, s.p99]));
        }
    }
    // Zero latencies (tokens arriving in one read) cannot sit on a log axis.
    let (lo, hi) = bounds(values.iter().copied().filter(|v| *v > 0.0));
    let mut chart = base(
        &right,
        "Latency p50 (solid) and p99 (dashed)",
        x(),
        (lo / 1.5..hi * 1.5).log_scale(),
    )?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("seconds")
        .x_label_formatter(&|v| format!("{v}"))
        .y_label_formatter(&|v| secs(Some(*v)))
        .draw()?;
    for (name, color, stat) in LATENCIES {
        let pick = |q: fn(&Stats) -> f64| -> Vec<(f64, f64)> {
            levels
                .iter()
                .filter_map(|l| stat(l).map(|s| (l.load.value(), q(&s))))
                .filter(|p| p.1 > 0.0)
                .collect()
        };
        chart
            .draw_series(LineSeries::new(pick(|s| s.p50), color.stroke_width(2)).point_size(3))?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(
                pick(|s| s.p99),
                6,
                4,
                color.stroke_width(1),
            ))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

type Chart<'a, 'b, X, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>;

/// One chart's frame on `area`.
fn base<'a, 'b, X, Y>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    x: X,
    y: Y,
) -> anyhow::Result<Chart<'a, 'b, X::CoordDescType, Y::CoordDescType>>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    Ok(ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?)
}

/// Smallest and largest value, defaulting to an arbitrary decade when there is none.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.001, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_svg_paths_are_accepted() {
        assert!(check_path(Path::new("out.svg")).is_ok());
        assert!(check_path(Path::new("OUT.SVG")).is_ok());
        let png = check_path(Path::new("out.png")).unwrap_err().to_string();
        assert!(png.contains("PNG") && png.contains(".svg"), "{png}");
        assert!(check_path(Path::new("out")).is_err());
    }
}
