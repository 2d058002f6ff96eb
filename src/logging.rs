//! The daemon's own log: which lines (`--log-level`) and in what form (`--log-format`).

use tracing_subscriber::EnvFilter;

/// The levels `--log-level` takes, as an error message names them.
pub const LEVELS: &str = "error, warn, info, debug, trace or off";

/// The filter of `--log-level`: a level, or comma-separated `target=level` directives
/// (`info,sloxide::ingest=debug`). Every directive must end in a known level. A bare
/// word that is not a level would be taken by the filter as a target name, and a typo
/// such as `warning` would silence every line; it is refused instead.
pub fn filter(spec: &str) -> Result<EnvFilter, String> {
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !is_level(level) {
            return Err(format!(
                "unknown log level {level:?} in --log-level {spec:?}; use {LEVELS}, or target=level directives such as sloxide=debug"
            ));
        }
    }
    EnvFilter::try_new(spec).map_err(|e| format!("invalid --log-level {spec:?}: {e}"))
}

fn is_level(word: &str) -> bool {
    ["error", "warn", "info", "debug", "trace", "off"]
        .iter()
        .any(|level| word.eq_ignore_ascii_case(level))
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One line of text per event (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (`message` and the
    /// event's fields), `target`.
    Json,
}

/// Installs the global subscriber: `filter`, in `format`, to standard error.
pub fn init(filter: EnvFilter, format: Format) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Format::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_are_taken_and_typos_refused() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,sloxide::ingest=debug",
            "sloxide=trace",
            "",
        ] {
            assert!(filter(good).is_ok(), "{good}");
        }
        for (bad, word) in [
            ("warning", "warning"),
            ("info,sloxide=verbose", "verbose"),
            ("sloxide", "sloxide"),
        ] {
            let err = filter(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("unknown log level {word:?}"))
                    && err.contains("error, warn, info, debug, trace or off"),
                "{err}"
            );
        }
    }
}
