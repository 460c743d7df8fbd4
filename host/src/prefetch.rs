//! Asking the CPU for a value's cache lines before it is used.
//!
//! A broadcast to a channel's quiet sockets touches, for each, its closer and its wire: two
//! allocations seldom in cache (another core wrote them last, or a thousand other sockets came
//! between), and those misses were the larger part of a delivery's user time in A's profile.
//! Prefetching the next socket's lines while this one's frame is queued or written lets the
//! misses overlap the work instead of stalling it.

/// Prefetch every cache line of `value` (a hint: nothing is read, and nothing can fault).
#[inline]
pub(crate) fn value<T>(value: &T) {
    at::<T>(std::ptr::from_ref(value).addr());
}

/// Prefetch every cache line of a `T` at `address` (0: nothing), an address kept without a
/// reference to what is there. Never dereferenced, so it may be stale.
#[inline]
pub(crate) fn at<T>(address: usize) {
    if address == 0 {
        return;
    }
    let start = std::ptr::without_provenance::<u8>(address);
    let mut offset = 0;
    while offset < size_of::<T>() {
        line(start.wrapping_add(offset));
        offset += LINE;
    }
}

/// A cache line's bytes on the machines this is built for.
const LINE: usize = 64;

#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn line(address: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: PREFETCHT0 is only a hint to the cache: it never faults, whatever the address,
    // and neither reads into the program nor writes memory. The intrinsic is `unsafe` only
    // because it names a target feature (SSE), which every x86_64 processor has.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn line(_address: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_reads_and_writes_nothing_whatever_the_size() {
        let large = [7u8; 1000];
        value(&large);
        assert!(large.iter().all(|&b| b == 7));
        value(&());
        let boxed = Box::new(42u64);
        value(&*boxed);
        assert_eq!(*boxed, 42);
    }
}
