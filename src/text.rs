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
pub fn push_rfc3339(unix_ms: u64, out: &mut Vec<u8>) {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let fields: [(u64, usize, u8); 7] = [
        (year.min(9999), 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (rem / 3600, 2, b':'),
        (rem / 60 % 60, 2, b':'),
        (rem % 60, 2, b'.'),
        (unix_ms % 1000, 3, b'Z'),
    ];
    for (value, width, separator) in fields {
        push_padded(value, width, out);
        out.push(separator);
    }
}

fn push_padded(value: u64, width: usize, out: &mut Vec<u8>) {
    let mut divisor = 10u64.pow(width as u32 - 1);
    while divisor > 0 {
        out.push(b'0' + (value / divisor % 10) as u8);
        divisor /= 10;
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
    fn civil_days_of_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }
}
