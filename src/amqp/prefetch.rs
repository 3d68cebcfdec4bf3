//! How many deliveries a consumer asks the broker for at once (the QoS prefetch), given the
//! bytes of bodies it may hold.

/// The QoS prefetch for a worker that may hold `held_bytes` of bodies, the largest body it
/// has seen being `largest`: as many of those as fit (rounded down to a power of two, so a
/// growing largest body re-consumes only a few times), between 1 and `max` (--prefetch).
/// Before any body is seen: 1, so a queue of huge bodies never floods in unseen.
pub(crate) fn prefetch_for(max: u16, held_bytes: u64, largest: Option<u64>) -> u16 {
    let Some(largest) = largest else {
        return 1;
    };
    let fits = held_bytes / largest.max(1);
    let fits = if fits == 0 { 1 } else { 1u64 << fits.ilog2() };
    u16::try_from(fits).unwrap_or(u16::MAX).clamp(1, max.max(1))
}

#[cfg(test)]
mod tests {
    use super::prefetch_for;

    #[test]
    fn prefetch_keeps_the_largest_body_times_prefetch_within_the_bound() {
        const MIB: u64 = 1 << 20;
        assert_eq!(prefetch_for(256, 256 * MIB, None), 1, "nothing seen yet");
        assert_eq!(prefetch_for(256, 256 * MIB, Some(1_000)), 256, "small: --prefetch");
        assert_eq!(prefetch_for(100, 256 * MIB, Some(1_000)), 100);
        assert_eq!(prefetch_for(256, 256 * MIB, Some(8 * MIB)), 32);
        assert_eq!(prefetch_for(256, 256 * MIB, Some(5 * MIB)), 32, "51 rounded down to 32");
        assert_eq!(prefetch_for(256, 256 * MIB, Some(128 * MIB)), 2);
        assert_eq!(prefetch_for(256, 256 * MIB, Some(300 * MIB)), 1, "over the bound: one");
        assert_eq!(prefetch_for(256, 256 * MIB, Some(0)), 256, "empty bodies");
        assert_eq!(prefetch_for(0, 1, Some(1)), 1, "never 0 (unlimited to the broker)");
        for largest in [1, 7, 1_000, 3 * MIB, 77 * MIB] {
            let p = u64::from(prefetch_for(u16::MAX, 256 * MIB, Some(largest)));
            assert!(p * largest <= 256 * MIB, "{p} x {largest}");
        }
    }
}
