//! The results file (Markdown), its data (JSON) and a chart (PNG).

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use super::{Options, Section};

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub loadavg_1m: f64,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split(':').nth(1))
            })
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
            cpus,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            loadavg_1m: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub quick: bool,
    /// Only some parts ran (`--only`): not a results file to commit.
    pub partial: bool,
    pub duration_s: f64,
    pub machine: Machine,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn new(
        machine: Machine,
        opts: Options,
        partial: bool,
        sections: Vec<Section>,
        took: Duration,
    ) -> Report {
        let date = std::process::Command::new("date")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "unknown-date".into());
        Report {
            date,
            quick: opts.quick,
            partial,
            duration_s: took.as_secs_f64(),
            machine,
            sections,
        }
    }

    /// `<dir>/<date>[-quick][-partial].{md,json,png}`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut stem = self.date.clone();
        if self.quick {
            stem.push_str("-quick");
        }
        if self.partial {
            stem.push_str("-partial");
        }
        let md = dir.join(format!("{stem}.md"));
        fs::write(&md, self.markdown()).with_context(|| format!("writing {}", md.display()))?;
        fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_vec_pretty(self)?,
        )?;
        let png = dir.join(format!("{stem}.png"));
        if let Err(e) = self.chart(&png) {
            println!("bench: no chart ({e:#})");
        }
        println!("bench: wrote {}", md.display());
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "# xdplb benchmark, {}{}\n\nMachine: {} × {}, {:.0} GiB, Linux {}; load average before the run {:.2}; took {:.0} s.\n\
             Every figure is the median of the runs with min–max; ratios compare peers measured in this same run.\n",
            self.date,
            match (self.quick, self.partial) {
                (false, false) => "",
                (true, false) => " (quick)",
                (false, true) => " (some parts only)",
                (true, true) => " (quick, some parts only)",
            },
            m.cpus,
            m.cpu,
            m.memory_gib,
            m.kernel,
            m.loadavg_1m,
            self.duration_s
        );
        for sec in &self.sections {
            let _ = write!(s, "\n## {}\n\n", sec.title);
            for n in &sec.notes {
                let _ = writeln!(s, "- {n}");
            }
            if !sec.rows.is_empty() {
                s.push_str("\n| what | median | min–max | unit |\n| --- | ---: | ---: | --- |\n");
                for r in &sec.rows {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {}–{} | {} |",
                        r.name,
                        fmt(r.median),
                        fmt(r.min),
                        fmt(r.max),
                        r.unit
                    );
                }
            }
            if !sec.ratios.is_empty() {
                s.push_str("\n| ratio | value | goal | met |\n| --- | ---: | --- | --- |\n");
                for r in &sec.ratios {
                    let _ = writeln!(
                        s,
                        "| {} | {:.2} | {} | {} |",
                        r.what,
                        r.value,
                        r.goal,
                        if r.met { "yes" } else { "**no**" }
                    );
                }
            }
        }
        s
    }

    pub fn print_summary(&self) {
        println!("\n{:<58} {:>8} {:<28} met", "ratio", "value", "goal");
        for sec in &self.sections {
            for r in &sec.ratios {
                println!(
                    "{:<58} {:>8.2} {:<28} {}",
                    r.what,
                    r.value,
                    r.goal,
                    if r.met { "yes" } else { "NO" }
                );
            }
            for n in sec.notes.iter().filter(|n| n.starts_with("FAILED")) {
                println!("{}: {n}", sec.title);
            }
        }
    }

    /// One horizontal bar chart per section: each row's median.
    fn chart(&self, path: &Path) -> Result<()> {
        let font = fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
            .context("DejaVuSans.ttf (Debian package fonts-dejavu-core)")?;
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .map_err(|_| anyhow::anyhow!("registering the chart font"))?;
        let sections: Vec<&Section> = self
            .sections
            .iter()
            .filter(|s| !s.rows.is_empty())
            .collect();
        if sections.is_empty() {
            return Ok(());
        }
        let height = sections
            .iter()
            .map(|s| 80 + 28 * s.rows.len() as u32)
            .sum::<u32>();
        let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let heights: Vec<u32> = sections
            .iter()
            .map(|s| 80 + 28 * s.rows.len() as u32)
            .collect();
        let mut rest = root;
        for (sec, h) in sections.iter().zip(heights) {
            let (area, below) = rest.split_vertically(h);
            rest = below;
            let max = sec
                .rows
                .iter()
                .map(|r| r.max)
                .fold(0.0f64, f64::max)
                .max(1e-9)
                * 1.1;
            let n = sec.rows.len();
            let unit = sec.rows[0].unit.clone();
            let mut chart = ChartBuilder::on(&area)
                .caption(format!("{} ({unit})", sec.title), ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(24)
                .y_label_area_size(300)
                .build_cartesian_2d(0.0..max, (0..n).into_segmented())?;
            let names: Vec<String> = sec.rows.iter().map(|r| r.name.clone()).collect();
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n)
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .label_style(("sans-serif", 13))
                .draw()?;
            chart.draw_series(sec.rows.iter().enumerate().map(|(i, r)| {
                let color = if r.name.starts_with("xdplb") {
                    BLUE.mix(0.7)
                } else {
                    BLACK.mix(0.35)
                };
                Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (r.median, SegmentValue::Exact(i + 1)),
                    ],
                    color.filled(),
                )
            }))?;
            chart.draw_series(sec.rows.iter().enumerate().map(|(i, r)| {
                PathElement::new(
                    vec![
                        (r.min, SegmentValue::CenterOf(i)),
                        (r.max, SegmentValue::CenterOf(i)),
                    ],
                    BLACK.stroke_width(2),
                )
            }))?;
        }
        Ok(())
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
