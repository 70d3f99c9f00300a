//! Accuracy-curve plots (PNG). A missing system font must not fail a finished run, so plotting
//! errors are returned for the caller to report as a warning.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One curve: a label and `(x, y)` points.
pub struct Curve {
    /// Legend label.
    pub label: String,
    /// Points, e.g. x in epochs (1-based) and y in %.
    pub points: Vec<(f64, f64)>,
    /// Palette index (default: the curve's position), so related curves can share a colour.
    pub color: Option<usize>,
    /// Draw a dashed line (e.g. the second curve of a pair).
    pub dashed: bool,
}

impl Curve {
    /// A solid curve in the colour of its position.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
            color: None,
            dashed: false,
        }
    }
}

/// Plots are by-products of a finished table: a failure to draw one is reported as a warning
/// naming `path`, never an error that would discard the results already written.
pub fn warn_if_not_drawn(path: &Path, drawn: Result<()>) {
    if let Err(e) = drawn {
        say!("warning: could not draw {}: {e:#}", path.display());
    }
}

/// Draws `curves` into a PNG at `path`, with axis labels `x_desc` and `y_desc`.
pub fn curves(path: &Path, title: &str, x_desc: &str, y_desc: &str, curves: &[Curve]) -> Result<()> {
    let pts = curves.iter().flat_map(|c| c.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        return Err(anyhow!("nothing to plot"));
    }
    let pad = ((y_max - y_min) * 0.05).max(0.5);
    let x_pad = (x_max * 0.02).max(0.5);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max + x_pad, (y_min - pad)..(y_max + pad))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|x| {
            if x_max > 20.0 {
                format!("{x:.0}")
            } else {
                format!("{x}")
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(c.color.unwrap_or(i)).to_rgba();
        // Markers too: a run of one evaluated epoch is a single point, which a line cannot show.
        chart
            .draw_series(c.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
        let legend = if c.dashed {
            chart
                .draw_series(DashedLineSeries::new(
                    c.points.iter().copied(),
                    8,
                    5,
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
        } else {
            chart
                .draw_series(LineSeries::new(c.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
        };
        let dashed = c.dashed;
        legend.label(c.label.clone()).legend(move |(x, y)| {
            let seg = if dashed { 8 } else { 20 };
            PathElement::new(vec![(x, y), (x + seg, y)], color.stroke_width(2))
        });
        chart
            .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
