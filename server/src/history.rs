//! A device's telemetry history, downsampled by the store into at most `max_points`
//! buckets per metric: for the API's `GET /api/v1/devices/{id}/telemetry` and the UI's
//! charts. The metrics are what the device announced; for a device not heard from since
//! this server started (or a metric it no longer announces), what is stored.

use hub::Hub;
use protocol::{
    DeviceId, MetricSpec,
    api::{History, HistoryQuery, Series, history},
};
use store::{SeriesQuery, Store, bucket_ms};

/// Why a history cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistoryError {
    #[error("no device \"{0}\" has ever connected")]
    UnknownDevice(DeviceId),
    #[error("device \"{device}\" has no metric \"{metric}\"")]
    UnknownMetric { device: DeviceId, metric: String },
    #[error("from ({from}) must be before to ({to}), both in ms since the Unix epoch")]
    InvalidRange { from: u64, to: u64 },
    #[error("max_points must be between 1 and {max} (got {0})", max = history::MAX_POINTS)]
    InvalidMaxPoints(u32),
    #[error("this server keeps no history (TETHER_DATABASE_URL=none)")]
    StorageOff,
    #[error("the telemetry store cannot be read right now; try again shortly")]
    StoreUnavailable,
}

/// Reads `device`'s history as `query` asks.
pub async fn read(
    hub: &Hub,
    store: Option<&Store>,
    device: &DeviceId,
    query: HistoryQuery,
) -> Result<History, HistoryError> {
    let to = query.to.unwrap_or_else(common::now_ms);
    let from = query
        .from
        .unwrap_or_else(|| to.saturating_sub(history::DEFAULT_SPAN_MS));
    if from >= to {
        return Err(HistoryError::InvalidRange { from, to });
    }
    let max_points = query.max_points.unwrap_or(history::DEFAULT_POINTS);
    if !(1..=history::MAX_POINTS).contains(&max_points) {
        return Err(HistoryError::InvalidMaxPoints(max_points));
    }
    let store = store.ok_or(HistoryError::StorageOff)?;
    let store_failed = |error: anyhow::Error| {
        tracing::warn!("telemetry history for {device}: {error:#}");
        HistoryError::StoreUnavailable
    };
    let known = hub.device(device);
    let announced = known
        .as_ref()
        .map(|device| device.capabilities.metrics.clone())
        .unwrap_or_default();
    let asked_for = |name: &String| query.metric.as_ref().is_none_or(|m| m == name);
    let mut specs: Vec<MetricSpec> = announced
        .into_iter()
        .filter(|s| asked_for(&s.name))
        .collect();
    if specs.is_empty() {
        let stored = store.metrics(device.as_str()).await.map_err(store_failed)?;
        if stored.is_empty() && known.is_none() {
            return Err(HistoryError::UnknownDevice(device.clone()));
        }
        specs = stored
            .into_iter()
            .filter(asked_for)
            .map(|name| MetricSpec {
                name,
                unit: String::new(),
                min: None,
                max: None,
            })
            .collect();
        if let (Some(metric), true) = (&query.metric, specs.is_empty()) {
            return Err(HistoryError::UnknownMetric {
                device: device.clone(),
                metric: metric.clone(),
            });
        }
    }
    let as_i64 = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
    let bucket_ms = bucket_ms(as_i64(from), as_i64(to), max_points);
    let mut found = store
        .series(SeriesQuery {
            device: device.as_str().to_owned(),
            metrics: specs.iter().map(|s| s.name.clone()).collect(),
            from_ms: as_i64(from),
            to_ms: as_i64(to),
            bucket_ms,
        })
        .await
        .map_err(store_failed)?;
    let series = specs
        .into_iter()
        .map(|spec| {
            let points = found
                .iter_mut()
                .find(|(m, _)| *m == spec.name)
                .map(|(_, points)| std::mem::take(points))
                .unwrap_or_default();
            Series { spec, points }
        })
        .collect();
    Ok(History {
        device_id: device.clone(),
        from_ms: from,
        to_ms: to,
        bucket_ms: bucket_ms as u64,
        series,
    })
}
