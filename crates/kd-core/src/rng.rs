//! Seeded randomness. Every random draw in kd-rs comes from a generator derived from the run's
//! seed, so runs, resumed runs and parallel batch building are reproducible.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator type used everywhere.
pub type Rng = ChaCha8Rng;

/// A generator for `(seed, stream, index)`; independent streams for independent purposes
/// (shuffling, augmentation of sample `index` in epoch `stream`, noise, ...).
pub fn derive(seed: u64, stream: u64, index: u64) -> Rng {
    // SplitMix64-style mixing so nearby inputs give unrelated seeds.
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ChaCha8Rng::seed_from_u64(z)
}

/// Seeds libtorch's global generator (CPU and CUDA) for ops that draw inside libtorch
/// (parameter initialisation, dropout, `randn`).
pub fn seed_torch(seed: u64) {
    tch::manual_seed(seed as i64);
}

/// A 64-bit seed derived from `(seed, stream, index)`, for libtorch's generator.
pub fn derive_u64(seed: u64, stream: u64, index: u64) -> u64 {
    use rand::RngCore;
    derive(seed, stream, index).next_u64()
}
