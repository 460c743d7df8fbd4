//! How often each client address did something lately: a count per address over a window that
//! starts at its first event, for the per-address budgets that need no shared state between
//! nodes (TLS handshakes, wrong admin tokens, lookups of apps that do not exist).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Addresses tracked at most; a flood from more is bounded below.
const MAX_ADDRESSES: usize = 10_000;

/// Counts per address, each over its own `window`.
#[derive(Debug)]
pub(crate) struct AddressCounts {
    window: Duration,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AddressCounts {
    /// Counts over `window`.
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, counts: Mutex::default() }
    }

    /// `ip`'s count in its current window, and the time left in that window (none counted:
    /// 0 and no time).
    pub(crate) fn current(&self, ip: IpAddr) -> (u32, Duration) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .get(&ip)
            .and_then(|(began, n)| Some((*n, self.window.checked_sub(began.elapsed())?)))
            .unwrap_or_default()
    }

    /// Count one more for `ip`; its count in the current window.
    pub(crate) fn add(&self, ip: IpAddr) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_ADDRESSES && !counts.contains_key(&ip) {
            counts.retain(|_, (began, _)| began.elapsed() < self.window);
            if counts.len() >= MAX_ADDRESSES {
                // Every slot is a live window: start again with the newcomer rather than grow
                // or let it through uncounted.
                counts.clear();
            }
        }
        let entry = counts.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_counts_apart_within_its_window() {
        let counts = AddressCounts::new(Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_eq!(counts.current(a), (0, Duration::ZERO));
        assert_eq!((counts.add(a), counts.add(a), counts.add(b)), (1, 2, 1));
        let (n, left) = counts.current(a);
        assert_eq!(n, 2);
        assert!(left > Duration::from_secs(59));
        let expired = AddressCounts::new(Duration::ZERO);
        expired.add(a);
        assert_eq!(expired.current(a).0, 0);
        assert_eq!(expired.add(a), 1, "a window that ended starts again");
    }
}
