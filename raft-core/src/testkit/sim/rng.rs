//! The simulator's only source of randomness: a small seeded generator (SplitMix64), so one
//! `u64` fixes every choice of a run.

/// A seeded pseudo-random generator. Not cryptographic; fast and reproducible.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// A generator for one purpose (`stream`) of one seed: streams of one seed are
    /// independent, so drawing more network delays does not shift the fault schedule.
    pub fn stream(seed: u64, stream: u64) -> SimRng {
        SimRng::new(mix(seed, stream))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalize(self.state)
    }

    /// A value in `[0, bound)`. `bound` must be at least 1.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SimRng::below(0)");
        // Multiply-shift keeps the bias below 2^-64 * bound: negligible for a simulator.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A value in `[low, high]` (both inclusive). `low` must not exceed `high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "SimRng::between({low}, {high})");
        low + self.below(high - low + 1)
    }

    /// True with probability `probability` (clamped to `[0, 1]`).
    pub fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < probability
    }

    /// An index into a slice of `len` items, weighted by `weights` (which must not all be 0).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        assert!(total > 0, "SimRng::weighted with no positive weight");
        let mut pick = self.below(total);
        for (index, weight) in weights.iter().enumerate() {
            let weight = u64::from(*weight);
            if pick < weight {
                return index;
            }
            pick -= weight;
        }
        unreachable!("pick is below the total of the weights")
    }
}

/// Mixes two values into one well-spread seed (for a node's seed from the run's seed, say).
pub fn mix(a: u64, b: u64) -> u64 {
    finalize(a ^ finalize(b.wrapping_add(0x632B_E59B_D9B4_E019)))
}

fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_bounds_hold() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        for _ in 0..10_000 {
            let value = a.between(3, 9);
            assert_eq!(value, b.between(3, 9));
            assert!((3..=9).contains(&value));
        }
        assert_ne!(
            SimRng::stream(1, 0).next_u64(),
            SimRng::stream(1, 1).next_u64()
        );
        assert_ne!(SimRng::new(1).next_u64(), SimRng::new(2).next_u64());
    }

    #[test]
    fn weights_are_respected() {
        let mut rng = SimRng::new(7);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[rng.weighted(&[1, 0, 2])] += 1;
        }
        assert_eq!(counts[1], 0, "a zero weight is never picked");
        assert!(counts[2] > counts[0] * 3 / 2, "{counts:?}");
        assert!(!rng.chance(0.0));
        assert!(rng.chance(1.0));
    }
}
