//! SLO definitions and alert tiers (docs/reference.md, "SLOs"): the serde input types, the checked
//! types, and the validation between them.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_saphyr::{Location, Spanned};

use super::{
    Invalid, Text, TextVisitor, checked, duration_in, format_duration, join_key, not_listed_twice,
};
use crate::otlp::{Severity, SpanKind};

/// The shortest accepted SLO period.
pub const MIN_PERIOD: Duration = Duration::from_secs(3_600);
/// The longest accepted SLO period.
pub const MAX_PERIOD: Duration = Duration::from_secs(90 * 86_400);
/// The period when an SLO names none.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30 * 86_400);
/// The shortest accepted alert window.
pub const MIN_ALERT_WINDOW: Duration = Duration::from_secs(60);
/// The longest accepted alert window.
pub const MAX_ALERT_WINDOW: Duration = MAX_PERIOD;

/// The windows that every SLO reports, besides its alert windows and its period:
/// 5m, 30m, 1h, 2h, 6h, 1d and 3d.
pub const STANDARD_WINDOWS: [Duration; 7] = [
    Duration::from_secs(300),
    Duration::from_secs(1_800),
    Duration::from_secs(3_600),
    Duration::from_secs(7_200),
    Duration::from_secs(21_600),
    Duration::from_secs(86_400),
    Duration::from_secs(3 * 86_400),
];

/// One checked SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// `[a-z0-9_-]+`, unique among the SLOs; the `slo` label.
    pub name: String,
    /// The exact `service.name` it applies to. Non-empty.
    pub service: String,
    /// Free text for people.
    pub description: Option<String>,
    /// The objective in percent, strictly between 0 and 100.
    pub objective: f64,
    /// The rolling budget period, 1h to 90d.
    pub period: Duration,
    /// Whether spans or log records are counted.
    pub source: Source,
    /// Which events count.
    pub filter: Filter,
    /// Which of them are bad.
    pub indicator: Indicator,
}

impl Slo {
    /// The windows this SLO reports, ascending and without repeats: the
    /// [`STANDARD_WINDOWS`], every alert tier's long and short window, and the period.
    pub fn windows(&self, alerting: &Alerting) -> Vec<Duration> {
        let mut windows: Vec<Duration> = STANDARD_WINDOWS
            .iter()
            .copied()
            .chain(
                alerting
                    .tiers()
                    .flat_map(|(_, tier)| [tier.long, tier.short]),
            )
            .chain([self.period])
            .collect();
        windows.sort_unstable();
        windows.dedup();
        windows
    }

    /// One line for `sloxide check`: name, service, source, indicator, objective, period
    /// and each alert tier's burn-rate threshold.
    pub fn summary(&self, alerting: &Alerting) -> String {
        let indicator = match &self.indicator {
            Indicator::Latency {
                threshold,
                attribute: None,
                ..
            } => format!("latency <= {}", format_duration(*threshold)),
            Indicator::Latency {
                threshold,
                attribute: Some(attribute),
                unit,
            } => format!(
                "latency <= {} from {attribute} ({})",
                format_duration(*threshold),
                unit.as_str()
            ),
            Indicator::Availability => "availability".to_owned(),
            Indicator::Events { .. } => "events".to_owned(),
        };
        let tiers: Vec<String> = alerting
            .tiers()
            .map(|(severity, tier)| {
                format!(
                    "{} {}/{} > {:.4}",
                    severity.as_str(),
                    format_duration(tier.long),
                    format_duration(tier.short),
                    tier.threshold(self.period)
                )
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
            })
            .collect();
        format!(
            "{}: service={} source={} indicator={} objective={}% period={} budget={} burn thresholds: {}",
            self.name,
            self.service,
            self.source,
            indicator,
            self.objective,
            format_duration(self.period),
            self.budget_minutes(),
            tiers.join(", ")
        )
    }

    /// The error budget as time: the share of the period that may be bad, in minutes
    /// ("43.2 min / 30d" for 99.9% over 30 days), as if events came evenly.
    pub fn budget_minutes(&self) -> String {
        let budget = crate::slo::math::Budget::from_percent(self.objective);
        let minutes = budget.ratio() * self.period.as_secs_f64() / 60.0;
        let text = format!("{minutes:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text} min / {}", format_duration(self.period))
    }
}

/// What an SLO counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Spans (the default).
    #[default]
    Spans,
    /// Log records.
    Logs,
}

impl Source {
    /// The name as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Spans => "spans",
            Source::Logs => "logs",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The unit of a numeric duration attribute on a log record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurationUnit {
    /// Nanoseconds.
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds (the default).
    #[default]
    Ms,
    /// Seconds.
    S,
}

impl DurationUnit {
    /// Nanoseconds per unit.
    pub fn nanos(self) -> u64 {
        match self {
            DurationUnit::Ns => 1,
            DurationUnit::Us => 1_000,
            DurationUnit::Ms => 1_000_000,
            DurationUnit::S => 1_000_000_000,
        }
    }

    /// The name as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            DurationUnit::Ns => "ns",
            DurationUnit::Us => "us",
            DurationUnit::Ms => "ms",
            DurationUnit::S => "s",
        }
    }
}

impl fmt::Display for DurationUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Attribute conditions: each key with the values it may take, compared as strings.
/// A condition holds when the event's attribute (then the resource's) has one of the
/// values. YAML numbers and booleans are in their canonical text (`200`, `1.5`, `true`).
pub type AttributeMatch = Vec<(String, Vec<String>)>;

/// Which events an SLO counts. Every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Accepted span kinds, without repeats. For spans, default `[server, consumer]`;
    /// always empty for logs.
    pub span_kinds: Vec<SpanKind>,
    /// Accepted span names; empty accepts every name. Always empty for logs.
    pub span_names: Vec<String>,
    /// Attribute conditions, in file order, keys unique.
    pub attributes: AttributeMatch,
}

impl Filter {
    /// The filter of an SLO that names none.
    pub fn default_for(source: Source) -> Filter {
        Filter {
            span_kinds: match source {
                Source::Spans => vec![SpanKind::Server, SpanKind::Consumer],
                Source::Logs => Vec::new(),
            },
            span_names: Vec::new(),
            attributes: Vec::new(),
        }
    }
}

/// How an event is judged good or bad.
#[derive(Debug, Clone, PartialEq)]
pub enum Indicator {
    /// Good when the duration is at most `threshold`.
    Latency {
        /// The largest good duration. Positive.
        threshold: Duration,
        /// For logs, the attribute holding the duration (always set for logs); `None` for
        /// spans, whose duration is end minus start.
        attribute: Option<String>,
        /// The unit of `attribute`'s number. Meaningless when `attribute` is `None`.
        unit: DurationUnit,
    },
    /// Bad on status ERROR, HTTP status >= 500, or gRPC status 2, 4, 12, 13, 14 or 15.
    Availability,
    /// Bad when every condition of `bad` holds.
    Events {
        /// The conditions.
        bad: BadCondition,
    },
}

/// The conditions of an events indicator. At least one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCondition {
    /// Bad when the severity is at least this. Logs only.
    pub severity_at_least: Option<Severity>,
    /// Bad when these attributes match.
    pub attributes: AttributeMatch,
}

/// Alert severity: which tier list a tier comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertSeverity {
    /// Fast burn: wake someone.
    Page,
    /// Slow burn: file a ticket.
    Ticket,
}

impl AlertSeverity {
    /// The `severity` label value: `page` or `ticket`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSeverity::Page => "page",
            AlertSeverity::Ticket => "ticket",
        }
    }
}

impl fmt::Display for AlertSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `alerting`: multiwindow burn-rate tiers, shared by every SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerting {
    /// Page tiers. Default `{1h, 5m, 2%}` and `{6h, 30m, 5%}`.
    pub page: Vec<Tier>,
    /// Ticket tiers. Default `{1d, 2h, 10%}` and `{3d, 6h, 10%}`.
    pub ticket: Vec<Tier>,
    /// A tier holds only when its long window has at least this many events. Default 0.
    pub min_events: u64,
}

impl Alerting {
    /// Every tier with its severity, page tiers first.
    pub fn tiers(&self) -> impl Iterator<Item = (AlertSeverity, &Tier)> {
        let page = self.page.iter().map(|tier| (AlertSeverity::Page, tier));
        let ticket = self.ticket.iter().map(|tier| (AlertSeverity::Ticket, tier));
        page.chain(ticket)
    }
}

impl Default for Alerting {
    fn default() -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3_600);
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            page: vec![
                Tier {
                    long: hours(1),
                    short: minutes(5),
                    budget_percent: 2.0,
                },
                Tier {
                    long: hours(6),
                    short: minutes(30),
                    budget_percent: 5.0,
                },
            ],
            ticket: vec![
                Tier {
                    long: hours(24),
                    short: hours(2),
                    budget_percent: 10.0,
                },
                Tier {
                    long: hours(72),
                    short: hours(6),
                    budget_percent: 10.0,
                },
            ],
            min_events: 0,
        }
    }
}

/// One alert tier: it holds when the burn rates over both windows exceed
/// [`Tier::threshold`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// The long window, 1m to 90d; may exceed an SLO's period.
    pub long: Duration,
    /// The short window, at least 1m and shorter than `long`.
    pub short: Duration,
    /// The share of the period's budget that burning at the threshold for `long` spends,
    /// in percent: `0 < x <= 100`.
    pub budget_percent: f64,
}

impl Tier {
    /// The burn-rate threshold for an SLO with this period:
    /// `budget_percent / 100 * period / long`. For 30d and the default tiers this gives
    /// 14.4, 6, 3 and 1.
    pub fn threshold(&self, period: Duration) -> f64 {
        self.budget_percent / 100.0 * period.as_secs_f64() / self.long.as_secs_f64()
    }
}

/// One SLO as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSlo {
    name: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    objective: Option<Spanned<f64>>,
    period: Option<Spanned<String>>,
    source: Option<Spanned<Source>>,
    filter: Option<Spanned<RawFilter>>,
    indicator: Option<Spanned<RawIndicator>>,
}

/// `filter` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFilter {
    span_kinds: Option<Spanned<Vec<Spanned<SpanKind>>>>,
    span_names: Option<Spanned<Vec<Spanned<String>>>>,
    attributes: Option<RawAttributes>,
}

/// `indicator` as written. Each key is `Some` when present, even with a null value, so
/// that `availability:` with nothing after it still counts as given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIndicator {
    #[serde(deserialize_with = "present")]
    latency: Option<Spanned<Option<RawLatency>>>,
    #[serde(deserialize_with = "present")]
    availability: Option<Spanned<Option<RawAvailability>>>,
    #[serde(deserialize_with = "present")]
    events: Option<Spanned<Option<RawEvents>>>,
}

/// `Some` for a key that is present, whatever its value.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Spanned<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Spanned::<T>::deserialize(deserializer).map(Some)
}

/// `indicator.latency` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLatency {
    threshold: Option<Spanned<String>>,
    attribute: Option<Spanned<String>>,
    unit: Option<Spanned<DurationUnit>>,
}

/// `indicator.availability` as written: an empty mapping.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAvailability {}

/// `indicator.events` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEvents {
    bad: Option<Spanned<RawBad>>,
}

/// `indicator.events.bad` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBad {
    severity_at_least: Option<Spanned<Severity>>,
    attributes: Option<RawAttributes>,
}

/// An `attributes` mapping as written, in file order: key to one value or a list.
#[derive(Debug, Default)]
struct RawAttributes(Vec<(Spanned<String>, Spanned<RawValues>)>);

impl<'de> Deserialize<'de> for RawAttributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;

        impl<'de> de::Visitor<'de> for MapVisitor {
            type Value = RawAttributes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping from attribute key to a value or a list of values")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawAttributes(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor)
    }
}

/// One attribute's accepted values as written.
#[derive(Debug)]
enum RawValues {
    /// A single scalar.
    One(String),
    /// A list of scalars.
    Many(Vec<Spanned<Text>>),
    /// Null, or nothing after the key.
    Null,
}

impl<'de> Deserialize<'de> for RawValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;

        impl<'de> de::Visitor<'de> for ValuesVisitor {
            type Value = RawValues;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<RawValues, E> {
                TextVisitor.visit_bool(value).map(RawValues::One)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawValues, E> {
                TextVisitor.visit_i64(value).map(RawValues::One)
            }
            fn visit_i128<E: de::Error>(self, value: i128) -> Result<RawValues, E> {
                TextVisitor.visit_i128(value).map(RawValues::One)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawValues, E> {
                TextVisitor.visit_u64(value).map(RawValues::One)
            }
            fn visit_u128<E: de::Error>(self, value: u128) -> Result<RawValues, E> {
                TextVisitor.visit_u128(value).map(RawValues::One)
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<RawValues, E> {
                TextVisitor.visit_f64(value).map(RawValues::One)
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawValues, E> {
                Ok(RawValues::One(value.to_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawValues, E> {
                Ok(RawValues::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawValues, E> {
                Ok(RawValues::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawValues, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element()? {
                    values.push(value);
                }
                Ok(RawValues::Many(values))
            }
        }

        deserializer.deserialize_any(ValuesVisitor)
    }
}

/// `alerting` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAlerting {
    page: Option<Vec<Spanned<RawTier>>>,
    ticket: Option<Vec<Spanned<RawTier>>>,
    min_events: Option<Spanned<String>>,
}

/// One tier as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTier {
    long: Option<Spanned<String>>,
    short: Option<Spanned<String>>,
    budget_percent: Option<Spanned<f64>>,
}

/// Validates the SLO list: each SLO on its own, and the names unique.
pub(super) fn validate_slos(
    raw: Vec<Spanned<RawSlo>>,
    max_label_bytes: usize,
) -> Result<Vec<Slo>, Invalid> {
    let mut slos: Vec<Slo> = Vec::with_capacity(raw.len());
    for (
        index,
        Spanned {
            value, referenced, ..
        },
    ) in raw.into_iter().enumerate()
    {
        let slo = value.validate(
            &format!("slos[{index}]"),
            &referenced,
            &slos,
            max_label_bytes,
        )?;
        slos.push(slo);
    }
    Ok(slos)
}

/// The value of a key that must be given, or an error at the enclosing item.
fn required<T>(
    value: Option<Spanned<T>>,
    item: &Location,
    key: &str,
    hint: &str,
) -> Result<Spanned<T>, Invalid> {
    value.ok_or_else(|| Invalid::new(item, key, format!("missing; {hint}")))
}

fn is_slo_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl RawSlo {
    fn validate(
        self,
        key: &str,
        at: &Location,
        earlier: &[Slo],
        max_label_bytes: usize,
    ) -> Result<Slo, Invalid> {
        let RawSlo {
            name,
            service,
            description,
            objective,
            period,
            source,
            filter,
            indicator,
        } = self;
        let field = |name: &str| join_key(key, name);

        let name = required(
            name,
            at,
            &field("name"),
            "every slo needs a name of lowercase letters, digits, `_` and `-`, e.g. checkout-latency",
        )?;
        if !is_slo_name(&name.value) {
            return Err(Invalid::new(
                &name.referenced,
                field("name"),
                format!(
                    "`{}` is not a valid slo name; use only lowercase letters, digits, `_` and `-`, e.g. checkout-latency",
                    name.value
                ),
            ));
        }
        if let Some(first) = earlier.iter().position(|slo| slo.name == name.value) {
            return Err(Invalid::new(
                &name.referenced,
                field("name"),
                format!(
                    "`{}` is already the name of slos[{first}]; slo names must be unique",
                    name.value
                ),
            ));
        }

        let service = required(
            service,
            at,
            &field("service"),
            "every slo needs the service.name it applies to, e.g. service: checkout",
        )?;
        if service.value.is_empty() {
            return Err(Invalid::new(
                &service.referenced,
                field("service"),
                "an empty service is not allowed; give the exact service.name, e.g. checkout",
            ));
        }
        if service.value.len() > max_label_bytes {
            return Err(Invalid::new(
                &service.referenced,
                field("service"),
                format!(
                    "`{}` is {} bytes, longer than limits.max_label_bytes ({max_label_bytes}), so the service label is cut and would never match; raise the limit",
                    service.value,
                    service.value.len()
                ),
            ));
        }

        let objective = required(
            objective,
            at,
            &field("objective"),
            "every slo needs an objective in percent, e.g. objective: 99.9",
        )?;
        if !(objective.value > 0.0 && objective.value < 100.0) {
            return Err(Invalid::new(
                &objective.referenced,
                field("objective"),
                format!(
                    "{} is out of range; an objective is a percentage strictly between 0 and 100, e.g. 99.9",
                    objective.value
                ),
            ));
        }
        if objective.value < 1.0 {
            return Err(Invalid::new(
                &objective.referenced,
                field("objective"),
                format!(
                    "{} is read as {}%, an SLO that can hardly ever burn; objectives are percents: did you mean {}?",
                    objective.value,
                    objective.value,
                    (objective.value * 1e8).round() / 1e6
                ),
            ));
        }
        // The engine keeps an objective's budget to six decimals of a percent
        // (`slo::math::Budget`); more would be rounded away without a word.
        let scaled = objective.value * 1e6;
        if (scaled - scaled.round()).abs() > 1e-3 {
            return Err(Invalid::new(
                &objective.referenced,
                field("objective"),
                format!(
                    "{} has more decimals than sloxide keeps (six decimals of a percent, e.g. 99.999999)",
                    objective.value
                ),
            ));
        }

        let period = checked(period, &field("period"), DEFAULT_PERIOD, |text| {
            let period = super::parse_duration(&text).map_err(|error| error.to_string())?;
            if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
                return Err(format!(
                    "`{text}` is out of range; a period is between {} and {}, e.g. 30d",
                    format_duration(MIN_PERIOD),
                    format_duration(MAX_PERIOD)
                ));
            }
            Ok(period)
        })?;

        let source = source.map_or(Source::default(), |source| source.value);
        let filter = match filter {
            None => Filter::default_for(source),
            Some(filter) => filter.value.validate(&field("filter"), source)?,
        };
        let indicator = validate_indicator(indicator, &field("indicator"), at, source)?;

        Ok(Slo {
            name: name.value,
            service: service.value,
            description: description.map(|description| description.value),
            objective: objective.value,
            period,
            source,
            filter,
            indicator,
        })
    }
}

impl RawFilter {
    fn validate(self, key: &str, source: Source) -> Result<Filter, Invalid> {
        let RawFilter {
            span_kinds,
            span_names,
            attributes,
        } = self;
        let default = Filter::default_for(source);
        let spans_only = |value: &Location, name: &str| {
            Invalid::new(
                value,
                join_key(key, name),
                format!("{name} applies to spans only; remove it from this logs slo"),
            )
        };

        let span_kinds = match (span_kinds, source) {
            (None, _) => default.span_kinds,
            (Some(kinds), Source::Logs) => return Err(spans_only(&kinds.referenced, "span_kinds")),
            (
                Some(Spanned {
                    value: kinds,
                    referenced,
                    ..
                }),
                Source::Spans,
            ) => {
                let key = join_key(key, "span_kinds");
                if kinds.is_empty() {
                    return Err(Invalid::new(
                        &referenced,
                        key,
                        "an empty list matches no span; list the kinds to count, or leave span_kinds out for [server, consumer]",
                    ));
                }
                let mut checked: Vec<SpanKind> = Vec::with_capacity(kinds.len());
                for (index, kind) in kinds.into_iter().enumerate() {
                    not_listed_twice(&checked, &kind.value, &kind.referenced, || {
                        format!("{key}[{index}]")
                    })?;
                    checked.push(kind.value);
                }
                checked
            }
        };

        let span_names = match (span_names, source) {
            (None, _) => default.span_names,
            (Some(names), Source::Logs) => return Err(spans_only(&names.referenced, "span_names")),
            (
                Some(Spanned {
                    value: names,
                    referenced,
                    ..
                }),
                Source::Spans,
            ) => {
                let key = join_key(key, "span_names");
                if names.is_empty() {
                    return Err(Invalid::new(
                        &referenced,
                        key,
                        "an empty list matches no span; list the span names to count, or leave span_names out to count every name",
                    ));
                }
                let mut checked: Vec<String> = Vec::with_capacity(names.len());
                for (index, name) in names.into_iter().enumerate() {
                    not_listed_twice(&checked, &name.value, &name.referenced, || {
                        format!("{key}[{index}]")
                    })?;
                    checked.push(name.value);
                }
                checked
            }
        };

        let attributes = match attributes {
            None => default.attributes,
            Some(attributes) => attributes.validate(&join_key(key, "attributes"))?,
        };

        Ok(Filter {
            span_kinds,
            span_names,
            attributes,
        })
    }
}

impl RawAttributes {
    fn validate(self, key: &str) -> Result<AttributeMatch, Invalid> {
        let RawAttributes(entries) = self;
        let mut checked: AttributeMatch = Vec::with_capacity(entries.len());
        for (name, values) in entries {
            let Spanned {
                value: name,
                referenced: name_at,
                ..
            } = name;
            let key = join_key(key, &name);
            if name.is_empty() {
                return Err(Invalid::new(
                    &name_at,
                    key,
                    "an empty attribute key is not allowed; give one such as http.route",
                ));
            }
            let no_value = || {
                Invalid::new(
                    &values.referenced,
                    key.clone(),
                    format!("`{name}` has no value; give a value or a list of accepted values"),
                )
            };
            let values = match values.value {
                RawValues::Null => return Err(no_value()),
                RawValues::Many(ref list) if list.is_empty() => return Err(no_value()),
                RawValues::One(value) => vec![value],
                RawValues::Many(list) => {
                    let mut values: Vec<String> = Vec::with_capacity(list.len());
                    for (index, value) in list.into_iter().enumerate() {
                        let Spanned {
                            value: Text(value),
                            referenced,
                            ..
                        } = value;
                        not_listed_twice(&values, &value, &referenced, || {
                            format!("{key}[{index}]")
                        })?;
                        values.push(value);
                    }
                    values
                }
            };
            checked.push((name, values));
        }
        Ok(checked)
    }
}

fn validate_indicator(
    indicator: Option<Spanned<RawIndicator>>,
    key: &str,
    slo_at: &Location,
    source: Source,
) -> Result<Indicator, Invalid> {
    const ONE_OF: &str = "give exactly one of latency, availability or events";
    let Some(Spanned {
        value: indicator,
        referenced: at,
        ..
    }) = indicator
    else {
        return Err(Invalid::new(slo_at, key, format!("missing; {ONE_OF}")));
    };
    let RawIndicator {
        latency,
        availability,
        events,
    } = indicator;
    let given: Vec<&str> = [
        latency.is_some().then_some("`latency`"),
        availability.is_some().then_some("`availability`"),
        events.is_some().then_some("`events`"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match (latency, availability, events) {
        (Some(latency), None, None) => validate_latency(latency, &join_key(key, "latency"), source),
        (None, Some(_), None) => Ok(Indicator::Availability),
        (None, None, Some(events)) => validate_events(events, &join_key(key, "events"), source),
        (None, None, None) => Err(Invalid::new(
            &at,
            key,
            format!("no indicator given; {ONE_OF}"),
        )),
        _ => {
            let (last, rest) = given.split_last().unwrap_or((&"", &[]));
            let both = if rest.len() == 1 { "both" } else { "all" };
            Err(Invalid::new(
                &at,
                key,
                format!("{} and {last} are {both} given; {ONE_OF}", rest.join(", ")),
            ))
        }
    }
}

fn validate_latency(
    latency: Spanned<Option<RawLatency>>,
    key: &str,
    source: Source,
) -> Result<Indicator, Invalid> {
    let Spanned {
        value: latency,
        referenced: at,
        ..
    } = latency;
    let RawLatency {
        threshold,
        attribute,
        unit,
    } = latency.unwrap_or_default();

    let threshold = required(
        threshold,
        &at,
        &join_key(key, "threshold"),
        "a latency indicator needs a threshold, e.g. threshold: 300ms",
    )?;
    let threshold = duration_in(
        Some(threshold),
        &join_key(key, "threshold"),
        Duration::ZERO,
        Duration::from_nanos(1),
        None,
    )?;

    let (attribute, unit) = match source {
        Source::Spans => {
            let logs_only = |value: &Location, name: &str| {
                Invalid::new(
                    value,
                    join_key(key, name),
                    format!(
                        "{name} applies to logs slos only; a span's latency is its own duration, so remove it"
                    ),
                )
            };
            if let Some(attribute) = attribute {
                return Err(logs_only(&attribute.referenced, "attribute"));
            }
            if let Some(unit) = unit {
                return Err(logs_only(&unit.referenced, "unit"));
            }
            (None, DurationUnit::default())
        }
        Source::Logs => {
            let attribute = required(
                attribute,
                &at,
                &join_key(key, "attribute"),
                "a latency indicator on a logs slo needs the attribute that holds the duration, e.g. attribute: provisioning.duration_ms",
            )?;
            if attribute.value.is_empty() {
                return Err(Invalid::new(
                    &attribute.referenced,
                    join_key(key, "attribute"),
                    "an empty attribute key is not allowed; give one such as provisioning.duration_ms",
                ));
            }
            (
                Some(attribute.value),
                unit.map_or(DurationUnit::default(), |unit| unit.value),
            )
        }
    };
    Ok(Indicator::Latency {
        threshold,
        attribute,
        unit,
    })
}

fn validate_events(
    events: Spanned<Option<RawEvents>>,
    key: &str,
    source: Source,
) -> Result<Indicator, Invalid> {
    const CONDITIONS: &str = "give at least one of severity_at_least or attributes";
    let Spanned {
        value: events,
        referenced: at,
        ..
    } = events;
    let RawEvents { bad } = events.unwrap_or_default();
    let key = join_key(key, "bad");
    let bad = required(
        bad,
        &at,
        &key,
        "an events indicator needs the conditions that make an event bad, e.g. bad: {severity_at_least: error}",
    )?;
    let Spanned {
        value: RawBad {
            severity_at_least,
            attributes,
        },
        referenced: bad_at,
        ..
    } = bad;
    let severity_at_least = match (severity_at_least, source) {
        (None, _) => None,
        (Some(severity), Source::Logs) => Some(severity.value),
        (Some(severity), Source::Spans) => {
            return Err(Invalid::new(
                &severity.referenced,
                join_key(&key, "severity_at_least"),
                "severity_at_least applies to logs slos only; spans have no severity, so use attributes",
            ));
        }
    };
    let attributes = match attributes {
        None => Vec::new(),
        Some(attributes) => attributes.validate(&join_key(&key, "attributes"))?,
    };
    if severity_at_least.is_none() && attributes.is_empty() {
        return Err(Invalid::new(
            &bad_at,
            key,
            format!("no condition given; {CONDITIONS}"),
        ));
    }
    Ok(Indicator::Events {
        bad: BadCondition {
            severity_at_least,
            attributes,
        },
    })
}

impl RawAlerting {
    pub(super) fn validate(self) -> Result<Alerting, Invalid> {
        let RawAlerting {
            page,
            ticket,
            min_events,
        } = self;
        let default = Alerting::default();
        Ok(Alerting {
            page: match page {
                None => default.page,
                Some(tiers) => validate_tiers(tiers, "alerting.page")?,
            },
            ticket: match ticket {
                None => default.ticket,
                Some(tiers) => validate_tiers(tiers, "alerting.ticket")?,
            },
            min_events: checked(
                min_events,
                "alerting.min_events",
                default.min_events,
                |text| super::parse_count(&text),
            )?,
        })
    }
}

fn validate_tiers(tiers: Vec<Spanned<RawTier>>, key: &str) -> Result<Vec<Tier>, Invalid> {
    tiers
        .into_iter()
        .enumerate()
        .map(|(index, tier)| {
            tier.value
                .validate(&format!("{key}[{index}]"), &tier.referenced)
        })
        .collect()
}

impl RawTier {
    fn validate(self, key: &str, at: &Location) -> Result<Tier, Invalid> {
        const HINT: &str = "a tier needs long, short and budget_percent, e.g. {long: 1h, short: 5m, budget_percent: 2}";
        let RawTier {
            long,
            short,
            budget_percent,
        } = self;
        let window = |value: Option<Spanned<String>>, name: &str| {
            let key = join_key(key, name);
            let value = required(value, at, &key, HINT)?;
            let location = value.referenced;
            let window = duration_in(
                Some(value),
                &key,
                Duration::ZERO,
                MIN_ALERT_WINDOW,
                Some(MAX_ALERT_WINDOW),
            )?;
            Ok::<_, Invalid>((window, location))
        };
        let (long, _) = window(long, "long")?;
        let (short, short_at) = window(short, "short")?;
        if short >= long {
            return Err(Invalid::new(
                &short_at,
                join_key(key, "short"),
                format!(
                    "{} is not shorter than long ({}); the short window confirms that a burn is still going on, so make it shorter, e.g. long / 12",
                    format_duration(short),
                    format_duration(long)
                ),
            ));
        }
        let budget_percent = required(budget_percent, at, &join_key(key, "budget_percent"), HINT)?;
        if !(budget_percent.value > 0.0 && budget_percent.value <= 100.0) {
            return Err(Invalid::new(
                &budget_percent.referenced,
                join_key(key, "budget_percent"),
                format!(
                    "{} is out of range; budget_percent is above 0 and at most 100, e.g. 2",
                    budget_percent.value
                ),
            ));
        }
        Ok(Tier {
            long,
            short,
            budget_percent: budget_percent.value,
        })
    }
}
