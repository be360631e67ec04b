//! The wavelet colour fix: keep the restored image's detail, take its colour from the input.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Zip};

/// Number of wavelet levels (StableSR's value).
const LEVELS: u32 = 5;

/// The 3x3 binomial blur `[[1,2,1],[2,4,2],[1,2,1]]/16` with taps `radius` apart, edges replicated.
fn blur(plane: ArrayView2<'_, f32>, radius: usize) -> Array2<f32> {
    let (h, w) = plane.dim();
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let r = radius as isize;
    // Separable: [1 2 1]/4 along x, then along y; equal to the 3x3 kernel / 16.
    let mut rows = Array2::<f32>::zeros((h, w));
    for y in 0..h {
        for x in 0..w {
            let xi = x as isize;
            rows[[y, x]] = (plane[[y, clamp(xi - r, w)]] + 2.0 * plane[[y, x]] + plane[[y, clamp(xi + r, w)]]) / 4.0;
        }
    }
    let mut out = Array2::<f32>::zeros((h, w));
    for y in 0..h {
        let yi = y as isize;
        let (up, down) = (clamp(yi - r, h), clamp(yi + r, h));
        for x in 0..w {
            out[[y, x]] = (rows[[up, x]] + 2.0 * rows[[y, x]] + rows[[down, x]]) / 4.0;
        }
    }
    out
}

/// Splits a plane into (high, low) frequencies with `LEVELS` dilated blurs; `high + low` is the plane.
fn decompose(plane: ArrayView2<'_, f32>) -> (Array2<f32>, Array2<f32>) {
    let mut low = plane.to_owned();
    let mut high = Array2::<f32>::zeros(plane.dim());
    for level in 0..LEVELS {
        let blurred = blur(low.view(), 1 << level);
        Zip::from(&mut high).and(&low).and(&blurred).for_each(|h, &l, &b| *h += l - b);
        low = blurred;
    }
    (high, low)
}

/// High frequencies of `restored` plus low frequencies of `reference`, clamped to [0, 1]. Both (C, H, W).
pub fn wavelet_fix(restored: ArrayView3<'_, f32>, reference: ArrayView3<'_, f32>) -> Array3<f32> {
    assert_eq!(restored.dim(), reference.dim(), "the colour reference has the output's size");
    let mut out = Array3::<f32>::zeros(restored.dim());
    for c in 0..restored.dim().0 {
        let (high, _) = decompose(restored.index_axis(ndarray::Axis(0), c));
        let (_, low) = decompose(reference.index_axis(ndarray::Axis(0), c));
        Zip::from(out.index_axis_mut(ndarray::Axis(0), c))
            .and(&high)
            .and(&low)
            .for_each(|o, &h, &l| *o = (h + l).clamp(0.0, 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(h: usize, w: usize) -> Array3<f32> {
        Array3::from_shape_fn((3, h, w), |(c, y, x)| ((c * 7 + y * 13 + x * 29) % 17) as f32 / 16.0)
    }

    #[test]
    fn high_plus_low_is_the_plane() {
        let img = pattern(23, 40);
        let (high, low) = decompose(img.index_axis(ndarray::Axis(0), 1));
        let back = &high + &low;
        assert!(back.iter().zip(img.index_axis(ndarray::Axis(0), 1)).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn fixing_an_image_with_itself_returns_it() {
        for (h, w) in [(1, 1), (2, 37), (40, 23)] {
            let img = pattern(h, w);
            let fixed = wavelet_fix(img.view(), img.view());
            assert!(fixed.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-5));
        }
    }

    #[test]
    fn colour_comes_from_the_reference() {
        let detail = pattern(32, 32);
        let flat = Array3::from_elem((3, 32, 32), 0.5f32);
        let fixed = wavelet_fix(flat.view(), detail.view());
        // A flat restored image has no detail: the result is the reference's low-pass, whose mean is preserved.
        let mean = |a: &Array3<f32>| a.sum() / a.len() as f32;
        assert!((mean(&fixed) - mean(&detail)).abs() < 0.02);
    }

    #[test]
    fn blur_matches_the_3x3_kernel() {
        let img = pattern(9, 11);
        let plane = img.index_axis(ndarray::Axis(0), 0);
        let b = blur(plane, 2);
        let k = [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0f32]];
        let (y, x) = (4usize, 5usize);
        let mut direct = 0.0;
        for dy in 0..3 {
            for dx in 0..3 {
                direct += k[dy][dx] * plane[[y + 2 * dy - 2, x + 2 * dx - 2]] / 16.0;
            }
        }
        assert!((b[[y, x]] - direct).abs() < 1e-6);
    }
}
