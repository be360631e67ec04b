//! The tile engine: plans the frame's tiles on the latent grid and renders the wanted part of the frame with
//! them, independently or jointly, streaming finished rows to a sink.
//!
//! One tile covering the whole (padded) frame is the plain DPIR procedure: no margins (they stop at frame
//! edges), weights of exactly 1. Larger frames are cut into balanced tiles of at most one pass each.

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView3, Axis, CowArray, Zip};

use crate::bundle::{ClipInput, ColorFix};
use crate::colour::wavelet_fix;
use crate::error::{Error, Result};
use crate::noise::{latent_noise, Stream};
use crate::plan::{axis_tiles, blend_weights, gaussian_weights, Rect};
use crate::prompt::{self, assemble, Conditioning, Features};
use crate::restore::{Call, Progress, Restorer, Settings, Stage, TileMode};
use crate::schedule;
use crate::source::{FrameSource, Sink, Upsampling};

/// Latent samples of context given to the VAE beyond a tile's edge (where the frame goes on), so its receptive
/// field sees real neighbours instead of padding. A multiple of every patch size in use.
pub(crate) const VAE_MARGIN: usize = 8;

/// What to render: a rectangle of the output frame read from `source`, with the global prompt from `context`
/// (or `source` itself).
pub(crate) struct Frame<'a> {
    pub source: &'a FrameSource<'a>,
    pub context: Option<&'a FrameSource<'a>>,
    pub rect: Rect,
}

/// One sampling tile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    /// In latent samples of the padded frame.
    latent: Rect,
    /// `latent` in pixels (may reach into the padding).
    pixels: Rect,
    /// The part of `pixels` inside the output frame.
    visible: Rect,
    /// Row and column in the tile grid.
    row: usize,
    col: usize,
}

/// The tile grid of an output frame.
pub(crate) struct Plan {
    /// Output frame (width, height) and the padded latent frame's.
    frame: (usize, usize),
    latent: (usize, usize),
    downscale: usize,
    /// `(start, length)` per tile column and row, in latent samples.
    xs: Vec<(usize, usize)>,
    ys: Vec<(usize, usize)>,
    pub tiles: Vec<Tile>,
}

impl Plan {
    pub(crate) fn new(restorer: &Restorer, frame: (usize, usize), settings: &Settings) -> Plan {
        let manifest = restorer.manifest();
        let patch = manifest.transformer.patch_size;
        let latent = restorer.latent_size(frame.0, frame.1);
        let xs = axis_tiles(latent.0, settings.tile, settings.overlap, patch);
        let ys = axis_tiles(latent.1, settings.tile, settings.overlap, patch);
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
        Plan { frame, latent, downscale, xs, ys, tiles }
    }

    /// The pixels a tile's encoder pass sees: the tile, grown by [`VAE_MARGIN`] where the padded frame goes on.
    fn encode_rect(&self, latent: Rect) -> Rect {
        grow_within(latent, VAE_MARGIN, Rect::new(0, 0, self.latent.0, self.latent.1)).scaled(self.downscale)
    }

    /// Rough peak working memory of a render beyond the caller's buffers, in bytes.
    pub(crate) fn estimated_bytes(&self, restorer: &Restorer, settings: &Settings) -> u64 {
        let channels = restorer.manifest().latent.channels as u64;
        let d = self.downscale as u64;
        let tile = self.tiles.first().map_or(0, |t| t.latent.width.max(t.latent.height)) as u64 + 2 * VAE_MARGIN as u64;
        // A tile's pixels pass through about a dozen f32 planes of 3 channels (read, encode input, decode output,
        // colour fix buffers); the accumulation band spans a tile's height across the frame.
        let per_tile = tile * tile * d * d * 3 * 4 * 12 + tile * tile * channels * 4 * 8;
        let band = tile * d * self.frame.0 as u64 * 3 * 4 * 2;
        let joint = match settings.mode {
            TileMode::Joint => self.latent.0 as u64 * self.latent.1 as u64 * channels * 4 * 5,
            TileMode::Independent => 0,
        };
        per_tile + band + joint
    }
}

/// `rect` grown by `margin` on every side, clamped to `bounds`.
fn grow_within(rect: Rect, margin: usize, bounds: Rect) -> Rect {
    let (x, y) = (rect.x.saturating_sub(margin).max(bounds.x), rect.y.saturating_sub(margin).max(bounds.y));
    let right = (rect.right() + margin).min(bounds.right());
    let bottom = (rect.bottom() + margin).min(bounds.bottom());
    Rect::new(x, y, right - x, bottom - y)
}

/// `inner` relative to `outer`'s top-left.
fn relative(inner: Rect, outer: Rect) -> Rect {
    Rect::new(inner.x - outer.x, inner.y - outer.y, inner.width, inner.height)
}

/// The global prompt: one summary token per global tile of the context image, and, when the context is the frame
/// itself, each global tile's features by rectangle so a sampling tile that coincides with one can reuse them.
struct Global {
    tokens: Vec<Array1<f32>>,
    reusable: Vec<(Rect, Features)>,
}

/// Renders `frame.rect` into `sink` (whose rectangle it is).
pub(crate) fn render(
    restorer: &Restorer,
    frame: &Frame<'_>,
    settings: &Settings,
    text: &Array2<f32>,
    sink: &mut dyn Sink,
    call: &Call,
) -> Result<()> {
    let plan = Plan::new(restorer, frame.source.frame(), settings);
    let wanted: Vec<Tile> =
        plan.tiles.iter().copied().filter(|t| !t.visible.intersect(&frame.rect).is_empty()).collect();
    let progress = |stage, tile| Progress { stage, step: 0, steps: settings.steps, tile, tiles: wanted.len() };
    call.report(progress(Stage::Prompt, 1))?;
    let global = global_prompt(restorer, frame, settings, call)?;
    let engine = Engine { restorer, frame, settings, text, call, plan: &plan, global, tiles: wanted.len() };
    let mut band = Band::new(frame.rect);
    match settings.mode {
        TileMode::Independent if plan.tiles.len() == 1 => {
            // One tile is the whole frame: nothing to blend.
            let tile = &plan.tiles[0];
            let restored = engine.independent_tile(tile, 0)?;
            let alpha = if frame.source.has_alpha() { frame.source.read(frame.rect)?.1 } else { None };
            let keep = restored.slice(window(relative(frame.rect, tile.visible)));
            sink.put((0, 0), keep, alpha.as_ref().map(|a| a.view()));
            call.tile_done();
            return Ok(());
        }
        TileMode::Independent => {
            for (index, tile) in wanted.iter().enumerate() {
                // Rows above this tile's row are final: no later tile reaches them.
                band.flush_until(tile.pixels.y, frame.source, sink)?;
                let restored = engine.independent_tile(tile, index)?;
                band.add(tile.visible, &restored, &plan_weights(&plan.xs, &plan.ys, tile, plan.downscale));
                call.tile_done();
            }
        }
        TileMode::Joint => engine.joint(&wanted, &mut band, sink)?,
    }
    band.flush_until(usize::MAX, frame.source, sink)
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

/// The input rectangle a render of `rect` reads, for an input frame of `frame_in` and output frame `frame_out`.
pub(crate) fn region_of_interest(
    restorer: &Restorer,
    frame_in: (usize, usize),
    frame_out: (usize, usize),
    rect: Rect,
    settings: &Settings,
) -> Result<Rect> {
    check_region(rect, frame_out)?;
    let plan = Plan::new(restorer, frame_out, settings);
    let up = Upsampling::new(frame_in, frame_out);
    let tiles: Vec<Tile> = match settings.mode {
        TileMode::Independent => {
            plan.tiles.iter().copied().filter(|t| !t.visible.intersect(&rect).is_empty()).collect()
        }
        TileMode::Joint => joint_grid(&plan, rect, settings.context_margin),
    };
    Ok(tiles.iter().map(|t| up.input_rect(plan.encode_rect(t.latent))).fold(Rect::default(), |a, b| a.union(&b)))
}

/// Joint mode samples a contiguous block of the grid: every tile in the rows and columns of the tiles that
/// touch `rect` grown by `margin` pixels.
fn joint_grid(plan: &Plan, rect: Rect, margin: usize) -> Vec<Tile> {
    let grown = grow_within(rect, margin, Rect::new(0, 0, plan.frame.0, plan.frame.1));
    let touching = || plan.tiles.iter().filter(|t| !t.visible.intersect(&grown).is_empty());
    let rows = (touching().map(|t| t.row).min().unwrap_or(0), touching().map(|t| t.row).max().unwrap_or(0));
    let cols = (touching().map(|t| t.col).min().unwrap_or(0), touching().map(|t| t.col).max().unwrap_or(0));
    plan.tiles
        .iter()
        .copied()
        .filter(|t| (rows.0..=rows.1).contains(&t.row) && (cols.0..=cols.1).contains(&t.col))
        .collect()
}

/// A tile's blend weights over its pixels (rows, columns): a partition of unity with the grid's other tiles.
fn plan_weights(xs: &[(usize, usize)], ys: &[(usize, usize)], tile: &Tile, downscale: usize) -> (Vec<f32>, Vec<f32>) {
    let pixels =
        |axis: &[(usize, usize)]| axis.iter().map(|&(s, l)| (s * downscale, l * downscale)).collect::<Vec<_>>();
    (blend_weights(&pixels(ys), tile.row), blend_weights(&pixels(xs), tile.col))
}

fn global_prompt(restorer: &Restorer, frame: &Frame<'_>, settings: &Settings, call: &Call) -> Result<Global> {
    let source = frame.context.unwrap_or(frame.source);
    let (width, height) = source.frame();
    let clip = &restorer.manifest().clip;
    let rects = prompt::global_tiles(width, height, clip);
    // A frame that is one pass reconstructs the whole frame once and crops the global tiles from it, as the
    // procedure says; larger frames reconstruct each global tile on its own, to keep memory per tile.
    let whole = Rect::new(0, 0, width, height);
    let (latent_w, latent_h) = restorer.latent_size(width, height);
    let one_pass = latent_w <= settings.tile && latent_h <= settings.tile;
    let reconstructed = match settings.clip_input {
        ClipInput::InitialRestoration if one_pass && frame.context.is_none() => {
            Some(clip_image(restorer, source, whole, settings, call)?)
        }
        _ => None,
    };
    let mut crops = Vec::with_capacity(rects.len());
    for &rect in &rects {
        let image = match &reconstructed {
            Some(frame) => CowArray::from(frame.slice(window(rect))),
            None => CowArray::from(clip_image(restorer, source, rect, settings, call)?),
        };
        crops.push(prompt::preprocess(image.view(), clip));
    }
    let features = restorer.clip_features(&crops, call)?;
    let tokens = features.iter().map(Features::summary).collect();
    // A tile whose visible part is a global tile reuses its features when they are the same numbers it would
    // compute: always for the input itself, and for the reconstruction only when the frame is one pass (larger
    // frames reconstruct a tile from its own latent, with margins).
    let same_numbers = settings.clip_input == ClipInput::Lq || reconstructed.is_some();
    let reusable =
        if frame.context.is_none() && same_numbers { rects.into_iter().zip(features).collect() } else { Vec::new() };
    Ok(Global { tokens, reusable })
}

/// What CLIP sees of an output-frame rectangle: the (upsampled) input, or its reconstruction by the VAE.
fn clip_image(
    restorer: &Restorer,
    source: &FrameSource<'_>,
    rect: Rect,
    settings: &Settings,
    call: &Call,
) -> Result<Array3<f32>> {
    match settings.clip_input {
        ClipInput::Lq => Ok(source.read(rect)?.0),
        ClipInput::InitialRestoration => {
            // Encode the rectangle padded to the model's multiple (edges repeated), decode, keep the rectangle.
            let m = restorer.manifest().pixel_multiple();
            let d = restorer.manifest().latent.downscale;
            let padded = Rect::new(rect.x / m * m, rect.y / m * m, 0, 0);
            let padded = Rect {
                width: (rect.right() - padded.x).div_ceil(m) * m,
                height: (rect.bottom() - padded.y).div_ceil(m) * m,
                ..padded
            };
            let (lq, _) = source.read(padded)?;
            let z = restorer.encode(lq.view(), (padded.y / d, padded.x / d), settings, call)?;
            restorer.decode(z.view(), relative(rect, padded), call)
        }
    }
}

/// Everything a tile needs from its render.
struct Engine<'a> {
    restorer: &'a Restorer,
    frame: &'a Frame<'a>,
    settings: &'a Settings,
    text: &'a Array2<f32>,
    call: &'a Call<'a>,
    plan: &'a Plan,
    global: Global,
    tiles: usize,
}

impl Engine<'_> {
    fn report(&self, stage: Stage, step: usize, tile: usize) -> Result<()> {
        let progress = Progress { stage, step, steps: self.settings.steps, tile: tile + 1, tiles: self.tiles };
        self.call.report(progress)
    }

    /// The tile's input latent (from its encoder rectangle) and its LQ pixels over that rectangle.
    fn encode_tile(&self, tile: &Tile) -> Result<(Array4<f32>, Array3<f32>, Rect)> {
        let rect = self.plan.encode_rect(tile.latent);
        let (lq, _) = self.frame.source.read(rect)?;
        let d = self.plan.downscale;
        let z = self.restorer.encode(lq.view(), (rect.y / d, rect.x / d), self.settings, self.call)?;
        let at = relative(tile.pixels, rect);
        let (y, x) = (at.y / d, at.x / d);
        let z_tile = z.slice(s![.., .., y..y + tile.latent.height, x..x + tile.latent.width]).to_owned();
        Ok((z_tile, lq, rect))
    }

    /// The conditioning of a tile: its own CLIP features (reused when a global tile is the same rectangle) with
    /// the shared global tokens and text.
    fn condition(&self, tile: &Tile, lq: &Array3<f32>, lq_rect: Rect, z_lq: &Array4<f32>) -> Result<Conditioning> {
        let reused = self.global.reusable.iter().find(|(rect, _)| *rect == tile.visible).map(|(_, f)| f.clone());
        let local = match reused {
            Some(features) => features,
            None => {
                let image = match self.settings.clip_input {
                    ClipInput::Lq => CowArray::from(lq.slice(window(relative(tile.visible, lq_rect)))),
                    ClipInput::InitialRestoration => CowArray::from(self.restorer.decode(
                        z_lq.view(),
                        relative(tile.visible, tile.pixels),
                        self.call,
                    )?),
                };
                let crop = prompt::preprocess(image.view(), &self.restorer.manifest().clip);
                self.restorer.clip_features(&[crop], self.call)?.remove(0)
            }
        };
        Ok(assemble(self.restorer.manifest(), &local, &self.global.tokens, self.text))
    }

    /// The starting noise over a latent rectangle: the caller's, or position-locked draws.
    fn start_noise(&self, latent: Rect) -> Result<Array4<f32>> {
        let channels = self.restorer.manifest().latent.channels;
        match &self.call.options().noise {
            Some(noise) => {
                let want = (1, channels, self.plan.latent.1, self.plan.latent.0);
                if noise.dim() != want {
                    return Err(Error::InvalidOptions(format!(
                        "noise has shape {:?}; this image needs {want:?}",
                        noise.dim()
                    )));
                }
                Ok(noise.slice(s![.., .., latent.y..latent.bottom(), latent.x..latent.right()]).to_owned())
            }
            None => Ok(latent_noise(
                self.settings.seed,
                Stream::Start,
                channels,
                (latent.y as i64, latent.x as i64),
                (latent.height, latent.width),
            )),
        }
    }

    /// Decoded pixels of `keep` (output frame) from a latent covering `latent_rect`, checked and colour-fixed
    /// against the LQ over the same pixels.
    fn finish(&self, z: &Array4<f32>, latent_rect: Rect, keep: Rect, lq: ArrayView3<'_, f32>) -> Result<Array3<f32>> {
        let pixels = latent_rect.scaled(self.plan.downscale);
        let restored = self.restorer.decode(z.view(), relative(keep, pixels), self.call)?;
        check_output(restored.view(), lq)?;
        Ok(match self.settings.color_fix {
            ColorFix::Wavelet => wavelet_fix(restored, lq),
            ColorFix::None => restored,
        })
    }

    /// Samples, decodes and colour-fixes one tile on its own; returns its visible pixels.
    fn independent_tile(&self, tile: &Tile, index: usize) -> Result<Array3<f32>> {
        self.report(Stage::Encode, 0, index)?;
        let (z_lq, lq, lq_rect) = self.encode_tile(tile)?;
        self.report(Stage::Prompt, 0, index)?;
        let condition = self.condition(tile, &lq, lq_rect, &z_lq)?;
        let mut z = self.start_noise(tile.latent)?;
        let fixed = self.restorer.step_inputs(z_lq.view(), &[&condition], self.settings, self.call)?;
        let sigmas = schedule::sigmas(&self.restorer.manifest().scheduler, self.settings.steps);
        for (step, pair) in sigmas.windows(2).enumerate() {
            self.report(Stage::Sample, step, index)?;
            let v = self.restorer.velocity(z.view(), &fixed, pair[0], self.settings, self.call)?;
            euler_step(&mut z, &v, pair[1] - pair[0], step)?;
        }
        self.report(Stage::Decode, self.settings.steps, index)?;
        let lq_visible = lq.slice(window(relative(tile.visible, lq_rect)));
        self.finish(&z, tile.latent, tile.visible, lq_visible)
    }

    /// Samples the block of the grid around the wanted tiles jointly, then decodes the wanted tiles with margins.
    fn joint(&self, wanted: &[Tile], band: &mut Band, sink: &mut dyn Sink) -> Result<()> {
        let grid = joint_grid(self.plan, self.frame.rect, self.settings.context_margin);
        let window_rect = grid.iter().fold(Rect::default(), |a, t| a.union(&t.latent));
        let rows: Vec<(usize, usize)> = self.sub_axis(&self.plan.ys, &grid, |t| t.row);
        let cols: Vec<(usize, usize)> = self.sub_axis(&self.plan.xs, &grid, |t| t.col);
        let (row0, col0) = (grid[0].row, grid[0].col);
        let channels = self.restorer.manifest().latent.channels;
        let latent_shape = (1, channels, window_rect.height, window_rect.width);
        let at = |t: &Tile| relative(t.latent, window_rect);

        // The input latent of the block: tiles encoded with margins, blended over their overlaps.
        let mut z_lq = Array4::<f32>::zeros(latent_shape);
        let mut z_lq_weight = Array2::<f32>::zeros((window_rect.height, window_rect.width));
        let mut conditions = Vec::with_capacity(grid.len());
        for (index, tile) in grid.iter().enumerate() {
            self.report(Stage::Encode, 0, index)?;
            let (z_tile, lq, lq_rect) = self.encode_tile(tile)?;
            let (wy, wx) = (blend_weights(&rows, tile.row - row0), blend_weights(&cols, tile.col - col0));
            let r = at(tile);
            let mut target = z_lq.slice_mut(s![.., .., r.y..r.bottom(), r.x..r.right()]);
            Zip::indexed(&mut target).and(&z_tile).for_each(|(_, _, y, x), t, &v| *t += wy[y] * wx[x] * v);
            let mut weight = z_lq_weight.slice_mut(s![r.y..r.bottom(), r.x..r.right()]);
            Zip::indexed(&mut weight).for_each(|(y, x), t| *t += wy[y] * wx[x]);
            self.report(Stage::Prompt, 0, index)?;
            conditions.push(self.condition(tile, &lq, lq_rect, &z_tile)?);
        }
        // A single tile's weights are exactly 1, and the division leaves its latent exact.
        Zip::indexed(&mut z_lq).for_each(|(_, _, y, x), v| *v /= z_lq_weight[[y, x]]);

        let mut z = self.start_noise(window_rect)?;
        let sigmas = schedule::sigmas(&self.restorer.manifest().scheduler, self.settings.steps);
        let gauss: Vec<Array2<f32>> = grid
            .iter()
            .map(|t| {
                let (gy, gx) = (gaussian_weights(t.latent.height), gaussian_weights(t.latent.width));
                Array2::from_shape_fn((gy.len(), gx.len()), |(y, x)| gy[y] * gx[x])
            })
            .collect();
        // The tiles of a transformer call, stacked along the batch axis.
        let stack = |array: &Array4<f32>, batch: &[Tile]| {
            let views: Vec<_> = batch
                .iter()
                .map(|t| array.slice(s![.., .., at(t).y..at(t).bottom(), at(t).x..at(t).right()]))
                .collect();
            ndarray::concatenate(Axis(0), &views).expect("tiles share one size")
        };
        let fixed = grid
            .chunks(self.settings.batch)
            .zip(conditions.chunks(self.settings.batch))
            .map(|(batch, conds)| {
                let conds: Vec<&Conditioning> = conds.iter().collect();
                self.restorer.step_inputs(stack(&z_lq, batch).view(), &conds, self.settings, self.call)
            })
            .collect::<Result<Vec<_>>>()?;
        for (step, pair) in sigmas.windows(2).enumerate() {
            let mut v_sum = Array4::<f32>::zeros(latent_shape);
            let mut w_sum = Array2::<f32>::zeros((window_rect.height, window_rect.width));
            let mut single = None;
            for (batch_index, batch) in grid.chunks(self.settings.batch).enumerate() {
                self.report(Stage::Sample, step, batch_index * self.settings.batch)?;
                let first = batch_index * self.settings.batch;
                let v = self.restorer.velocity(
                    stack(&z, batch).view(),
                    &fixed[batch_index],
                    pair[0],
                    self.settings,
                    self.call,
                )?;
                if grid.len() == 1 {
                    single = Some(v);
                    continue;
                }
                for (k, tile) in batch.iter().enumerate() {
                    let (r, g) = (at(tile), &gauss[first + k]);
                    let mut target = v_sum.slice_mut(s![0, .., r.y..r.bottom(), r.x..r.right()]);
                    Zip::indexed(&mut target)
                        .and(&v.index_axis(Axis(0), k))
                        .for_each(|(_, y, x), t, &v| *t += g[[y, x]] * v);
                    w_sum.slice_mut(s![r.y..r.bottom(), r.x..r.right()]).zip_mut_with(g, |t, &g| *t += g);
                }
            }
            let v = match single {
                Some(v) => v,
                None => {
                    Zip::indexed(&mut v_sum).for_each(|(_, _, y, x), v| *v /= w_sum[[y, x]]);
                    v_sum
                }
            };
            euler_step(&mut z, &v, pair[1] - pair[0], step)?;
        }

        // Decode the wanted tiles with margins inside the block, then blend over the overlaps.
        let bounds = window_rect;
        let pixel_axis = |axis: &[(usize, usize)]| {
            axis.iter().map(|&(s, l)| (s * self.plan.downscale, l * self.plan.downscale)).collect::<Vec<_>>()
        };
        let (row_px, col_px) = (pixel_axis(&rows), pixel_axis(&cols));
        for (index, tile) in grid.iter().enumerate() {
            if !wanted.iter().any(|w| w.latent == tile.latent) {
                continue;
            }
            band.flush_until(tile.pixels.y, self.frame.source, sink)?;
            self.report(Stage::Decode, self.settings.steps, index)?;
            let grown = grow_within(tile.latent, VAE_MARGIN, bounds);
            let r = relative(grown, window_rect);
            let z_tile = z.slice(s![.., .., r.y..r.bottom(), r.x..r.right()]).to_owned();
            let visible =
                grown.scaled(self.plan.downscale).intersect(&Rect::new(0, 0, self.plan.frame.0, self.plan.frame.1));
            let (lq, _) = self.frame.source.read(visible)?;
            let fixed = self.finish(&z_tile, grown, visible, lq.view())?;
            let restored = fixed.slice(window(relative(tile.visible, visible))).to_owned();
            let weights = (blend_weights(&row_px, tile.row - row0), blend_weights(&col_px, tile.col - col0));
            band.add(tile.visible, &restored, &weights);
            self.call.tile_done();
        }
        Ok(())
    }

    /// The `(start, length)` entries of a plan axis that the grid block uses, in the block's own latent frame.
    fn sub_axis(&self, axis: &[(usize, usize)], grid: &[Tile], index: impl Fn(&Tile) -> usize) -> Vec<(usize, usize)> {
        let first = grid.iter().map(&index).min().unwrap_or(0);
        let last = grid.iter().map(&index).max().unwrap_or(0);
        let origin = axis[first].0;
        axis[first..=last].iter().map(|&(s, l)| (s - origin, l)).collect()
    }
}

/// `z += dt * v`, refusing a latent that went NaN or infinite.
fn euler_step(z: &mut Array4<f32>, v: &Array4<f32>, dt: f32, step: usize) -> Result<()> {
    let mut finite = true;
    Zip::from(z).and(v).for_each(|z, &v| {
        *z += dt * v;
        finite &= z.is_finite();
    });
    if finite {
        Ok(())
    } else {
        Err(Error::BadOutput(format!("the latent became NaN or infinite at step {}", step + 1)))
    }
}

/// The ndarray slice of a (C, H, W) array for a rectangle.
fn window(rect: Rect) -> ndarray::SliceInfo<[ndarray::SliceInfoElem; 3], ndarray::Ix3, ndarray::Ix3> {
    s![.., rect.y..rect.bottom(), rect.x..rect.right()]
}

/// A black result from an input that is not black means the model failed, not that the photo is dark.
fn check_output(restored: ArrayView3<'_, f32>, lq: ArrayView3<'_, f32>) -> Result<()> {
    const BLACK: f32 = 1.0 / 255.0;
    let brightest = |a: ArrayView3<'_, f32>| a.iter().copied().fold(0.0f32, f32::max);
    if brightest(restored) < BLACK && brightest(lq) > 8.0 * BLACK {
        return Err(Error::BadOutput("the decoded image is black where the input is not".into()));
    }
    Ok(())
}

/// Weighted sums of tile pixels over the rows of the output rectangle that are still open.
///
/// Each pixel is the weighted mean of the tiles that cover it: weights from neighbouring tiles form a partition
/// of unity when only neighbours overlap, and dividing by their sum keeps it exact when tiles overlap more.
struct Band {
    /// The rectangle being rendered (output frame).
    rect: Rect,
    /// First row (output frame) not yet written.
    top: usize,
    /// Weighted colour and the sum of weights of rows `top..`, full rectangle width.
    sum: Array3<f32>,
    weight: Array2<f32>,
}

impl Band {
    fn new(rect: Rect) -> Band {
        Band { rect, top: rect.y, sum: Array3::zeros((3, 0, rect.width)), weight: Array2::zeros((0, rect.width)) }
    }

    /// Adds `weights` (rows, columns of the tile from `visible`'s top-left) times `pixels` over `visible`,
    /// clipped to the rectangle.
    fn add(&mut self, visible: Rect, pixels: &Array3<f32>, (wy, wx): &(Vec<f32>, Vec<f32>)) {
        let clip = visible.intersect(&self.rect);
        if clip.is_empty() {
            return;
        }
        let needed = clip.bottom() - self.top;
        let have = self.weight.dim().0;
        if needed > have {
            let more = needed - have;
            self.sum = ndarray::concatenate![Axis(1), self.sum, Array3::zeros((3, more, self.rect.width))];
            self.weight = ndarray::concatenate![Axis(0), self.weight, Array2::zeros((more, self.rect.width))];
        }
        let (tx, bx) = (clip.x - visible.x..clip.right() - visible.x, clip.x - self.rect.x..clip.right() - self.rect.x);
        let weights = &wx[tx.clone()];
        for y in clip.y..clip.bottom() {
            let (ty, by) = (y - visible.y, y - self.top);
            for c in 0..3 {
                let src = pixels.slice(s![c, ty, tx.clone()]);
                let dst = self.sum.slice_mut(s![c, by, bx.clone()]);
                Zip::from(dst).and(&src).and(weights).for_each(|d, &v, &w| *d += wy[ty] * w * v);
            }
            Zip::from(self.weight.slice_mut(s![by, bx.clone()])).and(weights).for_each(|d, &w| *d += wy[ty] * w);
        }
    }

    /// Writes rows above `y` (output frame) to the sink and forgets them.
    fn flush_until(&mut self, y: usize, source: &FrameSource<'_>, sink: &mut dyn Sink) -> Result<()> {
        let end = y.min(self.rect.bottom()).min(self.top + self.weight.dim().0);
        if end <= self.top {
            return Ok(());
        }
        let rows = end - self.top;
        let mut done = self.sum.slice(s![.., ..rows, ..]).to_owned();
        for mut plane in done.outer_iter_mut() {
            Zip::from(&mut plane)
                .and(self.weight.slice(s![..rows, ..]))
                .for_each(|v, &w| *v = (*v / w).clamp(0.0, 1.0));
        }
        let rect = Rect::new(self.rect.x, self.top, self.rect.width, rows);
        let alpha = if source.has_alpha() { source.read(rect)?.1 } else { None };
        sink.put((0, self.top - self.rect.y), done.view(), alpha.as_ref().map(|a| a.view()));
        self.sum = self.sum.slice(s![.., rows.., ..]).to_owned();
        self.weight = self.weight.slice(s![rows.., ..]).to_owned();
        self.top = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixels::Image;
    use crate::restore::RestoreOptions;
    use crate::runtime::RuntimeOptions;
    use crate::source::SourceData;

    /// Encoding and decoding tile by tile with margins, against one pass over the whole image (tiny bundle,
    /// whose VAE sees a few latent samples around each one: the margin covers it).
    #[test]
    fn tiled_vae_matches_an_untiled_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny");
        let tiny = Restorer::load(dir, &RuntimeOptions { threads: 1, ..Default::default() }).unwrap();
        let (w, h) = (256usize, 192usize);
        let rgb = Array3::from_shape_fn((3, h, w), |(c, y, x)| ((x * 7 + y * 13 + c * 50) % 97) as f32 / 96.0);
        let image = Image::from_planes(rgb, None).unwrap();
        let options = RestoreOptions { tile_size: Some(8), tile_overlap: Some(2), ..Default::default() };
        let settings = tiny.settings(&options).unwrap();
        let call = Call::for_tests(&options);
        let source = FrameSource::new(SourceData::Image(&image), (0, 0), (w, h), (w, h));
        let plan = Plan::new(&tiny, (w, h), &settings);
        assert!(plan.tiles.len() > 4);

        let whole = tiny.encode(image.rgb().view(), (0, 0), &settings, &call).unwrap();
        let decoded_whole = tiny.decode(whole.view(), Rect::new(0, 0, w, h), &call).unwrap();
        let (mut encode_diff, mut decode_diff) = (0.0f32, 0.0f32);
        for tile in &plan.tiles {
            let rect = plan.encode_rect(tile.latent);
            let (lq, _) = source.read(rect).unwrap();
            let z = tiny.encode(lq.view(), (rect.y / 8, rect.x / 8), &settings, &call).unwrap();
            let at = relative(tile.pixels, rect);
            let l = tile.latent;
            let z_tile = z.slice(s![.., .., at.y / 8..at.y / 8 + l.height, at.x / 8..at.x / 8 + l.width]);
            let z_whole = whole.slice(s![.., .., l.y..l.bottom(), l.x..l.right()]);
            encode_diff = z_tile.iter().zip(z_whole).map(|(a, b)| (a - b).abs()).fold(encode_diff, f32::max);

            let grown = grow_within(l, VAE_MARGIN, Rect::new(0, 0, w / 8, h / 8));
            let z_grown = whole.slice(s![.., .., grown.y..grown.bottom(), grown.x..grown.right()]);
            let pixels = tiny.decode(z_grown, relative(tile.visible, grown.scaled(8)), &call).unwrap();
            let expected = decoded_whole.slice(window(tile.visible));
            decode_diff = pixels.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(decode_diff, f32::max);
        }
        eprintln!(
            "tiled VAE against one pass: encode max abs {encode_diff:.2e} (latent), decode {decode_diff:.2e} (pixels)"
        );
        assert!(encode_diff < 1e-4 && decode_diff < 1e-4, "{encode_diff} {decode_diff}");
    }
}
