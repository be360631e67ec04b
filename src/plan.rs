//! Planning in frame coordinates: rectangles, the tile grid on the latent grid, and blend weights.
//!
//! Everything here is a pure function of the frame's size and the options, so a full-frame render and a render
//! of any region of it plan exactly the same tiles.

/// A rectangle of pixels (or latent samples), `x, y` its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

impl Rect {
    /// A rectangle from its corner and size.
    pub const fn new(x: usize, y: usize, width: usize, height: usize) -> Rect {
        Rect { x, y, width, height }
    }

    /// One past the right column.
    pub const fn right(&self) -> usize {
        self.x + self.width
    }

    /// One past the bottom row.
    pub const fn bottom(&self) -> usize {
        self.y + self.height
    }

    /// Whether the rectangle holds no pixel.
    pub const fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The overlap of two rectangles (empty when they do not meet).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let (x, y) = (self.x.max(other.x), self.y.max(other.y));
        let (r, b) = (self.right().min(other.right()), self.bottom().min(other.bottom()));
        Rect { x, y, width: r.saturating_sub(x), height: b.saturating_sub(y) }
    }

    /// The smallest rectangle holding both (an empty one is ignored).
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let (x, y) = (self.x.min(other.x), self.y.min(other.y));
        Rect { x, y, width: self.right().max(other.right()) - x, height: self.bottom().max(other.bottom()) - y }
    }

    /// Whether `other` lies inside this rectangle.
    pub fn contains(&self, other: &Rect) -> bool {
        other.x >= self.x && other.y >= self.y && other.right() <= self.right() && other.bottom() <= self.bottom()
    }

    /// Every coordinate multiplied by `factor`.
    pub fn scaled(&self, factor: usize) -> Rect {
        Rect { x: self.x * factor, y: self.y * factor, width: self.width * factor, height: self.height * factor }
    }
}

/// Tiles along one axis: `(start, length)` in latent samples, all of one length, evenly spaced, the first at 0 and
/// the last ending at `length`.
///
/// `tile` and `overlap` are rounded to multiples of `unit` (the patch size); consecutive tiles overlap by at least
/// `overlap`. A length no longer than a tile gets one tile of that length.
pub fn axis_tiles(length: usize, tile: usize, overlap: usize, unit: usize) -> Vec<(usize, usize)> {
    let tile = (tile / unit).max(1) * unit;
    let overlap = (overlap.div_ceil(unit) * unit).min(tile - unit);
    if length <= tile {
        return vec![(0, length)];
    }
    let count = (length - overlap).div_ceil(tile - overlap);
    // Balanced: the shortest tile (in units) that covers the axis with `count` tiles and the wanted overlap.
    let size = ((length + (count - 1) * overlap).div_ceil(count)).div_ceil(unit) * unit;
    let free = (length - size) / unit;
    (0..count).map(|i| (unit * (i * free / (count - 1)), size)).collect()
}

/// The weight of each pixel of a tile along one axis, in a partition of unity: ramps up over the overlap with
/// the previous tile and down over the overlap with the next, so the weights of all tiles sum to 1 everywhere.
///
/// `tiles` are the axis's `(start, length)` in pixels, `index` the tile's position among them.
pub fn blend_weights(tiles: &[(usize, usize)], index: usize) -> Vec<f32> {
    let (start, length) = tiles[index];
    let mut weights = vec![1.0f32; length];
    // Cosine ramp: the rising weight of the next tile and the falling weight of this one add up to 1.
    let rise = |position: usize, from: usize, to: usize| -> f32 {
        let t = (position as f64 + 0.5 - from as f64) / (to - from) as f64;
        (0.5 - 0.5 * (std::f64::consts::PI * t).cos()) as f32
    };
    if index > 0 {
        let previous_end = tiles[index - 1].0 + tiles[index - 1].1;
        for p in start..previous_end.min(start + length) {
            weights[p - start] *= rise(p, start, previous_end);
        }
    }
    if index + 1 < tiles.len() {
        let next_start = tiles[index + 1].0;
        let end = start + length;
        for p in next_start.max(start)..end {
            weights[p - start] *= 1.0 - rise(p, next_start, end);
        }
    }
    weights
}

/// The official tiled sampler's Gaussian weight along one axis of a tile of `length` (variance 0.01).
pub fn gaussian_weights(length: usize) -> Vec<f32> {
    const VARIANCE: f64 = 0.01;
    let centre = (length as f64 - 1.0) / 2.0;
    (0..length)
        .map(|x| {
            let d = (x as f64 - centre) / length as f64;
            ((-d * d / (2.0 * VARIANCE)).exp() / (2.0 * std::f64::consts::PI * VARIANCE).sqrt()) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_axis(length: usize, tile: usize, overlap: usize, unit: usize) {
        let tiles = axis_tiles(length, tile, overlap, unit);
        assert_eq!(tiles[0].0, 0);
        let (last_start, size) = *tiles.last().unwrap();
        assert_eq!(last_start + size, length, "last tile snapped to the end");
        for &(start, len) in &tiles {
            assert_eq!(len, size, "balanced: one tile length");
            assert!(len <= tile.max(unit) || tiles.len() == 1);
            assert_eq!(start % unit, 0);
        }
        for pair in tiles.windows(2) {
            let overlap_found = pair[0].0 + pair[0].1 - pair[1].0;
            assert!(overlap_found >= overlap.min(size - unit), "{length} {tile} {overlap}: overlap {overlap_found}");
            assert!(pair[1].0 > pair[0].0);
        }
    }

    #[test]
    fn tiles_cover_any_length_with_balanced_sizes() {
        for length in (2..300).step_by(2) {
            for (tile, overlap) in [(16, 0), (16, 4), (32, 8), (128, 16), (10, 6)] {
                check_axis(length, tile, overlap, 2);
            }
        }
        assert_eq!(axis_tiles(40, 16, 4, 2), vec![(0, 16), (12, 16), (24, 16)]);
        assert_eq!(axis_tiles(8, 128, 16, 2), vec![(0, 8)]);
    }

    #[test]
    fn blend_weights_are_a_partition_of_unity() {
        for (length, tile, overlap) in [(40, 16, 4), (100, 32, 10), (64, 64, 8), (257, 50, 17)] {
            let tiles = axis_tiles(length, tile, overlap, 1);
            let mut total = vec![0.0f32; length];
            for i in 0..tiles.len() {
                for (k, w) in blend_weights(&tiles, i).into_iter().enumerate() {
                    assert!((0.0..=1.0).contains(&w));
                    total[tiles[i].0 + k] += w;
                }
            }
            assert!(total.iter().all(|t| (t - 1.0).abs() < 1e-6), "{length} {tile} {overlap}: {total:?}");
        }
    }

    #[test]
    fn gaussian_peaks_in_the_middle() {
        let w = gaussian_weights(9);
        assert!(w[4] > w[3] && w[3] > w[0] && (w[0] - w[8]).abs() < 1e-9);
    }

    #[test]
    fn rectangles_intersect_and_unite() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 8, 10, 10);
        assert_eq!(a.intersect(&b), Rect::new(5, 8, 5, 2));
        assert_eq!(a.union(&b), Rect::new(0, 0, 15, 18));
        assert!(a.intersect(&Rect::new(20, 20, 1, 1)).is_empty());
        assert!(a.contains(&Rect::new(2, 2, 8, 8)) && !a.contains(&b));
    }
}
