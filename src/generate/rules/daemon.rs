//! The `sloxide-self-alerts` group: alerts on the sloxide daemons themselves, read from
//! their own families (`crate::families`).
//!
//! Unlike the SLO alerts, these are per replica: the expressions keep `job`, `instance`
//! and whatever other target labels the scrape job adds, and never name a job, since
//! the job's name is the user's choice. A target is known to be sloxide by the
//! `sloxide_build_info` it serves. Only the checkpoint thresholds depend on the
//! configuration (`state.checkpoint_interval`). `docs/operations.md` ("Alerts on
//! sloxide itself") has what each alert means and what to do.

use std::time::Duration;

use super::Rule;
use crate::config::Config;
use crate::config::duration::format_duration;
use crate::config::slo::AlertSeverity;
use crate::families;
use crate::generate::promql::{Matcher, number, selector};

/// The group's name.
pub(super) const GROUP: &str = "sloxide-self-alerts";

/// A target that served `sloxide_build_info` and can no longer be scraped.
const DOWN: &str = "SloxideDown";
/// No target serves `sloxide_build_info`.
const ABSENT: &str = "SloxideAbsent";
/// `sloxide_series_overflow_total` rising.
const SERIES_OVERFLOW: &str = "SloxideSeriesOverflow";
/// Too large a share of the records received refused one by one.
const RECORDS_REFUSED: &str = "SloxideRecordsRefused";
/// `sloxide_checkpoint_failures_total` rising.
const CHECKPOINT_FAILING: &str = "SloxideCheckpointFailing";
/// No checkpoint written for several intervals.
const CHECKPOINT_STALE: &str = "SloxideCheckpointStale";
/// A configuration reload refused.
const CONFIG_RELOAD_FAILED: &str = "SloxideConfigReloadFailed";

/// How long a target's scrapes fail before `SloxideDown` fires.
const DOWN_HOLD: Duration = Duration::from_secs(5 * 60);
/// How far back `SloxideDown` looks for the target's `sloxide_build_info`: a target
/// that served it within this time is sloxide. One that stays down longer drops out
/// of the alert.
const DOWN_LOOKBACK: Duration = Duration::from_secs(86_400);
/// How long no target serves `sloxide_build_info` before `SloxideAbsent` fires.
const ABSENT_HOLD: Duration = Duration::from_secs(10 * 60);
/// The range of the counters' `rate()` and `increase()`.
const WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long the counter conditions and a refused reload hold before they fire.
const HOLD: Duration = Duration::from_secs(5 * 60);
/// The share of a signal's records refused one by one above which
/// `SloxideRecordsRefused` fires.
const REFUSED_SHARE: f64 = 0.01;
/// `SloxideCheckpointStale`: no checkpoint for this many intervals...
const STALE_INTERVALS: u32 = 4;
/// ...and at least this long, so that a scrape interval of a minute or two cannot make
/// a healthy daemon look late.
const STALE_FLOOR: Duration = Duration::from_secs(5 * 60);
/// Its hold: this many intervals...
const STALE_HOLD_INTERVALS: u32 = 2;
/// ...and at least this long. The hold must outlast the start of a daemon, whose
/// timestamp is 0 until its first checkpoint one interval in.
const STALE_HOLD_FLOOR: Duration = Duration::from_secs(5 * 60);

/// `{{ $labels.instance }}` in an annotation.
const INSTANCE: &str = "{{ $labels.instance }}";

/// The group's alerts for `config`.
pub(super) fn alerts(config: &Config) -> Vec<Rule> {
    vec![
        down(),
        absent(),
        series_overflow(),
        records_refused(Signal::Spans),
        records_refused(Signal::LogRecords),
        checkpoint_failing(config.state.checkpoint_interval),
        checkpoint_stale(config.state.checkpoint_interval),
        config_reload_failed(),
    ]
}

/// `severity` alone: the other labels come from the expression.
fn severity(severity: AlertSeverity) -> Vec<(&'static str, String)> {
    vec![("severity", severity.as_str().to_owned())]
}

fn down() -> Rule {
    let hold = format_duration(DOWN_HOLD);
    let lookback = format_duration(DOWN_LOOKBACK);
    let build_info = families::BUILD_INFO.name;
    Rule {
        alert: DOWN,
        // `up` of any job, kept when the same target (every label but `version`)
        // served sloxide_build_info within the lookback.
        expr: vec![
            "up == 0".to_owned(),
            format!("and ignoring (version) last_over_time({build_info}[{lookback}])"),
        ],
        hold: DOWN_HOLD,
        labels: severity(AlertSeverity::Page),
        annotations: vec![
            ("summary", format!("sloxide {INSTANCE} is down")),
            (
                "description",
                format!(
                    "Prometheus has failed to scrape the sloxide at {INSTANCE} (job {{{{ $labels.job }}}}) for {hold}: up is 0, and the target served {build_info} within the last {lookback}. Its SLO window counts have dropped out of the sums the SLO rules read, so the SLOs of the services it receives are blind or undercounted (SloxideSloNoData may follow), and the OTLP clients that send to it retry or drop their data. Check whether the process runs (a crash loop, an OOM kill: its log and its restarts), whether its metrics port answers (listen.metrics, /healthz), and the scrape error on Prometheus's Targets page (a metrics.auth token, TLS, the network)."
                ),
            ),
        ],
    }
}

fn absent() -> Rule {
    let hold = format_duration(ABSENT_HOLD);
    let build_info = families::BUILD_INFO.name;
    Rule {
        alert: ABSENT,
        expr: vec![format!("absent({build_info})")],
        hold: ABSENT_HOLD,
        labels: severity(AlertSeverity::Page),
        annotations: vec![
            (
                "summary",
                "No sloxide is scraped by this Prometheus".to_owned(),
            ),
            (
                "description",
                format!(
                    "No target of this Prometheus has served {build_info} for {hold}: no sloxide runs, none is scraped (the scrape job, its service discovery or its relabelling lost them), or every scrape of every replica fails. Every SLO alert of the sloxide rules is blind meanwhile. Check that sloxide runs, and that the scrape job lists its replicas and scrapes them (Prometheus's Targets page and its last scrape error)."
                ),
            ),
        ],
    }
}

fn series_overflow() -> Rule {
    let window = format_duration(WINDOW);
    let overflow = families::SERIES_OVERFLOW.name;
    let active = families::SERIES_ACTIVE.name;
    Rule {
        alert: SERIES_OVERFLOW,
        expr: vec![format!("increase({overflow}[{window}]) > 0")],
        hold: HOLD,
        labels: severity(AlertSeverity::Ticket),
        annotations: vec![
            (
                "summary",
                format!(
                    "sloxide {INSTANCE} folds new label sets of {{{{ $labels.family }}}} into overflow series"
                ),
            ),
            (
                "description",
                format!(
                    "sloxide at {INSTANCE} counted about {{{{ $value | humanize }}}} records of {{{{ $labels.family }}}} in an overflow series in the last {window} ({overflow}): the family holds limits.max_series label sets, or a service holds limits.max_series_per_service, so new label sets get no series of their own (their counts stay in the totals, under __overflow__ labels). Compare {active}{{family=\"{{{{ $labels.family }}}}\"}} with the limits and find the label that grows: a dimension or region attribute with unbounded values (a raw URL rather than a route template), or too many services or regions. Drop it from dimensions or fix the sender; raise the limits only if every series is wanted."
                ),
            ),
        ],
    }
}

/// The two OTLP signals whose records can be refused one by one.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Spans,
    LogRecords,
}

fn records_refused(signal: Signal) -> Rule {
    let (label, what, counted_in, accepted, refused, reason) = match signal {
        Signal::Spans => (
            "traces",
            "spans",
            families::SPANS.name,
            families::RECEIVER_ACCEPTED_SPANS.name,
            families::RECEIVER_REFUSED_SPANS.name,
            "invalid_time: an end time before the start time, or a zero start or end time",
        ),
        Signal::LogRecords => (
            "logs",
            "log records",
            families::LOG_RECORDS.name,
            families::RECEIVER_ACCEPTED_LOG_RECORDS.name,
            families::RECEIVER_REFUSED_LOG_RECORDS.name,
            "missing_time: both time_unix_nano and observed_time_unix_nano are 0",
        ),
    };
    let window = format_duration(WINDOW);
    let refused_rate = format!("sum without (transport, reason) (rate({refused}[{window}]))");
    let accepted_rate = format!("sum without (transport) (rate({accepted}[{window}]))");
    let share = "{{ $value | humanizePercentage }}";
    let threshold = format!("{}%", number(REFUSED_SHARE * 100.0));
    Rule {
        alert: RECORDS_REFUSED,
        // refused / (accepted + refused) per replica, both transports together; 0 / 0
        // (no traffic) is NaN, which is not above anything.
        expr: vec![
            refused_rate.clone(),
            "  / (".to_owned(),
            format!("    {accepted_rate}"),
            format!("    + {refused_rate}"),
            "  )".to_owned(),
            format!("  > {}", number(REFUSED_SHARE)),
        ],
        hold: HOLD,
        labels: vec![
            ("signal", label.to_owned()),
            ("severity", AlertSeverity::Ticket.as_str().to_owned()),
        ],
        annotations: vec![
            (
                "summary",
                format!("sloxide {INSTANCE} refuses {share} of the {what} it receives"),
            ),
            (
                "description",
                format!(
                    "Over the last {window} sloxide at {INSTANCE} refused {share} of the {what} it received one by one ({refused} against {accepted}, both transports), above the {threshold} threshold. The reason is {reason}. Refused {what} are not counted, in {counted_in} or in any SLO; the senders are told so in the OTLP partial_success. Find the senders (each rejection is logged at debug level as \"records rejected\") and fix their clocks or their instrumentation."
                ),
            ),
        ],
    }
}

fn checkpoint_failing(interval: Duration) -> Rule {
    let window = format_duration(WINDOW);
    let failures = families::CHECKPOINT_FAILURES.name;
    Rule {
        alert: CHECKPOINT_FAILING,
        expr: vec![format!("increase({failures}[{window}]) > 0")],
        hold: HOLD,
        labels: severity(AlertSeverity::Ticket),
        annotations: vec![
            (
                "summary",
                format!("sloxide {INSTANCE} fails to write checkpoints ({{{{ $labels.reason }}}})"),
            ),
            (
                "description",
                format!(
                    "sloxide at {INSTANCE} failed to write a checkpoint to state.data_dir in the last {window} ({failures}, reason {{{{ $labels.reason }}}}: no_space is a full disk or quota, permission a directory or file it may not write, io another I/O error). It retries every state.checkpoint_interval ({interval}); until a write succeeds, a crash loses the SLO windows counted since the last checkpoint written. Read its log (\"checkpoint not written\") and check the free space, the permissions and the health of the data directory's filesystem.",
                    interval = format_duration(interval),
                ),
            ),
        ],
    }
}

/// `max(intervals * interval, floor)`, rounded up to whole seconds: a PromQL duration
/// has no unit below the millisecond, and whole seconds read better.
fn multiple(interval: Duration, intervals: u32, floor: Duration) -> Duration {
    let scaled = interval.saturating_mul(intervals).max(floor);
    let secs = scaled.as_secs() + u64::from(scaled.subsec_nanos() > 0);
    Duration::from_secs(secs)
}

fn checkpoint_stale(interval: Duration) -> Rule {
    let after = multiple(interval, STALE_INTERVALS, STALE_FLOOR);
    let hold = multiple(interval, STALE_HOLD_INTERVALS, STALE_HOLD_FLOOR);
    let last = families::CHECKPOINT_LAST_SUCCESS.name;
    let outcome = families::RESTORE_OUTCOME.name;
    let disabled = selector(outcome, &[Matcher::Eq("outcome", "disabled")]);
    let after_text = format_duration(after);
    Rule {
        alert: CHECKPOINT_STALE,
        // time() - last > after, written so that the value is the timestamp. A daemon
        // without a data directory serves 0 for ever: it says so in its restore
        // outcome, and is left out.
        expr: vec![
            format!("{last} < time() - {}", number(after.as_secs_f64())),
            format!("unless ignoring (outcome, generation) {disabled}"),
        ],
        hold,
        labels: severity(AlertSeverity::Ticket),
        annotations: vec![
            (
                "summary",
                format!("sloxide {INSTANCE} has written no checkpoint for more than {after_text}"),
            ),
            (
                "description",
                format!(
                    "sloxide at {INSTANCE} has written no checkpoint to state.data_dir for more than {after_text} (the larger of {STALE_INTERVALS} times state.checkpoint_interval, {interval}, and {floor}), held {hold}: {{{{ if eq $value 0.0 }}}}none since it started{{{{ else }}}}the newest at {{{{ $value | humanizeTimestamp }}}}{{{{ end }}}} ({last}). A crash now loses the SLO windows counted since then. See SloxideCheckpointFailing and the log (\"checkpoint not written\"); with no failure counted, a write is hanging: check the data directory's filesystem (a stalled network volume) and {duration}. Daemons without a data directory ({disabled}) are left out.",
                    interval = format_duration(interval),
                    floor = format_duration(STALE_FLOOR),
                    hold = format_duration(hold),
                    duration = families::CHECKPOINT_DURATION.name,
                ),
            ),
        ],
    }
}

fn config_reload_failed() -> Rule {
    let successful = families::CONFIG_RELOAD_SUCCESSFUL.name;
    Rule {
        alert: CONFIG_RELOAD_FAILED,
        expr: vec![format!("{successful} == 0")],
        hold: HOLD,
        labels: severity(AlertSeverity::Ticket),
        annotations: vec![
            (
                "summary",
                format!("sloxide {INSTANCE} refused its last configuration reload"),
            ),
            (
                "description",
                format!(
                    "The last configuration reload of sloxide at {INSTANCE} was refused ({successful} is 0): it keeps running on the configuration it applied before, so the file on disk is not what runs. Its log says why (\"configuration not reloaded\"), with the same file:line:column message as `sloxide check --config FILE`. Fix the file; the next reload that applies (SIGHUP, or the file's next change with --watch-config) turns the gauge back to 1."
                ),
            ),
        ],
    }
}
