//! The wavelet colour fix: keep the restored image's detail, take its colour from the input.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Zip};

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

/// Columns per strip in the vertical passes: two strips of a tall image stay in a core's L2 cache.
const STRIP: usize = 64;

/// The low-frequency part after `LEVELS` dilated blurs; the plane minus it is the high-frequency part.
///
/// Each level is the 3x3 binomial blur `[[1,2,1],[2,4,2],[1,2,1]]/16` with taps `2^level` apart and edges
/// replicated. The kernel is separable and per-axis clamping commutes, so all horizontal passes run first, a
/// row at a time, then all vertical passes, a strip of columns at a time: the image crosses memory twice
/// instead of twice per level.
fn low_pass(plane: ArrayView2<'_, f32>) -> Array2<f32> {
    let (h, w) = plane.dim();
    let mut out = Array2::<f32>::zeros((h, w));
    let (mut a, mut b) = (vec![0f32; w], vec![0f32; w]);
    for (src, mut dst) in plane.outer_iter().zip(out.outer_iter_mut()) {
        a.iter_mut().zip(src).for_each(|(a, &v)| *a = v);
        for level in 0..LEVELS {
            blur_line(&a, 1 << level, &mut b);
            std::mem::swap(&mut a, &mut b);
        }
        dst.iter_mut().zip(&a).for_each(|(d, &v)| *d = v);
    }
    let data = out.as_slice_mut().expect("standard layout");
    let (mut a, mut b) = (vec![0f32; h * STRIP], vec![0f32; h * STRIP]);
    for x0 in (0..w).step_by(STRIP) {
        let s = STRIP.min(w - x0);
        for y in 0..h {
            a[y * s..(y + 1) * s].copy_from_slice(&data[y * w + x0..y * w + x0 + s]);
        }
        for level in 0..LEVELS {
            blur_columns(&a[..h * s], &mut b[..h * s], s, 1 << level);
            std::mem::swap(&mut a, &mut b);
        }
        for y in 0..h {
            data[y * w + x0..y * w + x0 + s].copy_from_slice(&a[y * s..(y + 1) * s]);
        }
    }
    out
}

/// The vertical pass over a row-major `h x s` strip: each output row from rows `y - r`, `y`, `y + r` (clamped).
fn blur_columns(src: &[f32], dst: &mut [f32], s: usize, r: usize) {
    let h = src.len() / s;
    let row = |y: isize| {
        let y = y.clamp(0, h as isize - 1) as usize;
        &src[y * s..(y + 1) * s]
    };
    for (y, out) in dst.chunks_exact_mut(s).enumerate() {
        let (up, mid, down) = (row(y as isize - r as isize), row(y as isize), row(y as isize + r as isize));
        for (o, ((a, b), c)) in out.iter_mut().zip(up.iter().zip(mid).zip(down)) {
            *o = (a + 2.0 * b + c) * 0.25;
        }
    }
}

/// High frequencies of `restored` plus low frequencies of `reference`, clamped to [0, 1]. Both (C, H, W).
///
/// The low pass is linear, so `high(restored) + low(reference) = restored + low(reference - restored)`: one low
/// pass per channel instead of two. Channels run on their own threads; `restored` is updated in place.
pub fn wavelet_fix(mut restored: Array3<f32>, reference: ArrayView3<'_, f32>) -> Array3<f32> {
    assert_eq!(restored.dim(), reference.dim(), "the colour reference has the output's size");
    std::thread::scope(|scope| {
        let workers: Vec<_> = restored
            .outer_iter_mut()
            .zip(reference.outer_iter())
            .map(|(mut plane, reference)| {
                scope.spawn(move || {
                    let low = low_pass((&reference - &plane).view());
                    Zip::from(&mut plane).and(&low).for_each(|o, &l| *o = (*o + l).clamp(0.0, 1.0));
                })
            })
            .collect();
        // Joined one by one rather than by the scope, which only waits for the closures: a thread still exiting
        // when a host process ends trips leak checkers.
        for worker in workers {
            worker.join().expect("the low pass does not panic");
        }
    });
    restored
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

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
    fn low_pass_matches_five_3x3_blurs_at_every_size() {
        for (h, w) in [(1, 1), (1, 9), (9, 1), (5, 7), (23, 40), (70, 150)] {
            let img = pattern(h, w);
            let plane = img.index_axis(Axis(0), 0);
            let mut direct = plane.to_owned();
            for level in 0..LEVELS {
                direct = blur_direct(direct.view(), 1 << level);
            }
            let fast = low_pass(plane);
            assert!(fast.iter().zip(&direct).all(|(a, b)| (a - b).abs() < 1e-5), "{h}x{w}");
        }
    }

    #[test]
    fn fixing_an_image_with_itself_returns_it() {
        for (h, w) in [(1, 1), (2, 37), (40, 23)] {
            let img = pattern(h, w);
            let fixed = wavelet_fix(img.clone(), img.view());
            assert!(fixed.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-5));
        }
    }

    #[test]
    fn colour_comes_from_the_reference_and_detail_from_the_result() {
        let detail = pattern(32, 32);
        let flat = Array3::from_elem((3, 32, 32), 0.5f32);
        // A flat result has no detail: the output is the reference's low-pass, whose mean is the reference's.
        let fixed = wavelet_fix(flat.clone(), detail.view());
        let mean = |a: &Array3<f32>| a.sum() / a.len() as f32;
        assert!((mean(&fixed) - mean(&detail)).abs() < 0.02);
        // A flat reference keeps the result's detail around the reference's level.
        let fixed = wavelet_fix(detail.clone(), flat.view());
        let spread = fixed.iter().copied().fold(0.0f32, f32::max) - fixed.iter().copied().fold(1.0f32, f32::min);
        assert!(spread > 0.5 && (mean(&fixed) - 0.5).abs() < 0.02);
    }
}
