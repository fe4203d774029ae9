//! What a device announced, as the recorders ask it: the narrow view of the fleet they
//! need, so that they do not depend on the [`Hub`](crate::Hub) (which implements it).

use protocol::{DeviceId, MetricSpec};

/// What is known of a device's metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    UnknownDevice,
    UnknownMetric,
    Metric(MetricSpec),
}

/// Answers "what did this device announce about this metric".
pub trait Announced: Send + Sync + 'static {
    fn metric(&self, device: &DeviceId, metric: &str) -> Known;
}
