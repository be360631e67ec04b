//! Position-locked Gaussian noise: each latent sample is a pure function of (seed, stream, channel, y, x).
//!
//! Because nothing depends on the order of drawing, a tile, a region render and a full frame that share latent
//! coordinates start from the same noise, and so does the same frame of a video rendered twice.

use ndarray::{Array4, Ix4, Zip};

use crate::error::Result;
use crate::pixels::zeroed_planes;

/// Independent noise streams drawn from one seed.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub(crate) enum Stream {
    /// The sampler's starting latent.
    Start = 1,
    /// The draw from the encoder's posterior, when sampling it instead of taking the mean.
    Posterior = 2,
}

/// SplitMix64's finaliser: a bijective, well-mixed hash of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash(seed: u64, stream: Stream, channel: usize, y: i64, x: i64, draw: u64) -> u64 {
    let mut h = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
    for part in [stream as u64, channel as u64, y as u64, x as u64, draw] {
        h = mix(h ^ part.wrapping_add(0x9e37_79b9_7f4a_7c15));
    }
    h
}

/// A uniform in (0, 1] from the top 53 bits.
fn unit(bits: u64) -> f64 {
    ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// One standard normal sample for a latent position (Box–Muller on two hashed uniforms).
pub(crate) fn gaussian(seed: u64, stream: Stream, channel: usize, y: i64, x: i64) -> f32 {
    let u1 = unit(hash(seed, stream, channel, y, x, 0));
    let u2 = unit(hash(seed, stream, channel, y, x, 1));
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Noise for a latent window of `channels x height x width` whose top-left sits at `(origin_y, origin_x)` in
/// frame latent coordinates.
pub(crate) fn latent_noise(
    seed: u64,
    stream: Stream,
    channels: usize,
    (origin_y, origin_x): (i64, i64),
    (height, width): (usize, usize),
) -> Result<Array4<f32>> {
    let mut noise = zeroed_planes(Ix4(1, channels, height, width))?;
    Zip::indexed(&mut noise)
        .for_each(|(_, c, y, x), v| *v = gaussian(seed, stream, c, origin_y + y as i64, origin_x + x as i64));
    Ok(noise)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_standard_normal() {
        let n = latent_noise(7, Stream::Start, 4, (0, 0), (64, 64)).unwrap();
        let count = n.len() as f64;
        let mean = n.iter().map(|&v| v as f64).sum::<f64>() / count;
        let var = n.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / count;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn depends_only_on_position() {
        let full = latent_noise(3, Stream::Start, 2, (0, 0), (8, 8)).unwrap();
        let window = latent_noise(3, Stream::Start, 2, (2, 5), (3, 3)).unwrap();
        for c in 0..2 {
            for y in 0..3 {
                for x in 0..3 {
                    assert_eq!(window[[0, c, y, x]], full[[0, c, y + 2, x + 5]]);
                }
            }
        }
        assert_ne!(latent_noise(4, Stream::Start, 2, (0, 0), (8, 8)).unwrap(), full);
        assert_ne!(latent_noise(3, Stream::Posterior, 2, (0, 0), (8, 8)).unwrap(), full);
    }
}
