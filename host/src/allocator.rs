//! The memory allocator's own figures, for the metrics.
//!
//! The `sockhost` binary allocates with jemalloc, set up to give memory back (see `main.rs`):
//! with the system allocator a node kept most of a connection spike's memory after the
//! connections closed. The plugins keep their own allocator (only R-types cross the boundary,
//! each freed by the image that allocated it).

use prometheus_client::metrics::gauge::Gauge;
use tikv_jemalloc_ctl::{epoch, stats};

/// jemalloc's figures, as gauges of the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllocatorGauges {
    pub allocated: Gauge,
    pub active: Gauge,
    pub resident: Gauge,
    pub retained: Gauge,
    pub metadata: Gauge,
}

impl AllocatorGauges {
    /// Set every gauge to jemalloc's figures now; left as they were if it cannot say (they
    /// are not essential to anything).
    pub(crate) fn refresh(&self) {
        // The figures are cached and refreshed when the epoch advances.
        let (Ok(_), Ok(allocated), Ok(active), Ok(resident), Ok(retained), Ok(metadata)) = (
            epoch::advance(),
            stats::allocated::read(),
            stats::active::read(),
            stats::resident::read(),
            stats::retained::read(),
            stats::metadata::read(),
        ) else {
            return;
        };
        let set = |gauge: &Gauge, value: usize| gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        set(&self.allocated, allocated);
        set(&self.active, active);
        set(&self.resident, resident);
        set(&self.retained, retained);
        set(&self.metadata, metadata);
    }
}
