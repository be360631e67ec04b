//! Separable image resampling in Pillow's convention (Lanczos-3 for upsampling, bicubic for CLIP).
//!
//! Pillow's convention is the one the reference pipeline and the official preprocessing use, so matching it
//! keeps the Rust pipeline comparable with them to float rounding.

use ndarray::{Array3, ArrayView3, Axis};

/// A resampling kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `sinc(x) sinc(x/3)`, support 3.
    Lanczos3,
    /// Keys' cubic with a = -0.5, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos3 => 3.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos3 => {
                if x.abs() < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    A * (((x - 5.0) * x + 8.0) * x - 4.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// For each output sample: the first input index and the normalised weights from there on.
fn coefficients(filter: Filter, n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..n_out)
        .map(|j| {
            let center = (j as f64 + 0.5) * scale;
            // Truncation toward zero, as C's (int) cast, then clamped into the line.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let mut weights: Vec<f64> =
                (lo..hi).map(|k| filter.weight((k as f64 - center + 0.5) / filterscale)).collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (lo, weights)
        })
        .collect()
}

/// Resizes planar channels (C, H, W) to (C, height, width). No clamping: kernels with lobes can overshoot.
pub fn resize(planes: ArrayView3<'_, f32>, height: usize, width: usize, filter: Filter) -> Array3<f32> {
    let (channels, in_h, in_w) = planes.dim();
    let horizontal = if in_w == width { planes.to_owned() } else { resize_axis(planes, Axis(2), width, filter) };
    if in_h == height {
        return horizontal;
    }
    debug_assert_eq!(horizontal.dim(), (channels, in_h, width));
    resize_axis(horizontal.view(), Axis(1), height, filter)
}

fn resize_axis(planes: ArrayView3<'_, f32>, axis: Axis, n_out: usize, filter: Filter) -> Array3<f32> {
    let n_in = planes.len_of(axis);
    let coeffs = coefficients(filter, n_in, n_out);
    let mut shape = planes.raw_dim();
    shape[axis.index()] = n_out;
    let mut out = Array3::<f32>::zeros(shape);
    for (mut lane_out, lane_in) in out.lanes_mut(axis).into_iter().zip(planes.lanes(axis)) {
        for (o, (lo, weights)) in lane_out.iter_mut().zip(&coeffs) {
            let mut acc = 0.0f64;
            for (k, w) in weights.iter().enumerate() {
                acc += lane_in[lo + k] as f64 * w;
            }
            *o = acc as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let img = Array3::from_shape_fn((3, 5, 7), |(c, y, x)| (c * 100 + y * 10 + x) as f32);
        assert_eq!(resize(img.view(), 5, 7, Filter::Lanczos3), img);
    }

    #[test]
    fn weights_sum_to_one_and_constant_stays_constant() {
        for (n_in, n_out) in [(7, 20), (20, 7), (1, 5), (224, 224), (300, 224)] {
            for (_, w) in coefficients(Filter::Bicubic, n_in, n_out) {
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let img = Array3::from_elem((1, 9, 13), 0.25f32);
        let out = resize(img.view(), 31, 4, Filter::Lanczos3);
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }

    #[test]
    fn upsampling_by_two_uses_pillow_centres() {
        // 10 -> 20: output 5 is centred at input coordinate 2.75, so it reads inputs 0..6 at offsets k - 2.25.
        let coeffs = coefficients(Filter::Lanczos3, 10, 20);
        let (lo, w) = &coeffs[5];
        assert_eq!((*lo, w.len()), (0, 6));
        let raw: Vec<f64> = (0..6).map(|k| Filter::Lanczos3.weight(k as f64 - 2.25)).collect();
        let total: f64 = raw.iter().sum();
        for (a, b) in w.iter().zip(raw) {
            assert!((a - b / total).abs() < 1e-12);
        }
    }
}
