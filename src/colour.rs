//! The wavelet colour fix: keep the restored image's detail, take its colour from the input.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, Zip};

/// Number of wavelet levels (StableSR's value).
const LEVELS: u32 = 5;

/// `out[i] = (line[i - r] + 2 line[i] + line[i + r]) / 4` with indices clamped to the line.
fn blur_line(line: &[f32], r: usize, out: &mut [f32]) {
    let n = line.len();
    let at = |i: isize| line[i.clamp(0, n as isize - 1) as usize];
    let edge = r.min(n);
    for i in (0..edge).chain(n.saturating_sub(r).max(edge)..n) {
        let i = i as isize;
        out[i as usize] = (at(i - r as isize) + 2.0 * line[i as usize] + at(i + r as isize)) * 0.25;
    }
    if n > 2 * r {
        // The interior needs no clamping; this loop vectorises.
        let (left, mid, right) = (&line[..n - 2 * r], &line[r..n - r], &line[2 * r..]);
        for (o, ((a, b), c)) in out[r..n - r].iter_mut().zip(left.iter().zip(mid).zip(right)) {
            *o = (a + 2.0 * b + c) * 0.25;
        }
    }
}

/// The 3x3 binomial blur `[[1,2,1],[2,4,2],[1,2,1]]/16` with taps `r` apart, edges replicated, applied
/// separably to a row-major `h x w` plane: `src` into `dst`, through `rows`.
fn blur(src: &[f32], dst: &mut [f32], rows: &mut [f32], w: usize, r: usize) {
    let h = src.len() / w;
    for (line, out) in src.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        blur_line(line, r, out);
    }
    let row = |y: isize| {
        let y = y.clamp(0, h as isize - 1) as usize;
        &rows[y * w..(y + 1) * w]
    };
    for (y, out) in dst.chunks_exact_mut(w).enumerate() {
        let (up, mid, down) = (row(y as isize - r as isize), row(y as isize), row(y as isize + r as isize));
        for (o, ((a, b), c)) in out.iter_mut().zip(up.iter().zip(mid).zip(down)) {
            *o = (a + 2.0 * b + c) * 0.25;
        }
    }
}

/// The low-frequency part after `LEVELS` dilated blurs; the plane minus it is the high-frequency part.
fn low_pass(plane: ArrayView2<'_, f32>) -> Array2<f32> {
    let (h, w) = plane.dim();
    let plane = plane.as_standard_layout();
    // Three buffers for all levels: fresh pages for every level would cost more than the blurs.
    let mut low = plane.as_slice().expect("standard layout").to_vec();
    let mut next = vec![0f32; h * w];
    let mut rows = vec![0f32; h * w];
    for level in 0..LEVELS {
        blur(&low, &mut next, &mut rows, w, 1 << level);
        std::mem::swap(&mut low, &mut next);
    }
    Array2::from_shape_vec((h, w), low).expect("sized")
}

/// High frequencies of `restored` plus low frequencies of `reference`, clamped to [0, 1]. Both (C, H, W).
///
/// `high(restored) + low(reference) = restored - low(restored) + low(reference)`, so only the two low-pass
/// images are computed, one thread per plane.
pub fn wavelet_fix(restored: ArrayView3<'_, f32>, reference: ArrayView3<'_, f32>) -> Array3<f32> {
    assert_eq!(restored.dim(), reference.dim(), "the colour reference has the output's size");
    let channels = restored.dim().0;
    let lows: Vec<(Array2<f32>, Array2<f32>)> = std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..channels)
            .map(|c| {
                let (a, b) = (restored.index_axis(Axis(0), c), reference.index_axis(Axis(0), c));
                (scope.spawn(move || low_pass(a)), scope.spawn(move || low_pass(b)))
            })
            .collect();
        jobs.into_iter().map(|(a, b)| (a.join().expect("no panic"), b.join().expect("no panic"))).collect()
    });
    let mut out = restored.to_owned();
    for (c, (low_restored, low_reference)) in lows.iter().enumerate() {
        Zip::from(out.index_axis_mut(Axis(0), c))
            .and(low_restored)
            .and(low_reference)
            .for_each(|o, &lr, &lf| *o = (*o - lr + lf).clamp(0.0, 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(h: usize, w: usize) -> Array3<f32> {
        Array3::from_shape_fn((3, h, w), |(c, y, x)| ((c * 7 + y * 13 + x * 29) % 17) as f32 / 16.0)
    }

    /// The definition, written plainly: 3x3 taps `r` apart over a replicate-padded plane.
    fn blur_direct(plane: ArrayView2<'_, f32>, r: usize) -> Array2<f32> {
        let k = [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0f32]];
        let (h, w) = plane.dim();
        Array2::from_shape_fn((h, w), |(y, x)| {
            let mut sum = 0.0;
            for (dy, krow) in k.iter().enumerate() {
                for (dx, kv) in krow.iter().enumerate() {
                    let yy = (y as isize + (dy as isize - 1) * r as isize).clamp(0, h as isize - 1) as usize;
                    let xx = (x as isize + (dx as isize - 1) * r as isize).clamp(0, w as isize - 1) as usize;
                    sum += kv * plane[[yy, xx]];
                }
            }
            sum / 16.0
        })
    }

    #[test]
    fn blur_matches_the_3x3_kernel_at_every_size_and_radius() {
        for (h, w) in [(1, 1), (1, 9), (9, 1), (5, 7), (23, 40)] {
            let img = pattern(h, w);
            let plane = img.index_axis(Axis(0), 0);
            let src = plane.as_standard_layout().as_slice().unwrap().to_vec();
            for r in [1, 2, 4, 8, 16] {
                let (mut fast, mut rows) = (vec![0f32; h * w], vec![0f32; h * w]);
                blur(&src, &mut fast, &mut rows, w, r);
                let direct = blur_direct(plane, r);
                assert!(fast.iter().zip(&direct).all(|(a, b)| (a - b).abs() < 1e-6), "{h}x{w}, r {r}");
            }
        }
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
    fn colour_comes_from_the_reference_and_detail_from_the_result() {
        let detail = pattern(32, 32);
        let flat = Array3::from_elem((3, 32, 32), 0.5f32);
        // A flat result has no detail: the output is the reference's low-pass, whose mean is the reference's.
        let fixed = wavelet_fix(flat.view(), detail.view());
        let mean = |a: &Array3<f32>| a.sum() / a.len() as f32;
        assert!((mean(&fixed) - mean(&detail)).abs() < 0.02);
        // A flat reference keeps the result's detail around the reference's level.
        let fixed = wavelet_fix(detail.view(), flat.view());
        let spread = fixed.iter().copied().fold(0.0f32, f32::max) - fixed.iter().copied().fold(1.0f32, f32::min);
        assert!(spread > 0.5 && (mean(&fixed) - 0.5).abs() < 0.02);
    }
}
