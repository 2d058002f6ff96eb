//! PromQL text shared by the generators: quoted strings, selectors and numbers.

/// One label matcher of a selector.
#[derive(Debug, Clone, Copy)]
pub(super) enum Matcher<'a> {
    /// `label="value"`.
    Eq(&'a str, &'a str),
    /// `label!="value"`.
    Ne(&'a str, &'a str),
    /// `label=~"regex"`, typically a dashboard variable such as `$slo`.
    Re(&'a str, &'a str),
}

/// `"text"` with Go-style escapes. PromQL string literals, Go template string literals
/// and YAML double-quoted scalars all read JSON's escapes, so one quoting serves the
/// three of them.
pub(super) fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
}

/// `metric{label="value",...}` with every value quoted.
pub(super) fn selector(metric: &str, matchers: &[Matcher<'_>]) -> String {
    let matchers: Vec<String> = matchers
        .iter()
        .map(|matcher| match *matcher {
            Matcher::Eq(label, value) => format!("{label}={}", quote(value)),
            Matcher::Ne(label, value) => format!("{label}!={}", quote(value)),
            Matcher::Re(label, value) => format!("{label}=~{}", quote(value)),
        })
        .collect();
    format!("{metric}{{{}}}", matchers.join(","))
}

/// A number as PromQL reads it, to 6 significant digits with no trailing zeros:
/// `14.4`, `6`, `0.233333`. The rounding hides binary noise such as
/// `14.400000000000002` from `budget_percent / 100 * period / long`.
pub(super) fn number(value: f64) -> String {
    // `{:.5e}` rounds to 6 significant digits; `{}` then prints the shortest form,
    // never in exponent notation.
    let rounded: f64 = format!("{value:.5e}")
        .parse()
        .expect("a formatted float parses back");
    format!("{rounded}")
}
