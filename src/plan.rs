//! Planning in frame coordinates: rectangles, the tile grid on the latent grid, and blend weights.
//!
//! Everything here is a pure function of the frame's size and the options, so a full-frame render and a render
//! of any region of it plan exactly the same tiles. One tile covering the whole (padded) frame is the plain DPIR
//! procedure: no margins (they stop at frame edges), weights of exactly 1.

pub use crate::rect::Rect;

use crate::bundle::{Manifest, VAE_MARGIN};
use crate::error::{Error, Result};
use crate::options::{Settings, TileMode};

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

/// [`blend_weights`] over the pixels of tile `index` of an axis given in latent samples of `downscale` pixels.
pub(crate) fn pixel_blend_weights(axis: &[(usize, usize)], index: usize, downscale: usize) -> Vec<f32> {
    let pixels: Vec<(usize, usize)> = axis.iter().map(|&(s, l)| (s * downscale, l * downscale)).collect();
    blend_weights(&pixels, index)
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

/// The most sampling tiles one frame may have: 1024 x 1024, far beyond any useful tiling (the default tiles of
/// a 65536 x 65536 frame make about 5300), and a plan of about 100 MB.
pub(crate) const MAX_TILES: usize = 1 << 20;

/// One sampling tile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    /// In latent samples of the padded frame.
    pub latent: Rect,
    /// `latent` in pixels (may reach into the padding).
    pub pixels: Rect,
    /// The part of `pixels` inside the output frame.
    pub visible: Rect,
    /// Row and column in the tile grid.
    pub row: usize,
    pub col: usize,
}

/// The tile grid of an output frame: balanced tiles of at most one pass each, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Output frame (width, height) and the padded latent frame's.
    pub frame: (usize, usize),
    pub latent: (usize, usize),
    /// Pixels per latent sample.
    pub downscale: usize,
    /// `(start, length)` per tile column and row, in latent samples.
    pub xs: Vec<(usize, usize)>,
    pub ys: Vec<(usize, usize)>,
    pub tiles: Vec<Tile>,
}

impl Plan {
    /// The tiles of an output frame of `frame` (width, height) pixels; too many of them (tiny tiles over a huge
    /// frame) are refused before any is listed.
    pub(crate) fn new(manifest: &Manifest, frame: (usize, usize), settings: &Settings) -> Result<Plan> {
        let patch = manifest.transformer.patch_size;
        let latent = manifest.latent_size(frame.0, frame.1);
        let xs = axis_tiles(latent.0, settings.tile, settings.overlap, patch);
        let ys = axis_tiles(latent.1, settings.tile, settings.overlap, patch);
        let count = xs.len().saturating_mul(ys.len());
        if count > MAX_TILES {
            return Err(Error::TooLarge(format!(
                "a {}x{} frame in tiles of {} latent samples makes {count} tiles, more than {MAX_TILES}; use larger tiles",
                frame.0, frame.1, settings.tile
            )));
        }
        let downscale = manifest.latent.downscale;
        let frame_rect = Rect::new(0, 0, frame.0, frame.1);
        let mut tiles = Vec::with_capacity(xs.len() * ys.len());
        for (row, &(y, h)) in ys.iter().enumerate() {
            for (col, &(x, w)) in xs.iter().enumerate() {
                let latent = Rect::new(x, y, w, h);
                let pixels = latent.scaled(downscale);
                tiles.push(Tile { latent, pixels, visible: pixels.intersect(&frame_rect), row, col });
            }
        }
        Ok(Plan { frame, latent, downscale, xs, ys, tiles })
    }

    /// The output frame as a rectangle.
    pub(crate) fn frame_rect(&self) -> Rect {
        Rect::new(0, 0, self.frame.0, self.frame.1)
    }

    /// The tiles whose visible pixels meet `rect`.
    pub(crate) fn touching(&self, rect: Rect) -> Vec<Tile> {
        self.tiles.iter().copied().filter(|t| !t.visible.intersect(&rect).is_empty()).collect()
    }

    /// The tiles a render of `rect` samples: those it touches, or in joint mode the contiguous block of the grid
    /// around them ([`Plan::joint_block`]).
    pub(crate) fn sampled(&self, rect: Rect, settings: &Settings) -> Vec<Tile> {
        match settings.mode {
            TileMode::Joint => self.joint_block(rect, settings.context_margin),
            _ => self.touching(rect),
        }
    }

    /// Joint mode samples a contiguous block of the grid: every tile in the rows and columns of the tiles that
    /// touch `rect` grown by `margin` pixels.
    pub(crate) fn joint_block(&self, rect: Rect, margin: usize) -> Vec<Tile> {
        let touching = self.touching(grow_within(rect, margin, self.frame_rect()));
        let span = |index: fn(&Tile) -> usize| {
            (touching.iter().map(index).min().unwrap_or(0), touching.iter().map(index).max().unwrap_or(0))
        };
        let (rows, cols) = (span(|t| t.row), span(|t| t.col));
        self.tiles
            .iter()
            .copied()
            .filter(|t| (rows.0..=rows.1).contains(&t.row) && (cols.0..=cols.1).contains(&t.col))
            .collect()
    }

    /// The pixels a tile's encoder pass sees: the tile, grown by [`VAE_MARGIN`] where the padded frame goes on.
    pub(crate) fn encode_rect(&self, latent: Rect) -> Rect {
        grow_within(latent, VAE_MARGIN, Rect::new(0, 0, self.latent.0, self.latent.1)).scaled(self.downscale)
    }

    /// A tile's blend weights over its pixels (rows, columns): a partition of unity with the grid's other tiles.
    pub(crate) fn weights(&self, tile: &Tile) -> (Vec<f32>, Vec<f32>) {
        let d = self.downscale;
        (pixel_blend_weights(&self.ys, tile.row, d), pixel_blend_weights(&self.xs, tile.col, d))
    }

    /// Rough peak working memory of a render beyond the caller's buffers, in bytes.
    pub(crate) fn estimated_bytes(&self, manifest: &Manifest, settings: &Settings) -> u64 {
        let channels = manifest.latent.channels as u64;
        let d = self.downscale as u64;
        let tile = self.tiles.first().map_or(0, |t| t.latent.width.max(t.latent.height)) as u64 + 2 * VAE_MARGIN as u64;
        // A tile's pixels pass through about a dozen f32 planes of 3 channels (read, encode input, decode output,
        // colour fix buffers); the accumulation band spans a tile's height across the frame.
        let per_tile = tile * tile * d * d * 3 * 4 * 12 + tile * tile * channels * 4 * 8;
        let band = tile * d * self.frame.0 as u64 * 3 * 4 * 2;
        let joint = match settings.mode {
            TileMode::Joint => self.latent.0 as u64 * self.latent.1 as u64 * channels * 4 * 5,
            _ => 0,
        };
        per_tile + band + joint
    }
}

/// Refuses a region that is empty or not inside the output frame.
pub(crate) fn check_region(rect: Rect, (width, height): (usize, usize)) -> Result<()> {
    if rect.is_empty() || !Rect::new(0, 0, width, height).contains(&rect) {
        return Err(Error::InvalidOptions(format!(
            "region {}x{} at ({}, {}) is not inside the {width}x{height} output frame",
            rect.width, rect.height, rect.x, rect.y
        )));
    }
    Ok(())
}

/// `rect` grown by `margin` on every side, clamped to `bounds`.
pub(crate) fn grow_within(rect: Rect, margin: usize, bounds: Rect) -> Rect {
    let (x, y) = (rect.x.saturating_sub(margin).max(bounds.x), rect.y.saturating_sub(margin).max(bounds.y));
    let right = rect.right().saturating_add(margin).min(bounds.right());
    let bottom = rect.bottom().saturating_add(margin).min(bounds.bottom());
    Rect::new(x, y, right - x, bottom - y)
}

/// `inner` relative to `outer`'s top-left.
pub(crate) fn relative(inner: Rect, outer: Rect) -> Rect {
    Rect::new(inner.x - outer.x, inner.y - outer.y, inner.width, inner.height)
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
