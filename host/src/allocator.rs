//! The memory allocator's own figures, for the metrics.
//!
//! The `sockhost` binary allocates with jemalloc, set up to give memory back (see `main.rs`):
//! with the system allocator a node kept most of a connection spike's memory after the
//! connections closed. The plugins keep their own allocator (only R-types cross the boundary,
//! each freed by the image that allocated it).

use prometheus_client::metrics::gauge::Gauge;
use tikv_jemalloc_ctl::{epoch, stats};

/// Bytes as jemalloc counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes the program has allocated and not freed.
    pub allocated: u64,
    /// Bytes of the pages that hold them (allocated, rounded up to whole pages in use).
    pub active: u64,
    /// Bytes resident in memory that the allocator holds, its own metadata included.
    pub resident: u64,
    /// Bytes mapped but given back to the system (not resident), kept for reuse.
    pub retained: u64,
    /// Bytes of the allocator's own bookkeeping.
    pub metadata: u64,
}

/// jemalloc's figures now; `None` if it cannot say (they are not essential to anything).
#[must_use]
pub fn stats() -> Option<AllocatorStats> {
    // The figures are cached and refreshed when the epoch advances.
    epoch::advance().ok()?;
    Some(AllocatorStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
    })
}

/// The gauges the metrics endpoint shows them in.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllocatorGauges {
    pub allocated: Gauge,
    pub active: Gauge,
    pub resident: Gauge,
    pub retained: Gauge,
    pub metadata: Gauge,
}

impl AllocatorGauges {
    /// Set every gauge to the allocator's figures now.
    pub(crate) fn refresh(&self) {
        let Some(now) = stats() else { return };
        let set = |gauge: &Gauge, value: u64| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.allocated, now.allocated);
        set(&self.active, now.active);
        set(&self.resident, now.resident);
        set(&self.retained, now.retained);
        set(&self.metadata, now.metadata);
    }
}
