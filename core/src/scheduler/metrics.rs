//! MetricsFilter and MetricsWeigher (`nova/scheduler/filters/metrics_filter.py`,
//! `nova/scheduler/weights/metrics.py`) over the metrics a host reports
//! ([`ComputeNode::metrics`](crate::model::ComputeNode::metrics)).
//!
//! `[metrics] weight_setting` is `name=ratio, ...`; elements that do not parse are ignored
//! (nova logs a warning). The weigher's raw value is the sum of each metric times its ratio;
//! a missing metric raises ComputeHostMetricNotFound when `required` (the request fails),
//! otherwise gives the host `weight_of_unavailable`, unless that metric's ratio times the
//! host's multiplier is 0 (then it is skipped). The filter keeps the hosts that have every
//! metric of the setting.

use serde::{Deserialize, Serialize};

use super::{reject, Era, HostState, NoValidHost, SchedulerConfig, WeigherKind, Why};

/// nova's `[metrics]` options the filter and weigher read (the multiplier is the Metrics
/// weigher's entry in [`SchedulerConfig::weighers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// `weight_setting`, parsed: (metric name, ratio), in order.
    pub weight_setting: Vec<(String, f64)>,
    /// `required` (true).
    pub required: bool,
    /// `weight_of_unavailable` (-10000.0).
    pub weight_of_unavailable: f64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { weight_setting: Vec::new(), required: true, weight_of_unavailable: -10000.0 }
    }
}

/// nova's `parse_options(weight_setting, sep='=', converter=float)` over oslo's ListOpt (the
/// string split on commas, each element trimmed): the (name, ratio) pairs, and the elements
/// that do not parse (nova ignores them with a warning).
pub fn parse_weight_setting(setting: &str) -> (Vec<(String, f64)>, Vec<String>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for item in setting.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((name, ratio)) if !name.is_empty() => match ratio.trim().parse::<f64>() {
                Ok(r) => good.push((name.to_string(), r)),
                Err(_) => bad.push(item.to_string()),
            },
            _ => bad.push(item.to_string()),
        }
    }
    (good, bad)
}

/// MetricsFilter.
pub(super) fn metrics_filter(host: &HostState, config: &MetricsConfig, why: &mut impl Why) -> bool {
    match config.weight_setting.iter().find(|(name, _)| !host.node.metrics.contains_key(name)) {
        None => true,
        Some((name, _)) => reject(why, || format!("host has no metric `{name}`")),
    }
}

/// The host's Metrics multiplier: its aggregates' `metrics_weight_multiplier` (today), else
/// the configured one.
fn multiplier(host: &HostState, config: &SchedulerConfig) -> f64 {
    let configured = config.weighers.get(&WeigherKind::Metrics).copied().unwrap_or(0.0);
    match config.era {
        Era::Current => host.aggregates.weigher_multiplier(WeigherKind::Metrics).unwrap_or(configured),
        Era::Icehouse => configured,
    }
}

/// MetricsWeigher's `_weigh_object` (a missing metric with `required` reads as
/// `weight_of_unavailable` here; [`required_metrics`] fails the request first).
pub(super) fn metrics_weight(host: &HostState, config: &SchedulerConfig) -> f64 {
    let m = &config.metrics;
    let mut value = 0.0;
    for (name, ratio) in &m.weight_setting {
        match host.node.metrics.get(name) {
            Some(v) => value += v * ratio,
            None if m.required || ratio * multiplier(host, config) != 0.0 => return m.weight_of_unavailable,
            None => {}
        }
    }
    value
}

/// Whether the Metrics weigher runs for this configuration: enabled, with a setting.
pub(super) fn weigher_runs(config: &SchedulerConfig) -> bool {
    config.weighers.contains_key(&WeigherKind::Metrics) && !config.metrics.weight_setting.is_empty()
}

/// nova raises ComputeHostMetricNotFound out of the weighing when `required` and a host to
/// weigh lacks a metric (whatever the multiplier); the handler weighs nothing for a single
/// host.
pub(super) fn required_metrics<'h>(
    hosts: impl ExactSizeIterator<Item = &'h HostState>,
    config: &SchedulerConfig,
) -> Result<(), NoValidHost> {
    if hosts.len() <= 1 || !config.metrics.required || !weigher_runs(config) {
        return Ok(());
    }
    for host in hosts {
        if let Some((name, _)) = config.metrics.weight_setting.iter().find(|(n, _)| !host.node.metrics.contains_key(n))
        {
            return Err(NoValidHost {
                reason: format!(
                    "ComputeHostMetricNotFound: metric {name} not found on host {} (MetricsWeigher with [metrics] required)",
                    host.node.host
                ),
            });
        }
    }
    Ok(())
}
