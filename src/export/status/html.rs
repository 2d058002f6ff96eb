//! Small helpers for writing the status pages: escaping for HTML text and attributes,
//! URL parts, and numbers formatted for people (percents, durations, counts, dates).
//!
//! Every string that comes from configuration or from clients (SLO names, services,
//! descriptions, regions) goes through [`escape`] or [`Out::text`]: nothing else
//! writes them.

use std::fmt::Write;

/// Appends `s` to `out` escaped for HTML text and for double- or single-quoted
/// attribute values.
pub fn escape(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// Appends `s` percent-encoded for a URL path segment or a query value: everything but
/// `A-Z a-z 0-9 - _ . ~` is encoded, so the result needs no HTML escaping either.
pub fn url_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Decodes a query value: `+` is a space, `%XX` a byte; bytes that are not UTF-8 are
/// replaced.
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        decoded.push(b);
                        i += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            b => decoded.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The page being written, with shorthands for the common pieces.
pub struct Out<'a> {
    /// The page so far.
    pub s: &'a mut String,
}

impl Out<'_> {
    /// Appends trusted markup as is.
    pub fn raw(&mut self, markup: &str) -> &mut Self {
        self.s.push_str(markup);
        self
    }

    /// Appends text, escaped.
    pub fn text(&mut self, text: &str) -> &mut Self {
        escape(text, self.s);
        self
    }

    /// Appends formatted trusted markup (numbers, fixed words).
    pub fn fmt(&mut self, args: std::fmt::Arguments<'_>) -> &mut Self {
        let _ = self.s.write_fmt(args);
        self
    }

    /// Appends a float exactly, in the shortest form that reads back to the same value
    /// (as `/metrics` writes it): for `data-*` attributes.
    pub fn exact(&mut self, v: f64) -> &mut Self {
        if v.is_nan() {
            self.s.push_str("NaN");
        } else if v.is_infinite() {
            self.s.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.s, "{v}");
        }
        self
    }
}

/// A ratio as a percent with `decimals` decimals, rounded down so that a value below 1
/// never shows as 100%: `0.99953` with 2 gives `99.95%`.
pub fn percent_floor(ratio: f64, decimals: usize) -> String {
    let scale = 10f64.powi(decimals as i32);
    let v = (ratio * 100.0 * scale + 1e-9).floor() / scale;
    format!("{v:.decimals$}%")
}

/// A ratio as a percent with one decimal, or none past 1000%: `0.623` gives `62.3%`,
/// `-0.15` gives `−15.0%` (a real minus sign).
pub fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    let text = if !p.is_finite() {
        "–".to_owned()
    } else if p.abs() >= 1_000.0 {
        format!("{:.0}%", p.abs())
    } else {
        format!("{:.1}%", p.abs())
    };
    if p < 0.0 && text != "0.0%" {
        format!("\u{2212}{text}")
    } else {
        text
    }
}

/// The decimals an SLI needs next to objective `percent`: one more than the objective
/// has, at least 2 and at most 6 (99.9 gives 2, 99.95 gives 3).
pub fn sli_decimals(objective_percent: f64) -> usize {
    let text = format!("{objective_percent}");
    let given = text.split_once('.').map_or(0, |(_, d)| d.len());
    (given + 1).clamp(2, 6)
}

/// An objective in percent as written: `99.9%`.
pub fn objective(percent: f64) -> String {
    format!("{percent}%")
}

/// A burn rate with three significant digits at most: `0`, `0.42`, `14.4`, `120`.
pub fn burn(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    if v == 0.0 {
        "0".to_owned()
    } else if v < 10.0 {
        trim(format!("{v:.2}"))
    } else if v < 100.0 {
        trim(format!("{v:.1}"))
    } else {
        format!("{v:.0}")
    }
}

/// Drops trailing zeros after a decimal point (and the point).
fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A length of time for people, to three significant digits in the largest fitting
/// unit: `12 s`, `43.2 min`, `5.5 h`, `3.21 d`.
pub fn duration(secs: f64) -> String {
    let secs = secs.abs();
    let (v, unit) = if secs < 60.0 {
        (secs, "s")
    } else if secs < 3_600.0 {
        (secs / 60.0, "min")
    } else if secs < 86_400.0 {
        (secs / 3_600.0, "h")
    } else {
        (secs / 86_400.0, "d")
    };
    let text = if v < 10.0 {
        trim(format!("{v:.2}"))
    } else if v < 100.0 {
        trim(format!("{v:.1}"))
    } else {
        format!("{v:.0}")
    };
    format!("{text} {unit}")
}

/// A latency in seconds for people: `850 µs`, `12.3 ms`, `1.24 s`.
pub fn latency(secs: f64) -> String {
    if !secs.is_finite() {
        return "–".to_owned();
    }
    let sig = |v: f64| {
        if v < 10.0 {
            trim(format!("{v:.2}"))
        } else if v < 100.0 {
            trim(format!("{v:.1}"))
        } else {
            format!("{v:.0}")
        }
    };
    if secs < 1e-3 {
        format!("{} µs", sig(secs * 1e6))
    } else if secs < 1.0 {
        format!("{} ms", sig(secs * 1e3))
    } else {
        format!("{} s", sig(secs))
    }
}

/// A quantile's column title: `0.5` gives `p50`, `0.999` gives `p99.9`.
pub fn quantile_name(q: f64) -> String {
    let p = format!("{:.4}", q * 100.0);
    format!("p{}", trim(p))
}

/// Unix seconds as `2024-05-01 12:00:00 UTC`.
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_round_trips_urls() {
        let mut out = String::new();
        escape(r#"<script>alert("x" + 'y')</script> & done"#, &mut out);
        assert_eq!(
            out,
            "&lt;script&gt;alert(&quot;x&quot; + &#39;y&#39;)&lt;/script&gt; &amp; done"
        );
        let mut url = String::new();
        url_encode("a b/<é>\"", &mut url);
        assert_eq!(url, "a%20b%2F%3C%C3%A9%3E%22");
        assert_eq!(url_decode(&url), "a b/<é>\"");
        assert_eq!(url_decode("x+y%2"), "x y%2");
        assert_eq!(url_decode("%zz%"), "%zz%");
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(percent_floor(0.99953, 2), "99.95%");
        assert_eq!(percent_floor(0.999999, 2), "99.99%");
        assert_eq!(percent_floor(1.0, 2), "100.00%");
        assert_eq!(percent_floor(0.5, 3), "50.000%");
        assert_eq!(percent(0.623), "62.3%");
        assert_eq!(percent(-0.15), "\u{2212}15.0%");
        assert_eq!(percent(-0.0001), "0.0%");
        assert_eq!(percent(-25.0), "\u{2212}2500%");
        assert_eq!(sli_decimals(99.9), 2);
        assert_eq!(sli_decimals(99.95), 3);
        assert_eq!(sli_decimals(95.0), 2);
        assert_eq!(burn(0.0), "0");
        assert_eq!(burn(0.4249), "0.42");
        assert_eq!(burn(14.4), "14.4");
        assert_eq!(burn(1.0), "1");
        assert_eq!(burn(123.4), "123");
        assert_eq!(count(0), "0");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(100), "100");
        assert_eq!(duration(12.0), "12 s");
        assert_eq!(duration(2_592.0), "43.2 min");
        assert_eq!(duration(19_800.0), "5.5 h");
        assert_eq!(duration(277_344.0), "3.21 d");
        assert_eq!(latency(0.00085), "850 µs");
        assert_eq!(latency(0.0123), "12.3 ms");
        assert_eq!(latency(1.24), "1.24 s");
        assert_eq!(quantile_name(0.5), "p50");
        assert_eq!(quantile_name(0.999), "p99.9");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
