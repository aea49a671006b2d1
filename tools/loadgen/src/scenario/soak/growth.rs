//! Whether a resource of the relay (RSS, open descriptors) levelled off during the soak.
//!
//! The rule: split the run's intervals in thirds. The resource fails when the run *ends*
//! above the highest value of the middle third by more than the tolerance (a fraction of
//! it, or an absolute slack, whichever is larger) *and* it is still rising: the last
//! interval is above the first interval of the last third. A warm-up (buffers, rings
//! filling to their bounds) ends within the first two thirds and passes; so does a burst
//! in the last third that is given back by the end (the 30-minute soak saw RSS go from 69
//! to 88 MiB and back to 69 within three minutes); a leak keeps setting
//! new highs to the end and fails. Relay restarts are meant to happen in the first third
//! only, so the last two thirds are one process.
//!
//! Must not: sample anything (the scenario gives it one value per interval, `None` when
//! the relay could not be read).

/// `Err` with what grew, when `values` (one per interval) did not level off.
pub fn judge(what: &str, values: &[Option<u64>], tolerance: f64, slack: u64) -> Result<(), String> {
    let n = values.len();
    if n < 3 {
        return Ok(());
    }
    let third = n / 3;
    let middle = &values[n - 2 * third..n - third];
    let last = &values[n - third..];
    let (Some(middle_max), Some(last_max)) = (
        middle.iter().flatten().max().copied(),
        last.iter().flatten().max().copied(),
    ) else {
        return Ok(());
    };
    let limit = middle_max + ((middle_max as f64 * tolerance) as u64).max(slack);
    let Some(end) = last.last().copied().flatten() else {
        return Ok(());
    };
    let rising = match last.first().copied().flatten() {
        Some(first) => end > first,
        None => true,
    };
    if end > limit && rising {
        return Err(format!(
            "{what} did not level off: {end} at the end (highest in the last third \
             {last_max}), above the middle third's {middle_max} by more than {:.0}% \
             (limit {limit}), and still rising",
            tolerance * 100.0
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(values: &[u64]) -> Result<(), String> {
        let values: Vec<Option<u64>> = values.iter().map(|&v| Some(v)).collect();
        judge("RSS", &values, 0.10, 8)
    }

    #[test]
    fn a_warm_up_that_levels_off_passes() {
        assert!(judged(&[10, 50, 90, 100, 101, 100]).is_ok());
        assert!(judged(&[100, 100, 100, 100, 100, 100, 100, 100, 100]).is_ok());
    }

    #[test]
    fn a_leak_fails() {
        let e = judged(&[100, 120, 140, 160, 180, 200]).unwrap_err();
        assert!(e.contains("200 at the end"), "{e}");
        assert!(judged(&[100, 110, 120, 130, 140, 150, 160, 170, 180]).is_err());
    }

    #[test]
    fn a_last_third_that_is_high_but_falling_passes() {
        // A burst that is being given back is not growth that fails to level off.
        assert!(judged(&[100, 100, 100, 100, 150, 120]).is_ok());
        // Up and back, ending 0.5 MiB above where the third began: the first 30-minute
        // soak's RSS (KiB, one value per minute), which the earlier rule failed.
        let soak = [
            46620, 37204, 47708, 56428, 56556, 56808, 52472, 37536, 37584, 37688, 61164, 44996,
            50204, 53220, 73292, 77804, 69120, 70016, 70200, 70308, 70328, 70448, 70460, 89936,
            90000, 74720, 70668, 70820, 70820, 70828,
        ];
        assert!(judged(&soak).is_ok());
        // The same run still leaking at the end fails.
        let mut leaking = soak;
        leaking[29] = 90_100;
        assert!(judged(&leaking).is_err());
    }

    #[test]
    fn small_absolute_changes_are_within_the_slack() {
        // Open descriptors: 20 to 26 is a few connections more, not a leak.
        assert!(judged(&[20, 20, 20, 20, 24, 26]).is_ok());
        assert!(judged(&[20, 20, 20, 20, 24, 40]).is_err());
    }

    #[test]
    fn unreadable_intervals_and_short_runs_are_not_judged() {
        assert!(judge("fds", &[None, None, None], 0.1, 8).is_ok());
        assert!(judged(&[1, 1000]).is_ok());
        assert!(judge(
            "fds",
            &[Some(1), None, Some(1), None, Some(100), Some(200)],
            0.1,
            8
        )
        .is_err());
    }
}
