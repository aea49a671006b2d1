//! Text forms the wire formats share: decimal numbers, hex, and UTC instants in RFC 3339
//! form together with the civil calendar behind every date the relay prints.
//!
//! Owns the digits only; what a number or an instant means is its caller's business. The
//! decimal and RFC 3339 writers append to a caller's buffer without allocating, since
//! every response head (status, length) and every message (ID, timestamp) goes through
//! them. Knows nothing of HTTP, WebSocket, topics or accounts.

/// Appends `n` in decimal without formatting machinery.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// How many digits [`push_decimal`] writes for `n`.
pub fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic Gregorian
/// calendar: Howard Hinnant's `civil_from_days`, restricted to days from 1970 on.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Length of an RFC 3339 instant as [`push_rfc3339`] writes it.
pub const RFC3339_LEN: usize = "2025-10-09T12:00:00.123Z".len();

/// Appends `unix_ms` as RFC 3339 UTC with milliseconds (`2025-10-09T12:00:00.123Z`),
/// always [`RFC3339_LEN`] bytes: years past 9999 are clamped.
///
/// Every message and every publish answer carries one, and the instants a thread writes
/// mostly share their second: each thread keeps the text of the last second it wrote
/// (a shard is one thread, so no lock) and only writes the milliseconds anew.
pub fn push_rfc3339(unix_ms: u64, out: &mut Vec<u8>) {
    let secs = unix_ms / 1000;
    let mut text = LAST_SECOND.with(|last| match last.get() {
        (cached, text) if cached == secs => text,
        _ => {
            let text = second_text(secs);
            last.set((secs, text));
            text
        }
    });
    put_digits(&mut text[20..23], unix_ms % 1000);
    out.extend_from_slice(&text);
}

/// The text of an instant in this second, with `.000Z` for the milliseconds.
fn second_text(secs: u64) -> [u8; RFC3339_LEN] {
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    put_digits(&mut text[0..4], year.min(9999));
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], rem / 3600);
    put_digits(&mut text[14..16], rem / 60 % 60);
    put_digits(&mut text[17..19], rem % 60);
    text
}

thread_local! {
    /// The last second [`push_rfc3339`] wrote on this thread, and its text.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; RFC3339_LEN])> =
        const { std::cell::Cell::new((u64::MAX, [0; RFC3339_LEN])) };
}

/// Writes `value` into `digits`, zero-padded to its width.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `unix_ms` as an RFC 3339 string (see [`push_rfc3339`]).
pub fn rfc3339(unix_ms: u64) -> String {
    let mut out = Vec::with_capacity(RFC3339_LEN);
    push_rfc3339(unix_ms, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_their_length() {
        for n in [0, 7, 10, 99, 100, 1_795_775_969_418, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            assert_eq!(decimal_len(n), out.len(), "{n}");
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(1_731_000_000_123), "2024-11-07T17:20:00.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX).len(), RFC3339_LEN, "fixed width");
    }

    #[test]
    fn rfc3339_from_the_second_cache_is_the_same_as_written_afresh() {
        // Consecutive instants (the cache hits) across second, day and year boundaries,
        // and jumps back and forth (it misses), against the calendar written each time.
        let starts = [
            0,
            951_782_399_990,
            1_735_689_599_995,
            4_102_444_799_990,
            1_000,
        ];
        for start in starts {
            for ms in start..start + 25 {
                let mut cached = Vec::new();
                push_rfc3339(ms, &mut cached);
                let mut fresh = second_text(ms / 1000);
                put_digits(&mut fresh[20..23], ms % 1000);
                assert_eq!(cached, fresh, "{ms}");
            }
        }
        assert_eq!(rfc3339(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1_735_689_600_000), "2025-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_735_689_599_998), "2024-12-31T23:59:59.998Z");
    }

    #[test]
    fn civil_days_of_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }
}
