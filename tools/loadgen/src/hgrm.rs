//! The `.hgrm` file: HdrHistogram's classic percentile-distribution text, written from a
//! run's histogram (`--hgrm`) and read back by `plot`.
//!
//! The writer is byte-compatible with `outputPercentileDistribution(out, 1000.0)` of the
//! Java library (values in milliseconds), so the usual plotters read our files; the reader
//! takes the same format from any of the HdrHistogram libraries. Nothing here knows about
//! runs or pictures.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Quantile steps per halving of the distance to 100%, the Java library's default.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// One line of the distribution: `value` (ms) is the latency at `percentile` (0 to 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub value: f64,
    pub percentile: f64,
}

/// The distribution of a histogram of microseconds, as the file lists it.
pub fn steps(h: &Histogram<u64>) -> Vec<Step> {
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|s| Step {
            value: s.value_iterated_to() as f64 / 1000.0,
            percentile: s.quantile_iterated_to(),
        })
        .collect()
}

/// Writes the distribution of a histogram of microseconds, values in milliseconds;
/// `significant_digits` is the histogram's precision (the footer names its sub-buckets).
pub fn write(h: &Histogram<u64>, significant_digits: u8, out: &mut impl Write) -> io::Result<()> {
    let scale = 1000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for step in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / scale;
        let q = step.quantile_iterated_to();
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    // Sub-buckets cover 2 × 10^digits values at full precision, rounded up to a power of
    // two (what the histogram computes internally but does not expose).
    let sub_buckets = (2 * 10u64.pow(u32::from(significant_digits))).next_power_of_two();
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    )
}

/// Reads a percentile distribution: the header line, then one `value percentile
/// total-count [1/(1-percentile)]` line per step, `#` lines ignored. Anything else, a
/// percentile outside 0..=1, or values or percentiles that go down, is an error naming
/// the line: a file that is not a distribution must not become a plausible curve.
pub fn parse(text: &str) -> Result<Vec<Step>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some((_, header))
            if header
                .split_whitespace()
                .take(3)
                .eq(["Value", "Percentile", "TotalCount"]) => {}
        _ => {
            return Err(
                "not an HdrHistogram percentile distribution (the first line should be \
                 \"Value Percentile TotalCount 1/(1-Percentile)\")"
                    .into(),
            )
        }
    }
    let mut steps: Vec<Step> = Vec::new();
    for (number, line) in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let numbers: Option<Vec<f64>> = fields.iter().map(|f| f.parse::<f64>().ok()).collect();
        let step = match numbers.as_deref() {
            Some(&[value, percentile, count, ..])
                if (3..=4).contains(&fields.len())
                    && value.is_finite()
                    && value >= 0.0
                    && (0.0..=1.0).contains(&percentile)
                    && count >= 0.0 =>
            {
                Step { value, percentile }
            }
            _ => {
                return Err(format!(
                    "line {number} is not a percentile step (value, percentile from 0 to 1, \
                     total count): {line:?}"
                ))
            }
        };
        if let Some(last) = steps.last() {
            if step.value < last.value || step.percentile < last.percentile {
                return Err(format!(
                    "line {number}: the value or percentile goes down from the line before: \
                     {line:?}"
                ));
            }
        }
        steps.push(step);
    }
    if steps.is_empty() {
        return Err("the distribution has no percentile lines (an empty histogram)".into());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thousand() -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us).unwrap();
        }
        h
    }

    #[test]
    fn written_files_have_the_classic_shape() {
        let mut out = Vec::new();
        write(&thousand(), 3, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       0.001 0.000000000000          1           1.00"
        );
        let last = lines[lines.len() - 4];
        assert_eq!(last, "       1.000 1.000000000000       1000");
        assert_eq!(
            lines[lines.len() - 3],
            "#[Mean    =        0.500, StdDeviation   =        0.289]"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =        1.000, Total count    =         1000]"
        );
        assert!(lines[lines.len() - 1].starts_with("#[Buckets = "));
        assert!(lines[lines.len() - 1].ends_with("SubBuckets     =         2048]"));
    }

    #[test]
    fn what_is_written_reads_back_as_the_same_steps() {
        let h = thousand();
        let mut out = Vec::new();
        write(&h, 3, &mut out).unwrap();
        let read = parse(std::str::from_utf8(&out).unwrap()).unwrap();
        let direct = steps(&h);
        assert_eq!(read.len(), direct.len());
        for (r, d) in read.iter().zip(&direct) {
            // The file rounds values to µs and percentiles to 12 digits.
            assert!((r.value - d.value).abs() < 0.0005, "{r:?} {d:?}");
            assert!((r.percentile - d.percentile).abs() < 1e-11, "{r:?} {d:?}");
        }
        assert_eq!(read.last().unwrap().percentile, 1.0);
        assert_eq!(read.last().unwrap().value, 1.0);
    }

    #[test]
    fn files_that_are_not_distributions_are_refused() {
        let header = "       Value     Percentile TotalCount 1/(1-Percentile)\n\n";
        let err = |text: &str| parse(text).unwrap_err();
        assert!(err("").contains("not an HdrHistogram"));
        assert!(err("{\"scenario\": \"publish\"}\n").contains("not an HdrHistogram"));
        assert!(err(header).contains("no percentile lines"));
        let garbage = format!("{header}       0.100 0.5 10 2.00\nhello world\n");
        assert!(err(&garbage).contains("line 4"), "{}", err(&garbage));
        let beyond = format!("{header}       0.100 1.5 10\n");
        assert!(err(&beyond).contains("line 3"));
        let down = format!("{header}       0.200 0.5 10 2.00\n       0.100 0.9 20 10.00\n");
        assert!(err(&down).contains("goes down"));
        // The footer and the final 100% line (no 1/(1-p) column) are fine.
        let ok = format!(
            "{header}       0.100 0.000000000000 1 1.00\n       0.300 1.000000000000 2\n\
             #[Mean    =        0.200, StdDeviation   =        0.100]\n"
        );
        assert_eq!(
            parse(&ok).unwrap(),
            vec![
                Step {
                    value: 0.1,
                    percentile: 0.0
                },
                Step {
                    value: 0.3,
                    percentile: 1.0
                }
            ]
        );
    }
}
