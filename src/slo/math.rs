//! SLI, burn-rate, budget and alert-tier arithmetic: pure functions of window counts.
//!
//! With objective `o` (a ratio) and `total` events of which `bad` are bad:
//! SLI = (total - bad) / total; burn rate = (bad / total) / (1 - o), the speed at which
//! the error budget is spent (1 spends exactly the budget over the period); budget
//! remaining over the period = 1 - bad / ((1 - o) * total).

/// An objective held as the exact fraction of events that may be bad, in parts per
/// 10^8, so that 99.9% gives a budget of exactly 100_000 / 10^8 and burn rates of
/// round inputs come out round (floating-point `1 - 0.999` does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    bad_per_1e8: u64,
}

const PER: u64 = 100_000_000;

impl Budget {
    /// The budget of an objective given in percent (0 < objective < 100), kept to six
    /// decimals of a percent.
    pub fn from_percent(objective: f64) -> Self {
        let bad = ((100.0 - objective) * 1e6)
            .round()
            .clamp(1.0, (PER - 1) as f64);
        Self {
            bad_per_1e8: bad as u64,
        }
    }

    /// The objective as a ratio, e.g. 0.999.
    pub fn objective_ratio(self) -> f64 {
        (PER - self.bad_per_1e8) as f64 / PER as f64
    }

    /// The share of events that may be bad, e.g. 0.001.
    pub fn ratio(self) -> f64 {
        self.bad_per_1e8 as f64 / PER as f64
    }

    /// `bad / (budget * total)`, from integers.
    fn spent(self, total: u64, bad: u64) -> f64 {
        (bad as f64 * PER as f64) / (total as f64 * self.bad_per_1e8 as f64)
    }
}

/// good / total, or `None` while the window holds no event.
pub fn sli(total: u64, bad: u64) -> Option<f64> {
    (total > 0).then(|| (total - bad.min(total)) as f64 / total as f64)
}

/// (bad / total) / (1 - objective); 0 while the window holds no event.
pub fn burn_rate(total: u64, bad: u64, budget: Budget) -> f64 {
    if total == 0 {
        return 0.0;
    }
    budget.spent(total, bad)
}

/// 1 - bad / ((1 - objective) * total) over the period; 1 with no events; negative once
/// overspent.
pub fn budget_remaining(total: u64, bad: u64, budget: Budget) -> f64 {
    if total == 0 {
        return 1.0;
    }
    1.0 - budget.spent(total, bad)
}

/// Seconds until the remaining budget is spent if `burn_1h` holds: a burn rate `b`
/// spends the whole budget in `period / b`. `None` while the burn rate is 0; 0 once the
/// budget is spent.
pub fn exhaustion_seconds(remaining: f64, burn_1h: f64, period_secs: f64) -> Option<f64> {
    if burn_1h <= 0.0 {
        return None;
    }
    Some(if remaining <= 0.0 {
        0.0
    } else {
        remaining * period_secs / burn_1h
    })
}

/// Whether a multiwindow tier holds: both burn rates exceed the threshold, and the long
/// window has at least `min_events` events.
pub fn tier_holds(
    burn_long: f64,
    burn_short: f64,
    threshold: f64,
    events_long: u64,
    min_events: u64,
) -> bool {
    burn_long > threshold && burn_short > threshold && events_long >= min_events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::slo::Alerting;
    use std::time::Duration;

    const DAY: u64 = 86_400;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn the_workbook_thresholds_and_their_scaling() {
        let alerting = Alerting::default();
        let thresholds = |days| -> Vec<f64> {
            alerting
                .tiers()
                .map(|(_, t)| t.threshold(Duration::from_secs(days * DAY)))
                .collect()
        };
        let t30 = thresholds(30);
        for (got, want) in t30.iter().zip([14.4, 6.0, 3.0, 1.0]) {
            assert!(close(*got, want), "{t30:?}");
        }
        let t7 = thresholds(7);
        for (got, want) in t7.iter().zip([3.36, 1.4, 0.7, 7.0 / 30.0]) {
            assert!(close(*got, want), "{t7:?}");
        }
    }

    #[test]
    fn budget_arithmetic_with_worked_numbers() {
        // 99.9% over 30 days: the budget is 0.1% of the period, 43.2 minutes.
        let objective = 0.999;
        let period = 30.0 * DAY as f64;
        assert!(close((1.0 - objective) * period / 60.0, 43.2));
        // A 14.4x burn for one hour spends 14.4 / 720 = 2% of the budget.
        assert!(close(14.4 * 3_600.0 / period, 0.02));

        // (objective %, total, bad) -> (sli, burn, budget remaining); the burn rates and
        // budgets of round inputs are exact.
        let table: [(f64, u64, u64, Option<f64>, f64, f64); 8] = [
            (99.9, 0, 0, None, 0.0, 1.0),
            (99.9, 1_000_000, 0, Some(1.0), 0.0, 1.0),
            (99.9, 1_000_000, 500, Some(0.9995), 0.5, 0.5),
            (99.9, 1_000_000, 1_000, Some(0.999), 1.0, 0.0),
            (99.9, 1_000_000, 3_000, Some(0.997), 3.0, -2.0),
            (99.9, 100, 5, Some(0.95), 50.0, -49.0),
            (95.0, 200, 20, Some(0.9), 2.0, -1.0),
            (99.99, 1_000_000, 144, Some(0.999856), 1.44, -0.44),
        ];
        for (o, total, bad, want_sli, want_burn, want_budget) in table {
            let b = Budget::from_percent(o);
            assert_eq!(
                sli(total, bad).map(|v| (v * 1e9).round()),
                want_sli.map(|v| (v * 1e9).round())
            );
            assert_eq!(
                burn_rate(total, bad, b),
                want_burn,
                "burn {o} {total} {bad}"
            );
            assert!(
                close(budget_remaining(total, bad, b), want_budget),
                "budget {o} {total} {bad}"
            );
        }
        assert_eq!(Budget::from_percent(99.9).objective_ratio(), 0.999);
        assert_eq!(Budget::from_percent(99.9).ratio(), 0.001);
    }

    #[test]
    fn exhaustion_follows_the_one_hour_burn() {
        let period = 30.0 * DAY as f64;
        assert_eq!(exhaustion_seconds(1.0, 0.0, period), None);
        // Burning at 1x with the whole budget left lasts one period.
        assert!(close(exhaustion_seconds(1.0, 1.0, period).unwrap(), period));
        // Half the budget left at 14.4x: 0.5 * 30 d / 14.4 = 25 h.
        assert!(close(
            exhaustion_seconds(0.5, 14.4, period).unwrap(),
            25.0 * 3_600.0
        ));
        assert_eq!(exhaustion_seconds(-0.2, 3.0, period), Some(0.0));
    }

    #[test]
    fn tiers_need_both_windows_and_enough_events() {
        assert!(tier_holds(15.0, 20.0, 14.4, 100, 0));
        assert!(
            !tier_holds(15.0, 10.0, 14.4, 100, 0),
            "short window recovered"
        );
        assert!(!tier_holds(10.0, 20.0, 14.4, 100, 0));
        assert!(
            !tier_holds(14.4, 14.4, 14.4, 100, 0),
            "must exceed, not equal"
        );
        assert!(!tier_holds(15.0, 20.0, 14.4, 9, 10), "min_events");
    }
}
