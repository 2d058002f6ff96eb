//! `GET /slo/{name}`: one SLO. Its roll-up figures, the budget burn-down over its
//! period (an SVG line from the tick's per-slot history), its burn rates as bars
//! against each alert tier's threshold, every window and region in tables, and the
//! service's latency quantiles per region from the quantile series the tick computed.

use std::fmt::Write;

use super::html::{self, Out};
use super::list::{budget, time_left};
use super::{Health, Model, SloView, head, tail};
use crate::aggregate::Aggregator;
use crate::config::duration::format_duration;
use crate::config::slo::{AlertSeverity, Indicator, Slo, Source};
use crate::slo::{Burndown, Row};

/// The quantiles of one (region, span kind) of the SLO's service, over the last
/// complete minute.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Latency {
    pub region: Box<str>,
    pub kind: Box<str>,
    /// In the configured order; empty when the minute had no span.
    pub quantiles: Vec<f64>,
    /// Spans counted since the series began.
    pub count: u64,
}

/// The quantile series of `slo`'s service, of the span kinds it counts (every kind for
/// a log-based SLO), by region then kind. Copies what the tick computed, one shard lock
/// at a time, as a scrape does.
pub(super) fn latency_of(agg: &Aggregator, slo: &Slo) -> Vec<Latency> {
    let kinds: Vec<&str> = match slo.source {
        Source::Spans => slo.filter.span_kinds.iter().map(|k| k.as_str()).collect(),
        Source::Logs => Vec::new(),
    };
    let mut out = Vec::new();
    agg.durations().for_each(|e| {
        let labels = &e.labels;
        if labels.len() < 3 || labels[0] != *slo.service {
            return;
        }
        if !kinds.is_empty() && !kinds.contains(&&labels[2]) {
            return;
        }
        out.push(Latency {
            region: labels[1].into(),
            kind: labels[2].into(),
            quantiles: e.value.quantiles.clone(),
            count: e.value.count,
        });
    });
    out.sort_by(|a, b| (&a.region, &a.kind).cmp(&(&b.region, &b.kind)));
    out
}

/// The page for a name no SLO has.
pub(super) fn not_found(name: &str, out: &mut String) {
    let mut o = Out { s: out };
    head(&mut o, "No such SLO · sloxide");
    o.raw("<nav><a href=\"..\">\u{2190} All SLOs</a></nav><h1 data-k=\"not-found\">No SLO named \u{201C}")
        .text(name)
        .raw("\u{201D}</h1><p class=\"meta\">The configuration in force has no SLO of that name; it may have been renamed or removed by a reload.</p>");
    tail(&mut o);
}

/// Writes the page of SLO `i`.
pub(super) fn write(m: &Model<'_>, i: usize, latency: &[Latency], out: &mut String) {
    let v = m.view(i);
    let name = &*v.slo.name;
    let mut o = Out { s: out };
    let mut title = String::from(name);
    title.push_str(" · SLO · sloxide");
    head(&mut o, &title);
    let rollup = v.rollup();
    let state = rollup.map_or(Health::NoData, |r| v.state(r));
    o.raw("<nav><a href=\"..\">\u{2190} All SLOs</a></nav><header data-slo=\"")
        .text(name)
        .raw("\"><h1>")
        .text(name)
        .fmt(format_args!(
            " <span class=\"chip {}\" data-k=\"state\" data-v=\"{}\">{}</span></h1>",
            state.class(),
            state.label(),
            state.label()
        ));
    if let Some(d) = &v.slo.description {
        o.raw("<p class=\"meta\">").text(d).raw("</p>");
    }
    o.raw("</header>");
    facts(&mut o, m, &v);
    match rollup {
        Some(r) => cards(&mut o, &v, r),
        None => {
            o.raw("<p>No values yet: the first tick has not run.</p>");
        }
    }
    o.raw("<h2>Error budget burn-down</h2>");
    match (m.snapshot.burndown.get(i), rollup) {
        (Some(b), Some(r)) if !b.bad.is_empty() => {
            let total = r.windows.get(v.period).map_or(0, |w| w.0);
            burndown(&mut o, &v, b, total, m.snapshot.at)
        }
        _ => {
            o.raw("<p class=\"mut\">No history yet.</p>");
        }
    }
    if let Some(r) = rollup {
        o.raw("<h2>Burn rate against the alert tiers</h2>");
        tiers(&mut o, m, &v, r);
        o.raw("<h2>Windows</h2>");
        windows(&mut o, &v, r);
    }
    o.raw("<h2>Regions</h2>");
    regions(&mut o, &v);
    o.raw("<h2>Latency by region</h2>");
    latency_table(&mut o, m, &v, latency);
    tail(&mut o);
}

fn facts(o: &mut Out<'_>, m: &Model<'_>, v: &SloView<'_>) {
    let slo = v.slo;
    o.raw("<dl class=\"facts\"><dt>Service</dt><dd data-k=\"service\">")
        .text(&slo.service)
        .raw("</dd><dt>Objective</dt><dd>")
        .raw(&html::objective(slo.objective))
        .raw(" of ")
        .raw(slo.source.as_str())
        .raw(" over a rolling ")
        .raw(&format_duration(slo.period))
        .raw("; error budget ")
        .raw(&html::duration(v.budget_secs()))
        .raw(" per period at an even event rate</dd><dt>Indicator</dt><dd>");
    match &slo.indicator {
        Indicator::Latency {
            threshold,
            attribute,
            ..
        } => {
            o.raw("latency at most ").raw(&format_duration(*threshold));
            if let Some(a) = attribute {
                o.raw(" (from ").text(a).raw(")");
            }
        }
        Indicator::Availability => {
            o.raw("availability (bad: status ERROR, HTTP 5xx, gRPC server errors)");
        }
        Indicator::Events { .. } => {
            o.raw("events (bad by condition)");
        }
    };
    if !slo.filter.span_kinds.is_empty() {
        o.raw("; span kinds ");
        let kinds: Vec<&str> = slo.filter.span_kinds.iter().map(|k| k.as_str()).collect();
        o.raw(&kinds.join(", "));
    }
    o.raw("</dd><dt>Alert tiers</dt><dd>");
    let tiers: Vec<String> = m
        .config
        .alerting
        .tiers()
        .map(|(severity, t)| {
            format!(
                "{} {}/{} &gt; {}",
                severity.as_str(),
                format_duration(t.long),
                format_duration(t.short),
                html::burn(t.threshold(slo.period))
            )
        })
        .collect();
    o.raw(&tiers.join(" · "));
    o.raw("</dd>");
    if m.snapshot.at > 0 {
        o.raw("<dt>As of</dt><dd>")
            .raw(&html::utc(m.snapshot.at))
            .raw("</dd>");
    }
    o.raw("</dl>");
}

fn cards(o: &mut Out<'_>, v: &SloView<'_>, r: &Row) {
    let (events, bad) = r.windows.get(v.period).copied().unwrap_or((0, 0));
    let period = format_duration(v.slo.period);
    o.raw("<div class=\"cards\"><div class=\"card\"><small>SLI over ")
        .raw(&period)
        .raw("</small><div class=\"v num\" data-k=\"sli\" data-v=\"");
    match r.sli.get(v.period).copied().flatten() {
        Some(s) => o
            .exact(s)
            .raw("\">")
            .raw(&html::percent_floor(s, html::sli_decimals(v.slo.objective))),
        None => o.raw("\">–"),
    };
    o.raw("</div><small>objective ")
        .raw(&html::objective(v.slo.objective))
        .raw("</small></div><div class=\"card\"><small>Error budget left</small><div class=\"v\">");
    budget(o, v, r);
    o.raw("</div></div><div class=\"card\"><small>Events over ")
        .raw(&period)
        .fmt(format_args!(
            "</small><div class=\"v num\" data-k=\"events\" data-v=\"{events}\">{}</div><small data-k=\"bad\" data-v=\"{bad}\">{} bad</small></div>",
            html::count(events),
            html::count(bad)
        ));
    o.raw("<div class=\"card\"><small>Budget lasts, at the 1h burn rate</small><div class=\"v num\" data-k=\"exhaustion\" data-v=\"");
    match r.exhaustion {
        Some(s) if s <= 0.0 => o.exact(s).raw("\">spent"),
        Some(s) => o.exact(s).raw("\">").raw(&html::duration(s)),
        None => o.raw("\">\u{221E}"),
    };
    o.raw("</div><small>")
        .raw(&time_left(v, r))
        .raw("</small></div><div class=\"card\"><small>Alerts (roll-up)</small><div>");
    for severity in [AlertSeverity::Page, AlertSeverity::Ticket] {
        let firing = r.alert[severity as usize];
        let class = match (firing, severity) {
            (false, _) => "ok",
            (true, AlertSeverity::Page) => "pg",
            (true, AlertSeverity::Ticket) => "tk",
        };
        o.fmt(format_args!(
            "<div>{}: <span class=\"chip {class}\" data-k=\"alert-{}\" data-v=\"{}\">{}</span></div>",
            severity.as_str(),
            severity.as_str(),
            u8::from(firing),
            if firing { "firing" } else { "ok" }
        ));
    }
    o.raw("</div></div></div>");
}

/// A time step that cuts `span` seconds into at most six parts.
fn tick_step(span: u64) -> u64 {
    const STEPS: [u64; 15] = [
        60, 300, 600, 1_800, 3_600, 7_200, 10_800, 21_600, 43_200, 86_400, 172_800, 432_000,
        604_800, 864_000, 1_296_000,
    ];
    STEPS
        .into_iter()
        .find(|s| span / s <= 6)
        .unwrap_or(2_592_000)
}

/// The burn-down: the budget left at each slot boundary of the period window, from
/// 100% at its start to the roll-up's value now, against an even burn (rate 1), with
/// the bad events of each slot beneath.
fn burndown(o: &mut Out<'_>, v: &SloView<'_>, b: &Burndown, total: u64, at: u64) {
    const W: f64 = 760.0;
    const H: f64 = 280.0;
    const X0: f64 = 52.0;
    const X1: f64 = W - 14.0;
    const Y0: f64 = 10.0;
    const Y1: f64 = 196.0;
    const S0: f64 = 208.0;
    const S1: f64 = 252.0;
    let mut points = Vec::with_capacity(b.bad.len() + 1);
    let mut cumulative = 0u64;
    points.push((b.start, 1.0));
    for (k, bad) in b.bad.iter().enumerate() {
        cumulative = cumulative.saturating_add(*bad);
        let t = if k + 1 == b.bad.len() {
            at.max(b.start)
        } else {
            b.start + (k as u64 + 1) * b.step
        };
        points.push((
            t,
            crate::slo::math::budget_remaining(total, cumulative, v.rt.budget),
        ));
    }
    let last = points.last().map_or(1.0, |p| p.1);
    let end = points.last().map_or(b.start + 1, |p| p.0).max(b.start + 1);
    let lowest = points.iter().map(|p| p.1).fold(0.0f64, f64::min).max(-4.0);
    let y_min = (lowest * 4.0).floor() / 4.0;
    let x = |t: u64| X0 + (t.saturating_sub(b.start)) as f64 / (end - b.start) as f64 * (X1 - X0);
    let y = |v: f64| Y0 + (1.0 - v.max(y_min)) / (1.0 - y_min) * (Y1 - Y0);
    o.fmt(format_args!(
        "<p class=\"legend\">Budget left over the {} window as its events came in: 100% at its start, {} now (the roll-up's value). The dashed line spends the budget evenly (burn rate 1); below it, the budget went faster. Bars: bad events per {}.</p>",
        format_duration(v.slo.period),
        html::percent(last),
        format_duration(std::time::Duration::from_secs(b.step)),
    ));
    o.fmt(format_args!(
        "<svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"error budget burn-down\" data-k=\"burndown\" data-points=\"{}\" data-last=\"",
        points.len()
    ))
    .exact(last)
    .raw("\">");
    // Grid and value labels.
    let range = 1.0 - y_min;
    let step = if range <= 1.5 {
        0.25
    } else if range <= 3.0 {
        0.5
    } else {
        1.0
    };
    let mut g = 1.0;
    while g >= y_min - 1e-9 {
        let yy = y(g);
        let class = if g.abs() < 1e-9 { "zero" } else { "grid" };
        o.fmt(format_args!(
            "<line class=\"{class}\" x1=\"{X0}\" x2=\"{X1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            X0 - 6.0,
            yy + 4.0,
            html::percent(g).replace(".0%", "%")
        ));
        g -= step;
    }
    if y_min < 0.0 {
        o.fmt(format_args!(
            "<rect class=\"under\" x=\"{X0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>",
            y(0.0),
            X1 - X0,
            Y1 - y(0.0)
        ));
    }
    // Time labels, back from now.
    let span = end - b.start;
    let tick = tick_step(span);
    let mut back = 0;
    while back <= span {
        let xx = x(end - back);
        let label = if back == 0 {
            "now".to_owned()
        } else {
            format!(
                "\u{2212}{}",
                format_duration(std::time::Duration::from_secs(back))
            )
        };
        o.fmt(format_args!(
            "<line class=\"grid\" x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{Y1}\" y2=\"{}\"/><text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            Y1 + 4.0,
            H - 8.0
        ));
        back += tick;
    }
    // The even burn, the area and the line.
    let even_end = 1.0 - span as f64 / v.rt.period_secs.max(1.0);
    o.fmt(format_args!(
        "<line class=\"even\" x1=\"{X0}\" y1=\"{:.1}\" x2=\"{X1}\" y2=\"{:.1}\"/>",
        y(1.0),
        y(even_end)
    ));
    let mut line = String::new();
    for (k, (t, val)) in points.iter().enumerate() {
        let _ = write!(
            line,
            "{}{:.1} {:.1}",
            if k == 0 { "M" } else { " L" },
            x(*t),
            y(*val)
        );
    }
    o.fmt(format_args!(
        "<path class=\"area\" d=\"{line} L{X1:.1} {:.1} L{X0:.1} {:.1} Z\"/><path class=\"line\" d=\"{line}\"/>",
        y(0.0),
        y(0.0)
    ));
    for (t, val) in &points {
        o.fmt(format_args!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{}: {} left</title></circle>",
            x(*t),
            y(*val),
            html::utc(*t),
            html::percent(*val)
        ));
    }
    // Bad events per slot.
    let most = b.bad.iter().copied().max().unwrap_or(0).max(1);
    o.fmt(format_args!(
        "<line class=\"grid\" x1=\"{X0}\" x2=\"{X1}\" y1=\"{S1}\" y2=\"{S1}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">bad</text>",
        X0 - 6.0,
        S1 - 2.0
    ));
    for (k, &bad) in b.bad.iter().enumerate() {
        if bad == 0 {
            continue;
        }
        let from = b.start + k as u64 * b.step;
        let to = (from + b.step).min(end);
        let h = (bad as f64 / most as f64 * (S1 - S0)).max(1.0);
        o.fmt(format_args!(
            "<rect class=\"badbar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{} bad from {}</title></rect>",
            x(from),
            S1 - h,
            (x(to) - x(from) - 1.0).max(1.5),
            html::count(bad),
            html::utc(from),
        ));
    }
    o.raw("</svg>");
}

/// Each tier's long and short burn rates as bars, with the threshold marked.
fn tiers(o: &mut Out<'_>, m: &Model<'_>, v: &SloView<'_>, r: &Row) {
    const W: f64 = 760.0;
    const LABEL: f64 = 190.0;
    const BAR_END: f64 = W - 70.0;
    let tiers: Vec<_> = m.config.alerting.tiers().collect();
    let height = tiers.len() as f64 * 62.0 + 8.0;
    o.raw("<p class=\"legend\">A tier holds when the burn rate over both its windows is above its threshold (the black mark). Bars are scaled per tier.</p>");
    o.fmt(format_args!(
        "<svg viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\" role=\"img\" aria-label=\"burn rates against the alert tiers\">"
    ));
    for (n, (severity, tier)) in tiers.iter().enumerate() {
        let threshold = tier.threshold(v.slo.period);
        let top = n as f64 * 62.0 + 8.0;
        let bars = [tier.long, tier.short].map(|w| {
            let burn = v
                .window(w)
                .and_then(|i| r.burn.get(i).copied())
                .unwrap_or(0.0);
            (w, burn)
        });
        let holds = bars.iter().all(|(_, b)| *b > threshold);
        let fires = r.alert[*severity as usize] && holds;
        let scale = bars
            .iter()
            .map(|(_, b)| *b)
            .fold(threshold * 2.0, f64::max)
            .max(1e-9)
            * 1.05;
        let sx = |b: f64| LABEL + (b / scale).clamp(0.0, 1.0) * (BAR_END - LABEL);
        let class = match severity {
            AlertSeverity::Page => "pg",
            AlertSeverity::Ticket => "tk",
        };
        o.fmt(format_args!(
            "<g data-k=\"tier\" data-severity=\"{}\" data-long=\"{}\" data-short=\"{}\" data-threshold=\"",
            severity.as_str(),
            format_duration(tier.long),
            format_duration(tier.short)
        ))
        .exact(threshold)
        .fmt(format_args!(
            "\" data-holds=\"{}\"><text x=\"0\" y=\"{:.1}\" style=\"font-weight:600\">{} {}/{}{}</text><text x=\"0\" y=\"{:.1}\">threshold {}\u{D7}</text>",
            u8::from(holds),
            top + 14.0,
            severity.as_str(),
            format_duration(tier.long),
            format_duration(tier.short),
            if fires { " \u{2014} firing" } else { "" },
            top + 30.0,
            html::burn(threshold)
        ));
        for (k, (w, burn)) in bars.iter().enumerate() {
            let y = top + k as f64 * 24.0;
            let fill = if *burn > threshold { class } else { "" };
            o.fmt(format_args!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"track\" x=\"{LABEL}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"16\" rx=\"3\"/><rect class=\"fill {fill}\" x=\"{LABEL}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"16\" rx=\"3\" data-w=\"{}\" data-v=\"",
                LABEL - 8.0,
                y + 12.0,
                format_duration(*w),
                BAR_END - LABEL,
                sx(*burn) - LABEL,
                format_duration(*w),
            ))
            .exact(*burn)
            .fmt(format_args!(
                "\"><title>burn rate over {}: {}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">{}\u{D7}</text>",
                format_duration(*w),
                html::burn(*burn),
                BAR_END + 6.0,
                y + 12.0,
                html::burn(*burn)
            ));
        }
        let tx = sx(threshold);
        o.fmt(format_args!(
            "<line class=\"thr\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/></g>",
            top - 3.0,
            top + 43.0
        ));
    }
    o.raw("</svg>");
}

fn windows(o: &mut Out<'_>, v: &SloView<'_>, r: &Row) {
    o.raw("<div class=\"wrap\"><table class=\"d\"><thead><tr><th>Window</th><th class=\"num\">Events</th><th class=\"num\">Bad</th><th class=\"num\">SLI</th><th class=\"num\">Burn rate</th></tr></thead><tbody>");
    let decimals = html::sli_decimals(v.slo.objective);
    for (i, label) in v.rt.window_labels.iter().enumerate() {
        let (events, bad) = r.windows.get(i).copied().unwrap_or((0, 0));
        let burn = r.burn.get(i).copied().unwrap_or(0.0);
        o.raw("<tr data-window=\"")
            .text(label)
            .raw("\"><td>")
            .text(label);
        if i == v.period {
            o.raw(" <small>(period)</small>");
        }
        o.fmt(format_args!(
            "</td><td class=\"num\" data-k=\"events\" data-v=\"{events}\">{}</td><td class=\"num\" data-k=\"bad\" data-v=\"{bad}\">{}</td><td class=\"num\" data-k=\"sli\" data-v=\"",
            html::count(events),
            html::count(bad)
        ));
        match r.sli.get(i).copied().flatten() {
            Some(s) => o.exact(s).raw("\">").raw(&html::percent_floor(s, decimals)),
            None => o.raw("\">–"),
        };
        o.raw("</td><td class=\"num\" data-k=\"burn\" data-v=\"")
            .exact(burn)
            .raw("\">")
            .raw(&html::burn(burn))
            .raw("</td></tr>");
    }
    o.raw("</tbody></table></div>");
}

fn regions(o: &mut Out<'_>, v: &SloView<'_>) {
    let regions = v.regions();
    if regions.is_empty() {
        o.raw("<p class=\"mut\">No region has reported an event of this SLO in its period.</p>");
        return;
    }
    o.raw("<div class=\"wrap\"><table class=\"d\"><thead><tr><th>Region</th><th>State</th><th class=\"num\">SLI</th><th>Budget left</th>");
    for label in &v.rt.window_labels {
        o.raw("<th class=\"num\">burn<br>").text(label).raw("</th>");
    }
    o.raw("<th class=\"num\">Events<br>(period)</th><th class=\"num\">Events<br>(total)</th><th class=\"num\">Bad<br>(total)</th></tr></thead><tbody>");
    let decimals = html::sli_decimals(v.slo.objective);
    for r in regions {
        let state = v.state(r);
        o.raw("<tr data-region=\"")
            .text(r.region.as_deref().unwrap_or(""))
            .raw("\"><td>")
            .text(r.region.as_deref().unwrap_or(""))
            .fmt(format_args!(
                "</td><td><span class=\"chip {}\" data-k=\"state\" data-v=\"{}\">{}</span></td><td class=\"num\" data-k=\"sli\" data-v=\"",
                state.class(),
                state.label(),
                state.label()
            ));
        match r.sli.get(v.period).copied().flatten() {
            Some(s) => o.exact(s).raw("\">").raw(&html::percent_floor(s, decimals)),
            None => o.raw("\">–"),
        };
        o.raw("</td><td class=\"bc\">");
        budget(o, v, r);
        o.raw("</td>");
        for (i, label) in v.rt.window_labels.iter().enumerate() {
            let burn = r.burn.get(i).copied().unwrap_or(0.0);
            o.raw("<td class=\"num\" data-k=\"burn-")
                .text(label)
                .raw("\" data-v=\"")
                .exact(burn)
                .raw("\">")
                .raw(&html::burn(burn))
                .raw("</td>");
        }
        let (events, bad) = r.windows.get(v.period).copied().unwrap_or((0, 0));
        o.fmt(format_args!(
            "<td class=\"num\" data-k=\"events\" data-v=\"{events}\">{}<br><small data-k=\"bad\" data-v=\"{bad}\">{} bad</small></td><td class=\"num\" data-k=\"events-total\" data-v=\"{}\">{}</td><td class=\"num\" data-k=\"bad-total\" data-v=\"{}\">{}</td></tr>",
            html::count(events),
            html::count(bad),
            r.events,
            html::count(r.events),
            r.bad,
            html::count(r.bad)
        ));
    }
    o.raw("</tbody></table></div>");
}

fn latency_table(o: &mut Out<'_>, m: &Model<'_>, v: &SloView<'_>, rows: &[Latency]) {
    let quantiles = &m.config.histogram.quantiles;
    o.raw("<p class=\"legend\">Span durations of service <b>")
        .text(&v.slo.service)
        .raw("</b>");
    if v.slo.source == Source::Spans && !v.slo.filter.span_kinds.is_empty() {
        let kinds: Vec<&str> = v.slo.filter.span_kinds.iter().map(|k| k.as_str()).collect();
        o.raw(" (span kinds ").raw(&kinds.join(", ")).raw(")");
    }
    o.raw(" over the last complete minute, per region (<code>sloxide_span_duration_quantile_seconds</code>).");
    let threshold = match &v.slo.indicator {
        Indicator::Latency {
            threshold,
            attribute: None,
            ..
        } => Some(threshold.as_secs_f64()),
        _ => None,
    };
    if let Some(t) = threshold {
        o.raw(" The red mark is the SLO's threshold, ")
            .raw(&html::latency(t))
            .raw(".");
    }
    o.raw("</p>");
    if rows.is_empty() {
        o.raw("<p class=\"mut\">No span of this service is being counted.</p>");
        return;
    }
    // The bars: the median and the highest quantile at or below p99 (else the highest).
    let find = |target: f64| quantiles.iter().position(|q| (*q - target).abs() < 1e-9);
    let low = find(0.5).unwrap_or(0);
    let high = find(0.99).unwrap_or(quantiles.len().saturating_sub(1));
    let most = rows
        .iter()
        .filter_map(|l| l.quantiles.get(high).copied())
        .chain(threshold)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    o.raw("<div class=\"wrap\"><table class=\"d\"><thead><tr><th>Region</th><th>Span kind</th>");
    for q in quantiles {
        o.raw("<th class=\"num\">")
            .raw(&html::quantile_name(*q))
            .raw("</th>");
    }
    o.fmt(format_args!(
        "<th class=\"num\">Spans (total)</th><th>{} / {}</th></tr></thead><tbody>",
        quantiles
            .get(low)
            .map_or(String::new(), |q| html::quantile_name(*q)),
        quantiles
            .get(high)
            .map_or(String::new(), |q| html::quantile_name(*q)),
    ));
    const BW: f64 = 200.0;
    for l in rows {
        o.raw("<tr data-region=\"")
            .text(&l.region)
            .raw("\" data-kind=\"")
            .text(&l.kind)
            .raw("\"><td>")
            .text(&l.region)
            .raw("</td><td>")
            .text(&l.kind)
            .raw("</td>");
        for (k, q) in quantiles.iter().enumerate() {
            o.raw("<td class=\"num\" data-k=\"q");
            o.exact(*q).raw("\" data-v=\"");
            match l.quantiles.get(k) {
                Some(v) => o.exact(*v).raw("\">").raw(&html::latency(*v)),
                None => o.raw("\">–"),
            };
            o.raw("</td>");
        }
        o.fmt(format_args!(
            "<td class=\"num\" data-k=\"count\" data-v=\"{}\">{}</td><td>",
            l.count,
            html::count(l.count)
        ));
        if let (Some(p_low), Some(p_high)) = (l.quantiles.get(low), l.quantiles.get(high)) {
            let w = |s: f64| (s / most).clamp(0.0, 1.0) * BW;
            o.fmt(format_args!(
                "<svg viewBox=\"0 0 {BW} 14\" width=\"{BW}\" height=\"14\" role=\"img\" aria-label=\"latency\"><rect class=\"track\" x=\"0\" y=\"2\" width=\"{BW}\" height=\"10\" rx=\"2\"/><rect class=\"p99\" x=\"0\" y=\"2\" width=\"{:.1}\" height=\"10\" rx=\"2\"/><rect class=\"p50\" x=\"0\" y=\"2\" width=\"{:.1}\" height=\"10\" rx=\"2\"/>",
                w(*p_high),
                w(*p_low)
            ));
            if let Some(t) = threshold {
                let tx = w(t);
                o.fmt(format_args!(
                    "<line class=\"obj\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"0\" y2=\"14\"/>"
                ));
            }
            o.raw("</svg>");
        } else {
            o.raw("<small>no span last minute</small>");
        }
        o.raw("</td></tr>");
    }
    o.raw("</tbody></table></div>");
}
