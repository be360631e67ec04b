//! Separable image resampling in Pillow's convention (Lanczos-3 for upsampling, bicubic for CLIP), in float and, as
//! Pillow resizes 8-bit images, in fixed point.
//!
//! Pillow's convention is the one the reference pipeline and the official preprocessing use, so matching it
//! keeps the Rust pipeline comparable with them to float rounding.

use ndarray::{Array3, ArrayView3};

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

/// The taps of one output sample: the first input index it reads and the normalised weights from there on.
pub(crate) type Taps = (usize, Vec<f64>);

/// The taps of every output sample when a line of `n_in` samples is resized to `n_out`.
pub(crate) fn coefficients(filter: Filter, n_in: usize, n_out: usize) -> Vec<Taps> {
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

/// Resizes planar channels (C, H, W) to (C, height, width): horizontally, then vertically, rounding to f32
/// between the passes as Pillow does. No clamping: kernels with lobes can overshoot. (The pipeline reads through
/// `apply_columns` and `apply_rows` directly; this whole-image form tests them.)
#[cfg(test)]
fn resize(planes: ArrayView3<'_, f32>, height: usize, width: usize, filter: Filter) -> Array3<f32> {
    let (_, in_h, in_w) = planes.dim();
    let horizontal = if in_w == width {
        planes.to_owned()
    } else {
        let taps = coefficients(filter, in_w, width);
        apply_columns(planes, 0, &taps.iter().collect::<Vec<_>>())
    };
    if in_h == height {
        return horizontal;
    }
    let taps = coefficients(filter, in_h, height);
    apply_rows(horizontal.view(), 0, &taps.iter().collect::<Vec<_>>())
}

/// Resamples along axis 2 of (C, H, W) whose first column is input column `x0`: output column `j` is the dot
/// product of `taps[j]` with a contiguous run of its row.
pub(crate) fn apply_columns(planes: ArrayView3<'_, f32>, x0: usize, taps: &[&Taps]) -> Array3<f32> {
    let (channels, h, n_in) = planes.dim();
    let planes = planes.as_standard_layout();
    let src = planes.as_slice().expect("standard layout");
    let n_out = taps.len();
    let mut out = vec![0f32; channels * h * n_out];
    for (row, dst) in src.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
        for (d, (lo, weights)) in dst.iter_mut().zip(taps.iter().copied()) {
            let run = &row[lo - x0..lo - x0 + weights.len()];
            *d = run.iter().zip(weights).map(|(&v, &w)| v as f64 * w).sum::<f64>() as f32;
        }
    }
    Array3::from_shape_vec((channels, h, n_out), out).expect("sized")
}

/// Resamples along axis 1 of (C, N, W) whose first row is input row `y0`: each output row is a weighted sum of
/// input rows, accumulated in f64 across the whole row at once.
pub(crate) fn apply_rows(planes: ArrayView3<'_, f32>, y0: usize, taps: &[&Taps]) -> Array3<f32> {
    let (channels, n_in, w) = planes.dim();
    let planes = planes.as_standard_layout();
    let src = planes.as_slice().expect("standard layout");
    let n_out = taps.len();
    let mut out = vec![0f32; channels * n_out * w];
    let mut acc = vec![0f64; w];
    for c in 0..channels {
        let plane = &src[c * n_in * w..(c + 1) * n_in * w];
        for (j, (lo, weights)) in taps.iter().copied().enumerate() {
            acc.fill(0.0);
            for (k, &weight) in weights.iter().enumerate() {
                let r = lo - y0 + k;
                for (a, &v) in acc.iter_mut().zip(&plane[r * w..(r + 1) * w]) {
                    *a += v as f64 * weight;
                }
            }
            let dst = &mut out[(c * n_out + j) * w..(c * n_out + j + 1) * w];
            for (d, &a) in dst.iter_mut().zip(&acc) {
                *d = a as f32;
            }
        }
    }
    Array3::from_shape_vec((channels, n_out, w), out).expect("sized")
}

/// Fraction bits of Pillow's fixed-point weights for 8-bit images (`PRECISION_BITS`, 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Resizes 8-bit planar channels (C, H, W) to (C, height, width) exactly as Pillow resizes an 8-bit image:
/// weights rounded to 22-bit fixed point, each pass (horizontal, then vertical, each only when its size changes)
/// rounded and clamped to 8 bits. CLIP's official preprocessing resizes this way.
pub fn resize_u8(planes: ArrayView3<'_, u8>, height: usize, width: usize, filter: Filter) -> Array3<u8> {
    let (channels, in_h, in_w) = planes.dim();
    let horizontal = if in_w == width {
        planes.to_owned()
    } else {
        let taps = fixed_point(&coefficients(filter, in_w, width));
        Array3::from_shape_fn((channels, in_h, width), |(c, y, x)| {
            let (lo, weights) = &taps[x];
            to_u8(weights.iter().enumerate().map(|(k, &w)| planes[[c, y, lo + k]] as i64 * w).sum())
        })
    };
    if in_h == height {
        return horizontal;
    }
    let taps = fixed_point(&coefficients(filter, in_h, height));
    Array3::from_shape_fn((channels, height, width), |(c, y, x)| {
        let (lo, weights) = &taps[y];
        to_u8(weights.iter().enumerate().map(|(k, &w)| horizontal[[c, lo + k, x]] as i64 * w).sum())
    })
}

/// Pillow's `normalize_coeffs_8bpc`: each weight times 2^22, rounded half away from zero.
fn fixed_point(taps: &[Taps]) -> Vec<(usize, Vec<i64>)> {
    let one = (1i64 << PRECISION_BITS) as f64;
    let round = |w: f64| if w < 0.0 { (w * one - 0.5) as i64 } else { (w * one + 0.5) as i64 };
    taps.iter().map(|(lo, weights)| (*lo, weights.iter().map(|&w| round(w)).collect())).collect()
}

/// Pillow's `clip8` of an accumulated sum, which starts at one half.
fn to_u8(sum: i64) -> u8 {
    ((sum + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp(0, 255) as u8
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

    /// The definition evaluated sample by sample, rounding to f32 between the passes.
    fn resize_direct(planes: &Array3<f32>, height: usize, width: usize, filter: Filter) -> Array3<f32> {
        let (c, h, w) = planes.dim();
        let (cx, cy) = (coefficients(filter, w, width), coefficients(filter, h, height));
        let horizontal = Array3::from_shape_fn((c, h, width), |(c, y, x)| {
            let (lo, weights) = &cx[x];
            weights.iter().enumerate().map(|(k, wt)| planes[[c, y, lo + k]] as f64 * wt).sum::<f64>() as f32
        });
        Array3::from_shape_fn((c, height, width), |(c, y, x)| {
            let (lo, weights) = &cy[y];
            weights.iter().enumerate().map(|(k, wt)| horizontal[[c, lo + k, x]] as f64 * wt).sum::<f64>() as f32
        })
    }

    #[test]
    fn matches_a_direct_evaluation() {
        let img = Array3::from_shape_fn((3, 13, 17), |(c, y, x)| ((c * 31 + y * 7 + x * 3) % 11) as f32 / 10.0);
        for (h, w, filter) in
            [(26, 34, Filter::Lanczos3), (5, 40, Filter::Bicubic), (40, 6, Filter::Lanczos3), (13, 9, Filter::Bicubic)]
        {
            let (fast, direct) = (resize(img.view(), h, w, filter), resize_direct(&img, h, w, filter));
            assert!(fast.iter().zip(&direct).all(|(a, b)| (a - b).abs() <= 1e-6), "{h}x{w} {filter:?}");
        }
    }

    #[test]
    fn eight_bit_resizing_keeps_constants_and_stays_in_range() {
        let flat = Array3::from_elem((3, 9, 13), 200u8);
        assert!(resize_u8(flat.view(), 31, 4, Filter::Bicubic).iter().all(|&v| v == 200));
        // A black and white checkerboard overshoots under bicubic lobes: clamped, never wrapped.
        let board = Array3::from_shape_fn((1, 8, 8), |(_, y, x)| if (x + y) % 2 == 0 { 0u8 } else { 255 });
        let up = resize_u8(board.view(), 21, 19, Filter::Bicubic);
        assert!(up.iter().any(|&v| v == 0) && up.iter().any(|&v| v == 255));
        assert_eq!(resize_u8(board.view(), 8, 8, Filter::Bicubic), board);
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
