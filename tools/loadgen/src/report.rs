//! Results: latency histograms, the summary table on stdout, and the `--json`, `--hgrm`
//! and `--svg` files (their formats belong to `hgrm` and `plot`).
//!
//! Latencies are recorded in microseconds (3 significant digits, up to an hour) and shown
//! in milliseconds.

use std::io::{self, Write};
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::cpu::{cores, CpuUse};
use crate::hgrm;
use crate::plot;

const SIGNIFICANT_DIGITS: u8 = 3;
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency distribution; each worker thread fills its own, merged at the end.
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> Latency {
        Latency(
            Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        )
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns / 1000);
    }

    pub fn merge(&mut self, other: &Latency) {
        self.0
            .add(&other.0)
            .expect("histograms built by Latency::new have the same bounds");
    }

    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }

    fn json(&self) -> Value {
        json!({
            "p50": self.quantile_ms(0.5),
            "p90": self.quantile_ms(0.9),
            "p99": self.quantile_ms(0.99),
            "p999": self.quantile_ms(0.999),
            "max": self.max_ms(),
            "mean": if self.0.is_empty() { 0.0 } else { (self.0.mean()).round() / 1000.0 },
        })
    }

    /// The percentile distribution in HdrHistogram's text format, values in milliseconds.
    pub fn write_hgrm(&self, out: &mut impl Write) -> io::Result<()> {
        hgrm::write(&self.0, SIGNIFICANT_DIGITS, out)
    }

    /// The same distribution as steps, for a picture of it.
    pub fn steps(&self) -> Vec<hgrm::Step> {
        hgrm::steps(&self.0)
    }
}

/// One line of the summary table.
pub struct Row {
    pub name: &'static str,
    /// What `count` counts, in words ("message acknowledged", "delivery"): the unit of the
    /// server-CPU column.
    pub per: &'static str,
    pub count: u64,
    pub errors: u64,
    /// Per second over the measured phase (or what the scenario says it is).
    pub rate: f64,
    pub latency: Latency,
}

impl Row {
    /// The server's CPU time over the phase the row counts, divided by its count, in µs:
    /// all of it, so a publish row of a receiving scenario carries the deliveries too.
    fn server_cpu_us(&self, cpu: &CpuUse) -> Option<f64> {
        let seconds = cpu.server_s?;
        (self.count > 0).then(|| seconds * 1e6 / self.count as f64)
    }

    fn json(&self, cpu: &CpuUse) -> Value {
        let mut row = json!({
            "count": self.count,
            "errors": self.errors,
            "rate": round2(self.rate),
            "latency_ms": self.latency.json(),
        });
        if let Some(us) = self.server_cpu_us(cpu) {
            row["server_cpu_us"] = json!(round2(us));
            row["server_cpu_per"] = json!(self.per);
        }
        row
    }
}

pub struct Summary {
    pub scenario: &'static str,
    /// What ran, in words: connections, rate, topics.
    pub setup: String,
    pub measured_s: f64,
    pub warmup_s: f64,
    /// The first row is the scenario's headline: the top-level JSON fields (but `errors`,
    /// which sums every row) and `--hgrm`.
    pub rows: Vec<Row>,
    /// Scenario-specific results, printed under the table and added to the JSON.
    pub extras: Vec<(&'static str, Value)>,
    pub cpu: CpuUse,
    pub server_pid: Option<u32>,
    pub first_error: Option<String>,
    /// Deliveries beyond what was published (receiving scenarios; 0 for the others): a
    /// fault like an error, though no row shows it.
    pub duplicates: u64,
    /// A failure no error count expresses (the soak's checker violations, growth that did
    /// not level off): the run fails whatever `--max-error-rate` allows.
    pub failure: Option<String>,
}

impl Summary {
    /// What makes a run fail: every row's errors (lost deliveries included) and duplicate
    /// deliveries.
    pub fn faults(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum::<u64>() + self.duplicates
    }

    /// `Err` saying why when the run cannot be trusted: faults above `max_rate` of the
    /// operations the table counts (failed ones included), or nothing measured at all.
    pub fn verdict(&self, max_rate: f64) -> Result<(), String> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let faults = self.faults();
        let operations = self.rows.iter().map(|r| r.count).sum::<u64>() + faults;
        let rate = faults as f64 / operations.max(1) as f64;
        if faults > 0 && rate > max_rate {
            return Err(format!(
                "{faults} errors, lost or duplicate deliveries in {operations} operations \
                 ({:.3}%, tolerated: {:.3}%, see --max-error-rate)",
                rate * 100.0,
                max_rate * 100.0
            ));
        }
        if self.rows[0].count == 0 {
            return Err(format!(
                "nothing was measured ({} count 0)",
                self.rows[0].name
            ));
        }
        Ok(())
    }

    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "pulsar-loadgen {}: {}", self.scenario, self.setup)?;
        writeln!(
            out,
            "measured {:.1} s after a {:.1} s warm-up; latencies in ms\n",
            self.measured_s, self.warmup_s
        )?;
        let server_column = self.cpu.server_s.is_some();
        write!(
            out,
            "{:<10} {:>10} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "count", "rate/s", "errors", "p50", "p90", "p99", "p99.9", "max"
        )?;
        writeln!(out, "{}", if server_column { "  server µs" } else { "" })?;
        for row in &self.rows {
            let l = &row.latency;
            write!(
                out,
                "{:<10} {:>10} {:>12.1} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                row.name,
                row.count,
                row.rate,
                row.errors,
                l.quantile_ms(0.5),
                l.quantile_ms(0.9),
                l.quantile_ms(0.99),
                l.quantile_ms(0.999),
                l.max_ms()
            )?;
            match row.server_cpu_us(&self.cpu) {
                Some(us) => writeln!(out, " {us:>10.2}")?,
                None if server_column => writeln!(out, " {:>10}", "-")?,
                None => writeln!(out)?,
            }
        }
        if !self.extras.is_empty() {
            writeln!(out)?;
            let fields: Vec<String> = self
                .extras
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(out, "{}", fields.join(", "))?;
        }
        let mut cpu = format!(
            "cpu (cores busy, {} on this machine): loadgen {:.2}",
            cores(),
            self.cpu.loadgen
        );
        match (self.cpu.server, self.server_pid) {
            (Some(s), Some(pid)) => cpu.push_str(&format!(", server {s:.2} (pid {pid})")),
            (None, Some(pid)) => cpu.push_str(&format!(", server pid {pid} not readable")),
            _ => cpu.push_str(", server not measured (give --server-pid)"),
        }
        if let Some(machine) = self.cpu.machine {
            let others = machine - self.cpu.loadgen - self.cpu.server.unwrap_or(0.0);
            cpu.push_str(&format!(", machine {machine:.2}"));
            if self.cpu.server.is_some() {
                cpu.push_str(&format!(
                    " (interrupts and other processes {:.2})",
                    others.max(0.0)
                ));
            }
        }
        writeln!(out, "{cpu}")?;
        if server_column {
            let per: Vec<String> = self
                .rows
                .iter()
                .map(|r| format!("per {} ({})", r.per, r.name))
                .collect();
            writeln!(
                out,
                "server µs: the server's CPU time (user + system, all threads) over the same \
                 phase, {}",
                per.join(", ")
            )?;
        }
        if let Some(e) = &self.first_error {
            writeln!(out, "first error: {e}")?;
        }
        Ok(())
    }

    pub fn json(&self) -> Value {
        let head = &self.rows[0];
        let mut map = Map::new();
        map.insert("scenario".into(), json!(self.scenario));
        map.insert("setup".into(), json!(self.setup));
        map.insert("count".into(), json!(head.count));
        // Everything that went wrong in the run, whichever row it shows in.
        let errors: u64 = self.rows.iter().map(|r| r.errors).sum();
        map.insert("errors".into(), json!(errors));
        map.insert("duration_s".into(), json!(round2(self.measured_s)));
        map.insert("warmup_s".into(), json!(round2(self.warmup_s)));
        map.insert("rate".into(), json!(round2(head.rate)));
        map.insert("latency_ms".into(), head.latency.json());
        if let Some(us) = head.server_cpu_us(&self.cpu) {
            map.insert("server_cpu_us".into(), json!(round2(us)));
            map.insert("server_cpu_per".into(), json!(head.per));
        }
        let rows: Map<String, Value> = self
            .rows
            .iter()
            .map(|r| (r.name.to_string(), r.json(&self.cpu)))
            .collect();
        map.insert("rows".into(), Value::Object(rows));
        for (k, v) in &self.extras {
            map.insert((*k).into(), v.clone());
        }
        map.insert(
            "cpu".into(),
            json!({
                "cores": cores(),
                "loadgen_cores": round2(self.cpu.loadgen),
                "server_cores": self.cpu.server.map(round2),
                "server_cpu_s": self.cpu.server_s.map(|s| (s * 1000.0).round() / 1000.0),
                "machine_cores": self.cpu.machine.map(round2),
            }),
        );
        map.insert("first_error".into(), json!(self.first_error));
        Value::Object(map)
    }

    pub fn write_files(&self, files: &Files) -> Result<(), String> {
        if let Some(path) = files.json {
            let mut text =
                serde_json::to_string_pretty(&self.json()).expect("JSON values serialize");
            text.push('\n');
            std::fs::write(path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        let head = &self.rows[0];
        if let Some(path) = files.hgrm {
            let mut text = Vec::new();
            head.latency
                .write_hgrm(&mut text)
                .expect("writing to memory cannot fail");
            std::fs::write(path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        if let Some(path) = files.svg {
            let series = plot::Series {
                label: format!("{} {}: {}", self.scenario, head.name, self.setup),
                steps: head.latency.steps(),
            };
            let title = format!("pulsar-loadgen {}: {} latency", self.scenario, head.name);
            plot::write(path, &plot::svg(&[series], &title))?;
        }
        Ok(())
    }
}

/// Where a run's results go besides stdout.
pub struct Files<'a> {
    pub json: Option<&'a Path>,
    pub hgrm: Option<&'a Path>,
    pub svg: Option<&'a Path>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rows: &[(u64, u64)], duplicates: u64) -> Summary {
        Summary {
            scenario: "test",
            setup: String::new(),
            measured_s: 1.0,
            warmup_s: 0.0,
            rows: rows
                .iter()
                .map(|&(count, errors)| Row {
                    name: "row",
                    per: "thing",
                    count,
                    errors,
                    rate: 0.0,
                    latency: Latency::new(),
                })
                .collect(),
            extras: Vec::new(),
            cpu: CpuUse {
                loadgen: 0.0,
                server: None,
                server_s: None,
                machine: None,
            },
            server_pid: None,
            first_error: None,
            duplicates,
            failure: None,
        }
    }

    #[test]
    fn any_fault_fails_a_run_unless_its_rate_is_tolerated() {
        assert_eq!(summary(&[(1000, 0), (500, 0)], 0).verdict(0.0), Ok(()));
        // An error in any row, or a duplicate delivery, fails it.
        assert!(summary(&[(1000, 0), (500, 1)], 0).verdict(0.0).is_err());
        assert!(summary(&[(1000, 0)], 1).verdict(0.0).is_err());
        // 10 faults in 1000 operations: 1%.
        let one_percent = summary(&[(990, 10)], 0);
        assert!(one_percent.verdict(0.009).is_err());
        assert_eq!(one_percent.verdict(0.01), Ok(()));
        // Every request failed, or nothing was measured: never a pass.
        assert!(summary(&[(0, 50)], 0).verdict(1.0).is_err());
        let why = summary(&[(0, 0)], 0).verdict(0.0).unwrap_err();
        assert!(why.contains("nothing was measured"), "{why}");
    }

    #[test]
    fn server_cpu_is_divided_by_each_rows_count_when_known() {
        let mut s = summary(&[(1000, 0), (250, 0), (0, 0)], 0);
        let unknown = s.json();
        assert!(unknown.get("server_cpu_us").is_none(), "{unknown:#}");
        assert!(unknown["rows"]["row"].get("server_cpu_us").is_none());
        let mut table = Vec::new();
        s.print(&mut table).unwrap();
        assert!(!String::from_utf8(table).unwrap().contains("server µs"));

        s.rows[1].name = "second";
        s.rows[2].name = "empty";
        s.cpu.server_s = Some(0.5);
        let v = s.json();
        assert_eq!(v["server_cpu_us"], 500.0, "{v:#}");
        assert_eq!(v["server_cpu_per"], "thing");
        assert_eq!(v["rows"]["second"]["server_cpu_us"], 2000.0);
        // Nothing counted: no division by zero, no number.
        assert!(v["rows"]["empty"].get("server_cpu_us").is_none());
        let mut table = Vec::new();
        s.print(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        let header = table.lines().find(|l| l.contains("p99.9")).unwrap();
        assert!(header.ends_with("server µs"), "{table}");
        let second = table.lines().find(|l| l.starts_with("second")).unwrap();
        assert!(second.ends_with(" 2000.00"), "{table}");
        assert!(table.contains("per thing (second)"), "{table}");
    }

    #[test]
    fn merged_histograms_count_everything() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record_ns(1_000_000);
        b.record_ns(3_000_000);
        a.merge(&b);
        assert_eq!(a.0.len(), 2);
        assert!((a.quantile_ms(1.0) - 3.0).abs() < 0.01);
    }
}
