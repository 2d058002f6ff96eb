//! `GET /`: every SLO on one page, one row per SLO (its roll-up across regions) with
//! its regions folded under it in a `<details>`, so that 500 SLOs of 10 regions stay a
//! page of a few MB that opens at once. Sorted and filtered on the server from the
//! query (links and a form), so it needs no script.
//!
//! Every value cell carries `data-k` (what it is) and `data-v` (the exact value, as
//! `/metrics` writes it); each row carries `data-slo` and `data-region` (empty for the
//! roll-up).

use std::cmp::Ordering;
use std::time::Duration;

use super::html::{self, Out};
use super::{Health, ListQuery, Model, SloView, Sort, head, tail};
use crate::config::Config;
use crate::config::duration::format_duration;
use crate::config::slo::STANDARD_WINDOWS;
use crate::slo::Row;

/// The burn-rate columns: the windows every SLO reports (the standard ones and every
/// alert tier's), shortest first.
fn columns(config: &Config) -> Vec<Duration> {
    let mut w: Vec<Duration> = STANDARD_WINDOWS
        .iter()
        .copied()
        .chain(config.alerting.tiers().flat_map(|(_, t)| [t.long, t.short]))
        .collect();
    w.sort_unstable();
    w.dedup();
    w
}

/// One SLO of the list.
struct Entry<'a> {
    view: SloView<'a>,
    worst: Health,
    /// Its regions, in the list's order.
    regions: Vec<&'a Row>,
}

/// A float key: `None` sorts last whichever the direction.
fn by_value(a: Option<f64>, b: Option<f64>, descending: bool) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => {
            let o = a.total_cmp(&b);
            if descending { o.reverse() } else { o }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// What a row is sorted by.
struct Key<'r> {
    name: &'r str,
    state: Health,
    row: Option<&'r Row>,
}

fn compare(
    sort: &Sort,
    column: Option<Duration>,
    descending: bool,
    (va, a): (&SloView<'_>, &Key<'_>),
    (vb, b): (&SloView<'_>, &Key<'_>),
) -> Ordering {
    let value = |v: &SloView<'_>, k: &Key<'_>| -> Option<f64> {
        let row = k.row?;
        match sort {
            Sort::Sli => row.sli.get(v.period).copied().flatten(),
            Sort::Budget | Sort::Status => Some(row.budget_remaining),
            Sort::Events => row.windows.get(v.period).map(|w| w.0 as f64),
            Sort::Burn(_) => column
                .and_then(|c| v.window(c))
                .and_then(|i| row.burn.get(i).copied()),
            Sort::Name => None,
        }
    };
    let flip = |o: Ordering| if descending { o.reverse() } else { o };
    let first = match sort {
        Sort::Name => flip(a.name.cmp(b.name)),
        Sort::Status => flip(
            a.state
                .cmp(&b.state)
                .then_with(|| by_value(value(va, a), value(vb, b), false)),
        ),
        _ => by_value(value(va, a), value(vb, b), descending),
    };
    first.then_with(|| a.name.cmp(b.name))
}

/// Writes the list page.
pub(super) fn write(m: &Model<'_>, q: &ListQuery, out: &mut String) {
    let columns = columns(m.config);
    let labels: Vec<String> = columns.iter().map(|w| format_duration(*w)).collect();
    let column = match &q.sort {
        Sort::Burn(w) => labels.iter().position(|l| l == w).map(|i| columns[i]),
        _ => None,
    };
    let descending = q.is_descending();
    let mut entries: Vec<Entry<'_>> = (0..m.len())
        .map(|i| {
            let view = m.view(i);
            let worst = view.worst();
            Entry {
                regions: view.regions().iter().collect(),
                view,
                worst,
            }
        })
        .collect();
    let count = |f: &dyn Fn(&Entry<'_>) -> bool| entries.iter().filter(|e| f(e)).count();
    let paging = count(&|e| e.worst == Health::Page);
    let ticket = count(&|e| e.worst == Health::Ticket);
    let spent = count(&|e| e.view.rollup().is_some_and(|r| r.budget_remaining <= 0.0));
    let no_data = count(&|e| e.worst == Health::NoData);
    let total = entries.len();

    let needle = q.filter.to_lowercase();
    entries.retain(|e| {
        let text_ok = needle.is_empty()
            || [
                &*e.view.slo.name,
                &*e.view.slo.service,
                e.view.slo.description.as_deref().unwrap_or(""),
            ]
            .iter()
            .any(|s| s.to_lowercase().contains(&needle));
        text_ok && (!q.firing_only || e.worst <= Health::Ticket)
    });
    for e in &mut entries {
        let view = &e.view;
        e.regions.sort_by(|a, b| {
            let ka = Key {
                name: a.region.as_deref().unwrap_or(""),
                state: view.state(a),
                row: Some(a),
            };
            let kb = Key {
                name: b.region.as_deref().unwrap_or(""),
                state: view.state(b),
                row: Some(b),
            };
            compare(&q.sort, column, descending, (view, &ka), (view, &kb))
        });
    }
    entries.sort_by(|a, b| {
        let ka = Key {
            name: &a.view.slo.name,
            state: a.worst,
            row: a.view.rollup(),
        };
        let kb = Key {
            name: &b.view.slo.name,
            state: b.worst,
            row: b.view.rollup(),
        };
        compare(&q.sort, column, descending, (&a.view, &ka), (&b.view, &kb))
    });

    // About 450 bytes per row.
    let rows: usize = entries.iter().map(|e| 1 + e.regions.len()).sum();
    out.reserve(8_192 + rows * 480);
    let mut o = Out { s: out };
    head(&mut o, "SLO status · sloxide");
    o.raw("<header><h1>SLO status</h1><p class=\"meta\">");
    if m.snapshot.at > 0 {
        o.raw("As of ").raw(&html::utc(m.snapshot.at)).raw(" · ");
    }
    o.fmt(format_args!(
        "{total} SLOs · {} (SLO, region) rows</p></header>",
        m.snapshot.rows.len().saturating_sub(total)
    ));
    o.raw("<div class=\"sum\">");
    summary_badge(&mut o, "pg", paging, "paging", "page");
    summary_badge(&mut o, "tk", ticket, "ticket", "ticket");
    summary_badge(&mut o, "pg", spent, "out of budget", "spent");
    summary_badge(&mut o, "nd", no_data, "no data", "nodata");
    o.raw("</div>");
    filter_form(&mut o, q);
    if total == 0 {
        o.raw(
            "<p>No SLO is configured: add some under <code>slos:</code> in the configuration.</p>",
        );
        tail(&mut o);
        return;
    }
    o.fmt(format_args!(
        "<div class=\"wrap\"><div class=\"t\" style=\"--n:{}\" role=\"table\" data-shown=\"{}\">",
        columns.len(),
        entries.len()
    ));
    header_row(&mut o, q, &labels);
    for e in &entries {
        entry(&mut o, m.config, e, &columns, q.open);
    }
    o.raw("</div></div>");
    if entries.is_empty() {
        o.raw("<p>No SLO matches the filter. <a href=\"?\">Show all</a></p>");
    }
    o.raw("<p class=\"legend\">State: <span class=\"chip pg\">page</span> or <span class=\"chip tk\">ticket</span> when a tier of that severity holds (its long and short windows both burn above its threshold), in the roll-up or (counted beside the name) in a region. Burn rates in red are above a page tier's threshold for that window, in orange above a ticket tier's; 1 spends the budget exactly over the period. Budget left is over the SLO's rolling period, also as time at an even event rate. Click a row for its regions, a name for its details.</p>");
    tail(&mut o);
}

fn summary_badge(o: &mut Out<'_>, class: &str, n: usize, label: &str, key: &str) {
    o.fmt(format_args!(
        "<span data-k=\"{key}\" data-v=\"{n}\"><b class=\"num{}\">{n}</b>{label}</span>",
        if n > 0 {
            format!(" b {class}")
        } else {
            String::new()
        }
    ));
}

fn filter_form(o: &mut Out<'_>, q: &ListQuery) {
    o.raw("<form class=\"f\" method=\"get\"><input type=\"search\" name=\"q\" placeholder=\"Filter: name, service, description\" value=\"")
        .text(&q.filter)
        .raw("\"><label><input type=\"checkbox\" name=\"show\" value=\"firing\"")
        .raw(if q.firing_only { " checked" } else { "" })
        .raw("> firing only</label><label><input type=\"checkbox\" name=\"regions\" value=\"open\"")
        .raw(if q.open { " checked" } else { "" })
        .raw("> expand regions</label><input type=\"hidden\" name=\"sort\" value=\"")
        .text(&q.sort.key())
        .raw("\">");
    if let Some(d) = q.descending {
        o.raw("<input type=\"hidden\" name=\"dir\" value=\"")
            .raw(if d { "desc" } else { "asc" })
            .raw("\">");
    }
    o.raw("<button type=\"submit\">Apply</button><a href=\"?\">Reset</a></form>");
}

fn header_row(o: &mut Out<'_>, q: &ListQuery, labels: &[String]) {
    o.raw("<div class=\"r h\" role=\"row\">");
    let link = |o: &mut Out<'_>, sort: Sort, numeric: bool, title: &str| {
        let on = q.sort == sort;
        let arrow = match (on, q.is_descending()) {
            (false, _) => "",
            (true, true) => " \u{25BC}",
            (true, false) => " \u{25B2}",
        };
        o.raw(if numeric {
            "<span class=\"num\"><a href=\""
        } else {
            "<span><a href=\""
        })
        .text(&q.link(&sort))
        .raw("\"")
        .raw(if on { " class=\"on\"" } else { "" })
        .raw(">")
        .raw(title)
        .raw(arrow)
        .raw("</a></span>");
    };
    link(o, Sort::Status, false, "State");
    link(o, Sort::Name, false, "SLO");
    o.raw("<span class=\"num\">Objective</span>");
    link(o, Sort::Sli, true, "SLI");
    link(o, Sort::Budget, false, "Budget left");
    for label in labels {
        let mut title = String::from("<small>burn</small><br>");
        html::escape(label, &mut title);
        link(o, Sort::Burn(label.clone()), true, &title);
    }
    link(o, Sort::Events, true, "Events");
    o.raw("</div>");
}

fn entry(o: &mut Out<'_>, config: &Config, e: &Entry<'_>, columns: &[Duration], open: bool) {
    let v = &e.view;
    let name = &*v.slo.name;
    o.raw(if open {
        "<details class=\"s\" open>"
    } else {
        "<details class=\"s\">"
    });
    o.raw("<summary class=\"r\" data-slo=\"")
        .text(name)
        .raw("\" data-region=\"\">");
    let rollup = v.rollup();
    let state = rollup.map_or(Health::NoData, |r| v.state(r));
    chip(o, state);
    o.raw("<span class=\"nm\">");
    if !e.regions.is_empty() {
        o.raw("<span class=\"tw\"></span>");
    }
    o.raw("<a href=\"slo/");
    html::url_encode(name, o.s);
    o.raw("\">").text(name).raw("</a>");
    for worse in [Health::Page, Health::Ticket] {
        let n = e.regions.iter().filter(|r| v.state(r) == worse).count();
        if n > 0 && worse < state {
            o.fmt(format_args!(
                "<span class=\"chip sm {}\" data-k=\"regions-{}\" data-v=\"{n}\">{n} region{} {}</span>",
                worse.class(),
                worse.label(),
                if n == 1 { "" } else { "s" },
                worse.label()
            ));
        }
    }
    o.raw("<span class=\"sub\">").text(&v.slo.service);
    if let Some(d) = &v.slo.description {
        o.raw(" · ").text(d);
    }
    o.raw("</span></span><span class=\"num\" data-k=\"objective\" data-v=\"")
        .exact(v.rt.budget.objective_ratio())
        .raw("\">")
        .raw(&html::objective(v.slo.objective))
        .raw("<br><small>")
        .raw(&format_duration(v.slo.period))
        .raw("</small></span>");
    match rollup {
        Some(r) => cells(o, config, v, r, columns),
        None => {
            o.raw("<span></span><span></span>");
        }
    }
    o.raw("</summary>");
    for r in &e.regions {
        o.raw("<div class=\"r reg\" data-slo=\"")
            .text(name)
            .raw("\" data-region=\"")
            .text(r.region.as_deref().unwrap_or(""))
            .raw("\">");
        chip(o, v.state(r));
        o.raw("<span class=\"nm\">")
            .text(r.region.as_deref().unwrap_or(""))
            .raw("</span><span></span>");
        cells(o, config, v, r, columns);
        o.raw("</div>");
    }
    o.raw("</details>");
}

fn chip(o: &mut Out<'_>, state: Health) {
    o.raw("<span class=\"chip ")
        .raw(state.class())
        .raw("\" data-k=\"state\" data-v=\"")
        .raw(state.label())
        .raw("\">")
        .raw(state.label())
        .raw("</span>");
}

/// SLI, budget, burn rates and events of one row.
fn cells(o: &mut Out<'_>, config: &Config, v: &SloView<'_>, r: &Row, columns: &[Duration]) {
    let sli = r.sli.get(v.period).copied().flatten();
    o.raw("<span class=\"num\" data-k=\"sli\" data-v=\"");
    match sli {
        Some(s) => o
            .exact(s)
            .raw("\">")
            .raw(&html::percent_floor(s, html::sli_decimals(v.slo.objective))),
        None => o.raw("\">–"),
    };
    o.raw("</span>");
    budget(o, v, r);
    for &w in columns {
        let Some(i) = v.window(w) else {
            o.raw("<span></span>");
            continue;
        };
        let burn = r.burn.get(i).copied().unwrap_or(0.0);
        let [page, ticket] = v.thresholds(config, w);
        // A burn cell is an `<i>` (styled as a number by `.r>i`): the list has
        // thousands of them.
        let open = if page.is_some_and(|t| burn > t) {
            "<i class=\"pg\" data-k=\"burn-"
        } else if ticket.is_some_and(|t| burn > t) {
            "<i class=\"tk\" data-k=\"burn-"
        } else if burn == 0.0 {
            "<i class=\"z\" data-k=\"burn-"
        } else {
            "<i data-k=\"burn-"
        };
        o.raw(open)
            .raw(&v.rt.window_labels[i])
            .raw("\" data-v=\"")
            .exact(burn)
            .raw("\">")
            .raw(&html::burn(burn))
            .raw("</i>");
    }
    let (events, bad) = r.windows.get(v.period).copied().unwrap_or((0, 0));
    o.fmt(format_args!(
        "<span class=\"num\" data-k=\"events\" data-v=\"{events}\">{}<br><small data-k=\"bad\" data-v=\"{bad}\">{} bad</small></span>",
        html::count(events),
        html::count(bad)
    ));
}

/// The budget cell: the percent left, a bar, and the time it stands for.
pub(super) fn budget(o: &mut Out<'_>, v: &SloView<'_>, r: &Row) {
    let left = r.budget_remaining;
    let class = if left <= 0.0 {
        " class=\"out\""
    } else if left < 0.25 {
        " class=\"lo\""
    } else {
        ""
    };
    o.raw("<span class=\"bud\" data-k=\"budget\" data-v=\"")
        .exact(left)
        .raw("\"><b>")
        .raw(&html::percent(left))
        .fmt(format_args!(
            "</b><span class=\"bar\"><i{class} style=\"width:{:.1}%\"></i></span><small>",
            (left.clamp(0.0, 1.0) * 100.0)
        ))
        .raw(&time_left(v, r))
        .raw("</small></span>");
}

/// The budget left as time of the period: `26.9 min left`, `overspent by 5 min`.
pub(super) fn time_left(v: &SloView<'_>, r: &Row) -> String {
    if r.windows.get(v.period).is_none_or(|w| w.0 == 0) {
        return "no events".to_owned();
    }
    let secs = r.budget_remaining * v.budget_secs();
    if r.budget_remaining > 0.0 {
        format!("{} left", html::duration(secs))
    } else if r.budget_remaining == 0.0 {
        "spent".to_owned()
    } else {
        format!("overspent by {}", html::duration(secs))
    }
}
