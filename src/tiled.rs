//! The tile engine: drives the stages (encode, prompt, sample, decode) over the tiles a render of one rectangle
//! of a frame needs, independently or jointly, and streams the finished rows to a sink.

use ndarray::{s, Array2, Array3, Array4, ArrayView3, CowArray, Ix4, Zip};

use crate::bundle::{ClipInput, ColorFix, VAE_MARGIN};
use crate::colour::wavelet_fix;
use crate::error::{Error, Result};
use crate::memory::Need;
use crate::model::{Conditioning, Features, Model};
use crate::noise::{latent_noise, Stream};
use crate::options::{Settings, TileMode};
use crate::pixels::{copied, zeroed_plane, zeroed_planes, zeroed_rgb};
use crate::plan::{blend_weights, check_region, grow_within, pixel_blend_weights, relative, Plan, Rect, Tile};
use crate::progress::{Call, Progress, Stage};
use crate::prompt::FramePrompt;
use crate::residency::Phase;
use crate::sample;
use crate::source::{FrameSource, Sink, Upsampling};

/// One render: a rectangle of the output frame read from `source`, with what the frame's tiles share.
pub(crate) struct Render<'a> {
    pub model: &'a Model,
    pub settings: &'a Settings,
    pub plan: &'a Plan,
    pub prompt: &'a FramePrompt,
    /// What the stages need beside the weights, for the memory budget.
    pub need: &'a Need,
    /// The caller's starting noise over the whole padded latent frame, replacing the seeded draws.
    pub noise: Option<&'a Array4<f32>>,
    pub source: &'a FrameSource<'a>,
    /// In output-frame pixels; the sink's rectangle.
    pub rect: Rect,
    pub call: &'a Call<'a>,
}

/// The input rectangle (frame coordinates) a render of `rect` reads, for an input frame of `frame_in`.
pub(crate) fn region_of_interest(
    plan: &Plan,
    frame_in: (usize, usize),
    rect: Rect,
    settings: &Settings,
) -> Result<Rect> {
    check_region(rect, plan.frame)?;
    let up = Upsampling::new(frame_in, plan.frame);
    let tiles = plan.sampled(rect, settings);
    Ok(tiles.iter().map(|t| up.input_rect(plan.encode_rect(t.latent))).fold(Rect::default(), |a, b| a.union(&b)))
}

impl Render<'_> {
    /// Renders the rectangle into `sink`: the tiles' prompts first, then each tile's sampling, so that within a
    /// memory budget the encoders and the transformer need not be loaded at once.
    pub(crate) fn run(&self, sink: &mut dyn Sink) -> Result<()> {
        let wanted = self.plan.touching(self.rect);
        let mut band = Band::new(self.rect);
        if self.settings.mode == TileMode::Joint {
            self.joint(&wanted, &mut band, sink)?;
            return band.flush_until(usize::MAX, self.source, sink);
        }
        let prompts = self.prompts(&wanted)?;
        self.model.enter(Phase::Sample, self.need);
        if self.plan.tiles.len() == 1 {
            // One tile is the whole frame: nothing to blend.
            let tile = &self.plan.tiles[0];
            let restored = self.independent_tile(tile, &prompts[0], 0, 1)?;
            let alpha = if self.source.has_alpha() { self.source.read(self.rect)?.1 } else { None };
            let keep = restored.slice(window(relative(self.rect, tile.visible)));
            sink.put((0, 0), keep, alpha.as_ref().map(|a| a.view()));
            self.call.tile_done();
            return Ok(());
        }
        for (index, (tile, prompt)) in wanted.iter().zip(&prompts).enumerate() {
            // Rows above this tile's row are final: no later tile reaches them.
            band.flush_until(tile.pixels.y, self.source, sink)?;
            let restored = self.independent_tile(tile, prompt, index, wanted.len())?;
            band.add(tile.visible, &restored, &self.plan.weights(tile))?;
            self.call.tile_done();
        }
        band.flush_until(usize::MAX, self.source, sink)
    }

    /// The prompt stage of `tiles`: each one's own CLIP features, from what CLIP sees of its visible pixels (the
    /// LQ pixels, or the decoded input latent).
    fn prompts(&self, tiles: &[Tile]) -> Result<Vec<Features>> {
        self.model.enter(Phase::Prompt, self.need);
        let mut prompts = Vec::with_capacity(tiles.len());
        for (index, tile) in tiles.iter().enumerate() {
            self.call.report(Progress::prompt(self.settings.steps, index + 1, tiles.len()))?;
            let sees = || match self.settings.clip_input {
                ClipInput::Lq => {
                    let rect = self.plan.encode_rect(tile.latent);
                    let lq = self.source.read(rect)?.0;
                    Ok(CowArray::from(lq.slice(window(relative(tile.visible, rect))).to_owned()))
                }
                ClipInput::InitialRestoration => {
                    let (z_lq, _, _) = self.encode_tile(tile)?;
                    let keep = relative(tile.visible, tile.pixels);
                    Ok(CowArray::from(self.model.decode(z_lq.view(), keep, self.call)?))
                }
            };
            prompts.push(self.prompt.local_features(self.model, tile.visible, sees, self.call)?);
        }
        Ok(prompts)
    }

    /// Reports `stage` of tile `index` (from 0) of `tiles`.
    fn report(&self, stage: Stage, step: usize, index: usize, tiles: usize) -> Result<()> {
        let progress = match self.settings.mode {
            TileMode::Joint => Progress::joint,
            _ => Progress::per_tile,
        };
        self.call.report(progress(stage, step, self.settings.steps, index + 1, tiles))
    }

    /// The tile's input latent (from its encoder rectangle) and its LQ pixels over that rectangle.
    fn encode_tile(&self, tile: &Tile) -> Result<(Array4<f32>, Array3<f32>, Rect)> {
        let rect = self.plan.encode_rect(tile.latent);
        let (lq, _) = self.source.read(rect)?;
        let d = self.plan.downscale;
        let posterior = self.settings.posterior.then_some(self.settings.seed);
        let z = self.model.encode(lq.view(), (rect.y / d, rect.x / d), posterior, self.call)?;
        let at = relative(tile.pixels, rect);
        let (y, x) = (at.y / d, at.x / d);
        let z_tile = z.slice(s![.., .., y..y + tile.latent.height, x..x + tile.latent.width]).to_owned();
        Ok((z_tile, lq, rect))
    }

    /// The starting noise over a latent rectangle: the caller's, or position-locked draws.
    fn start_noise(&self, latent: Rect) -> Result<Array4<f32>> {
        let channels = self.model.manifest().latent.channels;
        match self.noise {
            // Its shape is the padded latent frame's (checked by `Settings::resolve`).
            Some(noise) => Ok(noise.slice(s![.., .., latent.y..latent.bottom(), latent.x..latent.right()]).to_owned()),
            None => latent_noise(
                self.settings.seed,
                Stream::Start,
                channels,
                (latent.y as i64, latent.x as i64),
                (latent.height, latent.width),
            ),
        }
    }

    /// Decoded pixels of `keep` (output frame) from a latent covering `latent_rect`, checked and colour-fixed
    /// against the LQ over the same pixels.
    fn finish(&self, z: &Array4<f32>, latent_rect: Rect, keep: Rect, lq: ArrayView3<'_, f32>) -> Result<Array3<f32>> {
        let pixels = latent_rect.scaled(self.plan.downscale);
        let restored = self.model.decode(z.view(), relative(keep, pixels), self.call)?;
        check_output(restored.view(), lq)?;
        Ok(match self.settings.color_fix {
            ColorFix::Wavelet => wavelet_fix(restored, lq),
            ColorFix::None => restored,
        })
    }

    /// Samples, decodes and colour-fixes one tile on its own; returns its visible pixels.
    fn independent_tile(&self, tile: &Tile, prompt: &Features, index: usize, tiles: usize) -> Result<Array3<f32>> {
        self.report(Stage::Encode, 0, index, tiles)?;
        let (z_lq, lq, lq_rect) = self.encode_tile(tile)?;
        let condition = self.prompt.condition(self.model.manifest(), prompt);
        let noise = self.start_noise(tile.latent)?;
        let report = |step| self.report(Stage::Sample, step, index, tiles);
        let z = sample::tile(self.model, noise, z_lq.view(), &condition, self.settings, self.call, report)?;
        self.report(Stage::Decode, self.settings.steps, index, tiles)?;
        let lq_visible = lq.slice(window(relative(tile.visible, lq_rect)));
        self.finish(&z, tile.latent, tile.visible, lq_visible)
    }

    /// Samples the block of the grid around the wanted tiles jointly, then decodes the wanted tiles with margins.
    fn joint(&self, wanted: &[Tile], band: &mut Band, sink: &mut dyn Sink) -> Result<()> {
        let block = self.plan.joint_block(self.rect, self.settings.context_margin);
        let tiles = block.len();
        let block_rect = block.iter().fold(Rect::default(), |a, t| a.union(&t.latent));
        let rows = sub_axis(&self.plan.ys, &block, |t| t.row);
        let cols = sub_axis(&self.plan.xs, &block, |t| t.col);
        let (row0, col0) = (block[0].row, block[0].col);
        let channels = self.model.manifest().latent.channels;
        let at = |t: &Tile| relative(t.latent, block_rect);
        let prompts = self.prompts(&block)?;
        let conditions: Vec<Conditioning> =
            prompts.iter().map(|p| self.prompt.condition(self.model.manifest(), p)).collect();
        self.model.enter(Phase::Sample, self.need);

        // The input latent of the block: tiles encoded with margins, blended over their overlaps.
        let mut z_lq = zeroed_planes(Ix4(1, channels, block_rect.height, block_rect.width))?;
        let mut z_lq_weight = zeroed_plane(block_rect.height, block_rect.width)?;
        for (index, tile) in block.iter().enumerate() {
            self.report(Stage::Encode, 0, index, tiles)?;
            let (z_tile, _, _) = self.encode_tile(tile)?;
            let (wy, wx) = (blend_weights(&rows, tile.row - row0), blend_weights(&cols, tile.col - col0));
            let r = at(tile);
            let mut target = z_lq.slice_mut(s![.., .., r.y..r.bottom(), r.x..r.right()]);
            Zip::indexed(&mut target).and(&z_tile).for_each(|(_, _, y, x), t, &v| *t += wy[y] * wx[x] * v);
            let mut weight = z_lq_weight.slice_mut(s![r.y..r.bottom(), r.x..r.right()]);
            Zip::indexed(&mut weight).for_each(|(y, x), t| *t += wy[y] * wx[x]);
        }
        // A single tile's weights are exactly 1, and the division leaves its latent exact.
        Zip::indexed(&mut z_lq).for_each(|(_, _, y, x), v| *v /= z_lq_weight[[y, x]]);

        let noise = self.start_noise(block_rect)?;
        let windows: Vec<Rect> = block.iter().map(at).collect();
        let report = |step, tile| self.report(Stage::Sample, step, tile, tiles);
        let z = sample::joint(self.model, noise, &z_lq, &windows, &conditions, self.settings, self.call, report)?;

        // Decode the wanted tiles with margins inside the block, then blend over the overlaps.
        for (index, tile) in block.iter().enumerate() {
            if !wanted.iter().any(|w| w.latent == tile.latent) {
                continue;
            }
            band.flush_until(tile.pixels.y, self.source, sink)?;
            self.report(Stage::Decode, self.settings.steps, index, tiles)?;
            let grown = grow_within(tile.latent, VAE_MARGIN, block_rect);
            let r = relative(grown, block_rect);
            let z_tile = z.slice(s![.., .., r.y..r.bottom(), r.x..r.right()]).to_owned();
            let visible = grown.scaled(self.plan.downscale).intersect(&self.plan.frame_rect());
            let (lq, _) = self.source.read(visible)?;
            let fixed = self.finish(&z_tile, grown, visible, lq.view())?;
            let restored = fixed.slice(window(relative(tile.visible, visible))).to_owned();
            let d = self.plan.downscale;
            let weights =
                (pixel_blend_weights(&rows, tile.row - row0, d), pixel_blend_weights(&cols, tile.col - col0, d));
            band.add(tile.visible, &restored, &weights)?;
            self.call.tile_done();
        }
        Ok(())
    }
}

/// The `(start, length)` entries of a plan axis that a block of the grid uses, in the block's own latent frame.
fn sub_axis(axis: &[(usize, usize)], block: &[Tile], index: impl Fn(&Tile) -> usize) -> Vec<(usize, usize)> {
    let first = block.iter().map(&index).min().unwrap_or(0);
    let last = block.iter().map(&index).max().unwrap_or(0);
    let origin = axis[first].0;
    axis[first..=last].iter().map(|&(s, l)| (s - origin, l)).collect()
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
    fn add(&mut self, visible: Rect, pixels: &Array3<f32>, (wy, wx): &(Vec<f32>, Vec<f32>)) -> Result<()> {
        let clip = visible.intersect(&self.rect);
        if clip.is_empty() {
            return Ok(());
        }
        let needed = clip.bottom() - self.top;
        let have = self.weight.dim().0;
        if needed > have {
            let mut sum = zeroed_rgb(needed, self.rect.width)?;
            sum.slice_mut(s![.., ..have, ..]).assign(&self.sum);
            let mut weight = zeroed_plane(needed, self.rect.width)?;
            weight.slice_mut(s![..have, ..]).assign(&self.weight);
            (self.sum, self.weight) = (sum, weight);
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
        Ok(())
    }

    /// Writes rows above `y` (output frame) to the sink and forgets them.
    fn flush_until(&mut self, y: usize, source: &FrameSource<'_>, sink: &mut dyn Sink) -> Result<()> {
        let end = y.min(self.rect.bottom()).min(self.top + self.weight.dim().0);
        if end <= self.top {
            return Ok(());
        }
        let rows = end - self.top;
        let mut done = copied(self.sum.slice(s![.., ..rows, ..]))?;
        for mut plane in done.outer_iter_mut() {
            Zip::from(&mut plane)
                .and(self.weight.slice(s![..rows, ..]))
                .for_each(|v, &w| *v = (*v / w).clamp(0.0, 1.0));
        }
        let rect = Rect::new(self.rect.x, self.top, self.rect.width, rows);
        let alpha = if source.has_alpha() { source.read(rect)?.1 } else { None };
        sink.put((0, self.top - self.rect.y), done.view(), alpha.as_ref().map(|a| a.view()));
        self.sum = copied(self.sum.slice(s![.., rows.., ..]))?;
        self.weight = copied(self.weight.slice(s![rows.., ..]))?;
        self.top = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::RestoreOptions;
    use crate::pixels::Image;
    use crate::progress::Control;
    use crate::runtime::RuntimeOptions;
    use crate::source::SourceData;

    /// Encoding and decoding tile by tile with margins, against one pass over the whole image (tiny bundle,
    /// whose VAE sees a few latent samples around each one: the margin covers it).
    #[test]
    fn tiled_vae_matches_an_untiled_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny");
        let tiny = Model::load(&dir, &RuntimeOptions::new().threads(1)).unwrap();
        let (w, h) = (256usize, 192usize);
        let rgb = Array3::from_shape_fn((3, h, w), |(c, y, x)| ((x * 7 + y * 13 + c * 50) % 97) as f32 / 96.0);
        let image = Image::from_planes(rgb, None).unwrap();
        let options = RestoreOptions::new().tile_size(8).tile_overlap(2);
        let settings = Settings::resolve(&tiny, &options, (w, h)).unwrap();
        let control = Control::new();
        let call = Call::new(&control);
        let source = FrameSource::new(SourceData::Image(&image), (0, 0), (w, h), (w, h));
        let plan = Plan::new(tiny.manifest(), (w, h), &settings).unwrap();
        assert!(plan.tiles.len() > 4);

        let whole = tiny.encode(image.rgb().view(), (0, 0), None, &call).unwrap();
        let decoded_whole = tiny.decode(whole.view(), Rect::new(0, 0, w, h), &call).unwrap();
        let (mut encode_diff, mut decode_diff) = (0.0f32, 0.0f32);
        for tile in &plan.tiles {
            let rect = plan.encode_rect(tile.latent);
            let (lq, _) = source.read(rect).unwrap();
            let z = tiny.encode(lq.view(), (rect.y / 8, rect.x / 8), None, &call).unwrap();
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
