//! The report's plots, drawn with plotters into PNG files. Text is drawn with a TTF
//! file read at run time (plotters' `ab_glyph` feature), so no font library is needed.

use super::{Results, Row, Target, WorkerCpu};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use xtask::util::{Context, Error, Result};

/// A drawn plot: what it shows and its file.
pub struct Plot {
    pub title: String,
    pub file: PathBuf,
}

fn pe<E: std::fmt::Display>(e: E) -> Error {
    Error(format!("drawing a plot: {e}"))
}

fn color(t: Target) -> RGBColor {
    match t {
        Target::EdgesyncDeployed => RGBColor(221, 84, 22),
        Target::Edgesync => RGBColor(236, 135, 60),
        Target::EdgesyncGateway => RGBColor(245, 190, 120),
        Target::TsDeployed => RGBColor(38, 110, 200),
        Target::Ts => RGBColor(120, 170, 230),
        Target::FloorDeployed => RGBColor(60, 60, 60),
        Target::Direct => RGBColor(64, 150, 72),
        Target::DirectModel => RGBColor(140, 80, 170),
        Target::Model => RGBColor(110, 110, 110),
    }
}

const FONT: &str = "sans-serif";

/// A chart of `n` categories side by side (their labels drawn by the caller), with a
/// linear axis from 0 to `top` and its mesh drawn.
fn bar_chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    y_label_size: u32,
    n: f64,
    top: f64,
) -> Result<
    ChartContext<
        'a,
        BitMapBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 24))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(y_label_size)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(y_desc)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(pe)?;
    Ok(chart)
}

/// Give plotters the TTF file every plot's text is drawn with.
fn register_font(font: &Path) -> Result<()> {
    let bytes = fs_err::read(font).context(format!("could not read the font {}", font.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| Error(format!("{} is not a font plotters can use", font.display())))
}

pub fn draw(r: &Results, dir: &Path, font: &Path) -> Result<Vec<Plot>> {
    register_font(font)?;
    let mut out = Vec::new();
    let targets: Vec<Target> = [
        Target::EdgesyncDeployed,
        Target::Edgesync,
        Target::EdgesyncGateway,
        Target::TsDeployed,
        Target::Ts,
        Target::Direct,
    ]
    .into_iter()
    .filter(|t| r.rows.iter().any(|row| row.target == *t && row.workload == "sync_page"))
    .collect();

    let file = dir.join("sync_throughput_vs_size.png");
    sync_throughput(r, &targets, &file)?;
    out.push(Plot { title: "/sync throughput against the user's table size".into(), file });

    let file = dir.join("sync_page_latency_vs_size.png");
    sync_latency(r, &targets, &file)?;
    out.push(Plot { title: "/sync page latency (p50, p99) against the table size".into(), file });

    let file = dir.join("latency_by_endpoint.png");
    latency_by_endpoint(r, &file)?;
    out.push(Plot { title: "Latency per endpoint (bar: p50, line: p99)".into(), file });

    if r.live.as_ref().is_some_and(|l| !l.latency.is_empty()) {
        let file = dir.join("live_latency.png");
        live_latency(r, &file)?;
        out.push(Plot { title: "Write-to-other-device latency on /live (bar: p50, line: p99)".into(), file });
    }

    if r.rows.iter().any(|row| row.target == Target::Ts) {
        let file = dir.join("cpu_per_request.png");
        cpu_per_request(r, &file)?;
        out.push(Plot { title: "Worker CPU per request: edgesync against the TypeScript Worker".into(), file });
    }
    Ok(out)
}

/// The live-updates plot alone (`cargo xtask bench --live`).
pub fn live(r: &Results, dir: &Path, font: &Path) -> Result<Plot> {
    register_font(font)?;
    let file = dir.join("live_latency.png");
    live_latency(r, &file)?;
    Ok(Plot { title: "Write-to-other-device latency on /live (bar: p50, line: p99)".into(), file })
}

/// The legend box every plot has, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(pe)
}

/// A line series' key in the legend.
fn line_key(c: RGBColor, width: u32) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(width))
}

/// A bar series' key in the legend.
fn bar_key(c: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], c.filled())
}

fn find<'a>(r: &'a Results, workload: &str, param: u64, t: Target) -> Option<&'a Row> {
    r.rows.iter().find(|row| row.workload == workload && row.param == param && row.target == t)
}

fn size_label(x: f64) -> String {
    if x >= 1e6 {
        format!("{}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{}k", x / 1e3)
    } else {
        format!("{x}")
    }
}

fn thousands(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn x_range(r: &Results) -> std::ops::Range<f64> {
    let lo = r.plan.sizes.iter().copied().min().unwrap_or(1000) as f64;
    let hi = r.plan.sizes.iter().copied().max().unwrap_or(1000) as f64;
    (lo / 2.0)..(hi * 2.0)
}

/// A chart over the big user's table sizes (log scale) from 0 to `top`, its mesh drawn.
fn by_table_size<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    r: &Results,
    caption: &str,
    top: f64,
    y_desc: &str,
    y_label: Option<&dyn Fn(&f64) -> String>,
) -> Result<
    ChartContext<
        'a,
        BitMapBackend<'b>,
        Cartesian2d<plotters::coord::combinators::LogCoord<f64>, plotters::coord::types::RangedCoordf64>,
    >,
> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 24))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range(r).log_scale(), 0f64..top)
        .map_err(pe)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("rows of the user (log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| size_label(*x))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17));
    if let Some(f) = y_label {
        mesh.y_label_formatter(f);
    }
    mesh.draw().map_err(pe)?;
    Ok(chart)
}

fn sync_throughput(r: &Results, targets: &[Target], file: &Path) -> Result<()> {
    let root = BitMapBackend::new(file, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(pe)?;
    let mut ymax: f64 = 1.0;
    for row in r.rows.iter().filter(|row| row.workload.starts_with("sync_") && row.workload != "sync_incremental") {
        ymax = ymax.max(row.m.units_per_sec());
    }
    let caption = format!("/sync throughput, {} clients (rows delivered per second)", r.plan.clients);
    let mut chart = by_table_size(&root, r, &caption, ymax * 1.6, "rows/s", Some(&|y| thousands(*y)))?;
    for &t in targets {
        let c = color(t);
        let pages: Vec<(f64, f64)> = r
            .plan
            .sizes
            .iter()
            .filter_map(|s| find(r, "sync_page", *s, t).map(|row| (*s as f64, row.m.units_per_sec())))
            .collect();
        chart
            .draw_series(LineSeries::new(pages.clone(), c.stroke_width(3)))
            .map_err(pe)?
            .label(format!("{}: random pages of {}", t.title(), r.plan.page_limit))
            .legend(line_key(c, 3));
        chart.draw_series(pages.iter().map(|p| Circle::new(*p, 5, c.filled()))).map_err(pe)?;
        let full: Vec<(f64, f64)> = r
            .plan
            .sizes
            .iter()
            .filter_map(|s| find(r, "sync_full", *s, t).map(|row| (*s as f64, row.m.units_per_sec())))
            .collect();
        if !full.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(full.clone(), 8, 5, c.stroke_width(2)))
                .map_err(pe)?
                .label(format!("{}: full initial pulls", t.title()))
                .legend(line_key(c, 1));
            chart.draw_series(full.iter().map(|p| TriangleMarker::new(*p, 7, c.filled()))).map_err(pe)?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(pe)
}

fn sync_latency(r: &Results, targets: &[Target], file: &Path) -> Result<()> {
    let root = BitMapBackend::new(file, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(pe)?;
    let rows: Vec<&Row> = r.rows.iter().filter(|row| row.workload == "sync_page").collect();
    let ymax = rows.iter().map(|row| row.p99_ms).fold(1.0, f64::max);
    let caption =
        format!("/sync: one page of {} rows at a random position, {} clients", r.plan.page_limit, r.plan.clients);
    let mut chart = by_table_size(&root, r, &caption, ymax * 1.6, "latency, ms", None)?;
    for &t in targets {
        let c = color(t);
        let pts = |p: fn(&Row) -> f64| -> Vec<(f64, f64)> {
            r.plan.sizes.iter().filter_map(|s| find(r, "sync_page", *s, t).map(|row| (*s as f64, p(row)))).collect()
        };
        let p50 = pts(|row| row.p50_ms);
        let p99 = pts(|row| row.p99_ms);
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(3)))
            .map_err(pe)?
            .label(format!("{} p50", t.title()))
            .legend(line_key(c, 3));
        chart.draw_series(p50.iter().map(|p| Circle::new(*p, 5, c.filled()))).map_err(pe)?;
        chart
            .draw_series(DashedLineSeries::new(p99.clone(), 8, 5, c.stroke_width(2)))
            .map_err(pe)?
            .label(format!("{} p99", t.title()))
            .legend(line_key(c, 1));
        chart.draw_series(p99.iter().map(|p| Cross::new(*p, 6, c.stroke_width(2)))).map_err(pe)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(pe)
}

/// The categories of the per-endpoint plots: (label, workload, param). The latency
/// plot shows the largest table's pages and search; the CPU plot every `/sync` and
/// `/upload` workload (the TypeScript Worker has no search).
fn categories(r: &Results, latency: bool) -> Vec<(String, &'static str, u64)> {
    let mut v = Vec::new();
    let largest = r.plan.sizes.iter().copied().max().unwrap_or(0);
    if !latency {
        for s in r.plan.sizes.iter().filter(|s| **s <= r.plan.full_sync_max_size) {
            v.push((format!("full pull\n{}", size_label(*s as f64)), "sync_full", *s));
        }
    }
    for s in r.plan.sizes.iter().filter(|s| !latency || **s == largest) {
        v.push((format!("sync page\n{}", size_label(*s as f64)), "sync_page", *s));
    }
    v.push(("incremental\nsync".into(), "sync_incremental", r.plan.many_users as u64));
    for (b, _) in &r.plan.uploads {
        v.push((format!("upload\n×{b}"), "upload", *b as u64));
    }
    if latency {
        for s in &r.plan.search_sizes {
            v.push((format!("search\n{}", size_label(*s as f64)), "search", *s));
        }
    }
    v
}

/// Category labels under the x axis (two lines each).
fn draw_category_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    at: impl Fn(usize) -> (i32, i32),
    cats: &[(String, &'static str, u64)],
) -> Result<()> {
    for (i, (label, _, _)) in cats.iter().enumerate() {
        let (x, y) = at(i);
        for (k, line) in label.lines().enumerate() {
            let style = TextStyle::from((FONT, 15).into_font()).color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(line.to_owned(), (x, y + 8 + 18 * k as i32), style)).map_err(pe)?;
        }
    }
    Ok(())
}

fn latency_by_endpoint(r: &Results, file: &Path) -> Result<()> {
    let cats = categories(r, true);
    let targets = [
        Target::EdgesyncDeployed,
        Target::Edgesync,
        Target::EdgesyncGateway,
        Target::TsDeployed,
        Target::Ts,
        Target::DirectModel,
        Target::Direct,
    ];
    let targets: Vec<Target> = targets.into_iter().filter(|t| r.rows.iter().any(|row| row.target == *t)).collect();
    let root = BitMapBackend::new(file, (1300, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(pe)?;
    let mut lo = f64::MAX;
    let mut hi: f64 = 1.0;
    for (_, w, p) in &cats {
        for t in &targets {
            if let Some(row) = find(r, w, *p, *t) {
                lo = lo.min(row.p50_ms);
                hi = hi.max(row.p99_ms);
            }
        }
    }
    let lo = if lo.is_finite() && lo > 0.0 { lo / 2.0 } else { 0.1 };
    let n = cats.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency per endpoint, {} clients (bar: p50, line: p99; log scale)", r.plan.clients),
            (FONT, 24),
        )
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n, (lo..hi * 6.0).log_scale())
        .map_err(pe)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc("latency, ms")
        .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y:.1}") })
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(pe)?;
    let width = 0.8 / targets.len() as f64;
    for (k, t) in targets.iter().enumerate() {
        let c = color(*t);
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (i, (_, w, p)) in cats.iter().enumerate() {
            if let Some(row) = find(r, w, *p, *t) {
                let x0 = i as f64 + 0.1 + k as f64 * width;
                bars.push(Rectangle::new([(x0, lo), (x0 + width * 0.9, row.p50_ms)], c.filled()));
                let xm = x0 + width * 0.45;
                whiskers.push(PathElement::new(vec![(xm, row.p50_ms), (xm, row.p99_ms)], BLACK.stroke_width(1)));
                whiskers.push(PathElement::new(
                    vec![(x0 + width * 0.2, row.p99_ms), (x0 + width * 0.7, row.p99_ms)],
                    BLACK.stroke_width(2),
                ));
            }
        }
        chart.draw_series(bars).map_err(pe)?.label(t.title()).legend(bar_key(c));
        chart.draw_series(whiskers).map_err(pe)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    draw_category_labels(&root, |i| chart.backend_coord(&(i as f64 + 0.5, lo)), &cats)?;
    root.present().map_err(pe)
}

fn live_latency(r: &Results, file: &Path) -> Result<()> {
    let Some(l) = &r.live else { return Ok(()) };
    let rows = &l.latency;
    let root = BitMapBackend::new(file, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(pe)?;
    let hi = rows.iter().map(|r| r.p99_ms).fold(1.0, f64::max);
    let n = rows.len() as f64;
    let mut chart =
        bar_chart(&root, "Write to the other devices' poke (bar: p50, line: p99)", "latency, ms", 70, n, hi * 1.15)?;
    let colour = |w: &str| if w == "upload" { color(Target::Edgesync) } else { color(Target::Direct) };
    for writer in ["upload", "sql"] {
        let c = colour(writer);
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (i, row) in rows.iter().enumerate().filter(|(_, row)| row.writer == writer) {
            let x0 = i as f64 + 0.2;
            bars.push(Rectangle::new([(x0, 0.0), (x0 + 0.6, row.p50_ms)], c.filled()));
            whiskers
                .push(PathElement::new(vec![(x0 + 0.3, row.p50_ms), (x0 + 0.3, row.p99_ms)], BLACK.stroke_width(1)));
            whiskers
                .push(PathElement::new(vec![(x0 + 0.1, row.p99_ms), (x0 + 0.5, row.p99_ms)], BLACK.stroke_width(2)));
        }
        let label = if writer == "upload" { "POST /upload" } else { "plain SQL" };
        chart.draw_series(bars).map_err(pe)?.label(label).legend(bar_key(c));
        chart.draw_series(whiskers).map_err(pe)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    let cats: Vec<(String, &'static str, u64)> =
        rows.iter().map(|r| (format!("{} listening\n{}", r.listeners, r.writer), "", 0)).collect();
    draw_category_labels(&root, |i| chart.backend_coord(&(i as f64 + 0.5, 0.0)), &cats)?;
    root.present().map_err(pe)
}

fn cpu_per_request(r: &Results, file: &Path) -> Result<()> {
    let cats = categories(r, false);
    let targets: Vec<Target> =
        [Target::EdgesyncDeployed, Target::Edgesync, Target::EdgesyncGateway, Target::TsDeployed, Target::Ts]
            .into_iter()
            .filter(|t| r.rows.iter().any(|row| row.target == *t))
            .collect();
    let root = BitMapBackend::new(file, (1300, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(pe)?;
    // Milliseconds of workerd CPU per request.
    let value = |row: &Row| row.worker_cpu_per_1000(WorkerCpu::Runtime).unwrap_or(0.0);
    let mut hi: f64 = 0.1;
    for (_, w, p) in &cats {
        for t in &targets {
            if let Some(row) = find(r, w, *p, *t) {
                hi = hi.max(value(row));
            }
        }
    }
    let n = cats.len() as f64;
    let caption = "Worker CPU per request (the Workers' workerd process, from /proc)";
    let mut chart = bar_chart(&root, caption, "CPU ms per request", 80, n, hi * 1.2)?;
    let width = 0.7 / targets.len() as f64;
    for (k, t) in targets.iter().enumerate() {
        let c = color(*t);
        let mut bars = Vec::new();
        let mut labels = Vec::new();
        for (i, (_, w, p)) in cats.iter().enumerate() {
            if let Some(row) = find(r, w, *p, *t) {
                let x0 = i as f64 + 0.15 + k as f64 * width;
                let v = value(row);
                bars.push(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], c.filled()));
                let style =
                    TextStyle::from((FONT, 13).into_font()).color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
                labels.push(Text::new(
                    if v >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") },
                    (x0 + width * 0.45, v),
                    style,
                ));
            }
        }
        chart.draw_series(bars).map_err(pe)?.label(t.title()).legend(bar_key(c));
        chart.draw_series(labels).map_err(pe)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    draw_category_labels(&root, |i| chart.backend_coord(&(i as f64 + 0.5, 0.0)), &cats)?;
    root.present().map_err(pe)
}
