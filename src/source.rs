//! Where pixels come from and go to during a restore, in frame coordinates.
//!
//! A [`FrameSource`] answers "the (upsampled) input at these output-frame pixels" from whatever the caller holds:
//! a whole [`Image`], or a crop of an interleaved buffer placed somewhere in the frame. Upsampling uses the whole
//! frame's Lanczos taps, so a crop yields exactly the pixels the whole frame would. Positions past the frame's
//! right and bottom edges repeat the edge (the padding of the procedure).

use ndarray::{concatenate, s, Array2, Array3, ArrayView2, ArrayView3, Axis};

use crate::error::{Error, Result};
use crate::pixels::{zeroed_plane, zeroed_rgb, Image, Pixels, PixelsMut};
use crate::rect::Rect;
use crate::resample::{apply_columns, apply_rows, coefficients, Filter, Taps};

/// The caller's pixels.
#[derive(Clone, Copy)]
pub(crate) enum SourceData<'a> {
    Image(&'a Image),
    Pixels(Pixels<'a>),
}

impl SourceData<'_> {
    pub(crate) fn size(&self) -> (usize, usize) {
        match self {
            SourceData::Image(image) => (image.width(), image.height()),
            SourceData::Pixels(pixels) => (pixels.layout().width, pixels.layout().height),
        }
    }

    fn read(&self, rect: Rect) -> Result<(Array3<f32>, Option<Array2<f32>>)> {
        match self {
            SourceData::Image(image) => {
                let window = s![rect.y..rect.bottom(), rect.x..rect.right()];
                let rgb = image.rgb().slice(s![.., rect.y..rect.bottom(), rect.x..rect.right()]).to_owned();
                Ok((rgb, image.alpha().map(|a| a.slice(window).to_owned())))
            }
            SourceData::Pixels(pixels) => pixels.read(rect),
        }
    }
}

/// The geometry of upsampling an input frame to an output frame: which input pixels each output pixel reads.
pub(crate) struct Upsampling {
    /// Output frame (width, height).
    frame: (usize, usize),
    /// Lanczos taps per output column and row; `None` along an axis whose size does not change.
    taps_x: Option<Vec<Taps>>,
    taps_y: Option<Vec<Taps>>,
}

impl Upsampling {
    /// From an input frame of `frame_in` (width, height) to an output frame of `frame_out`.
    pub(crate) fn new(frame_in: (usize, usize), frame_out: (usize, usize)) -> Upsampling {
        let taps = |n_in: usize, n_out: usize| (n_in != n_out).then(|| coefficients(Filter::Lanczos3, n_in, n_out));
        Upsampling { frame: frame_out, taps_x: taps(frame_in.0, frame_out.0), taps_y: taps(frame_in.1, frame_out.1) }
    }

    /// Input-frame pixels that output positions read along one axis.
    fn input_span(taps: &Option<Vec<Taps>>, positions: &[usize]) -> (usize, usize) {
        let (first, last) = (positions[0], positions[positions.len() - 1]);
        match taps {
            None => (first, last + 1),
            Some(taps) => (taps[first].0, taps[last].0 + taps[last].1.len()),
        }
    }

    /// Output positions of a span, with those past the frame repeating its last pixel.
    fn positions(start: usize, length: usize, size: usize) -> Vec<usize> {
        (start..start + length).map(|p| p.min(size - 1)).collect()
    }

    /// The input-frame rectangle that reading `rect` (output frame, may extend past it) needs.
    pub(crate) fn input_rect(&self, rect: Rect) -> Rect {
        let xs = Self::positions(rect.x, rect.width, self.frame.0);
        let ys = Self::positions(rect.y, rect.height, self.frame.1);
        let (x0, x1) = Self::input_span(&self.taps_x, &xs);
        let (y0, y1) = Self::input_span(&self.taps_y, &ys);
        Rect::new(x0, y0, x1 - x0, y1 - y0)
    }
}

/// The input as the pipeline sees it: upsampled to the output frame, read by output-frame rectangles.
pub(crate) struct FrameSource<'a> {
    data: SourceData<'a>,
    /// Where the data's top-left pixel sits in the input frame.
    origin: (usize, usize),
    up: Upsampling,
}

impl<'a> FrameSource<'a> {
    /// `data` placed at `origin` in an input frame of `frame_in` (width, height), read as an output frame of
    /// `frame_out`.
    pub(crate) fn new(
        data: SourceData<'a>,
        origin: (usize, usize),
        frame_in: (usize, usize),
        frame_out: (usize, usize),
    ) -> FrameSource<'a> {
        FrameSource { data, origin, up: Upsampling::new(frame_in, frame_out) }
    }

    /// Output frame (width, height).
    pub(crate) fn frame(&self) -> (usize, usize) {
        self.up.frame
    }

    /// Whether the source carries alpha.
    pub(crate) fn has_alpha(&self) -> bool {
        match self.data {
            SourceData::Image(image) => image.alpha().is_some(),
            SourceData::Pixels(pixels) => pixels.layout().channels == 4,
        }
    }

    /// Colour (3, h, w) in [0, 1] and alpha (h, w) if the source has it, at the output-frame pixels of `rect`.
    pub(crate) fn read(&self, rect: Rect) -> Result<(Array3<f32>, Option<Array2<f32>>)> {
        let up = &self.up;
        let xs = Upsampling::positions(rect.x, rect.width, up.frame.0);
        let ys = Upsampling::positions(rect.y, rect.height, up.frame.1);
        let need = up.input_rect(rect);
        let (w, h) = self.data.size();
        let held = Rect::new(self.origin.0, self.origin.1, w, h);
        if !held.contains(&need) {
            return Err(Error::InvalidImage(format!(
                "the source crop covers input pixels {}x{} at ({}, {}), but output {}x{} at ({}, {}) needs {}x{} at ({}, {})",
                held.width, held.height, held.x, held.y, rect.width, rect.height, rect.x, rect.y,
                need.width, need.height, need.x, need.y
            )));
        }
        let (rgb, alpha) = self.data.read(Rect::new(need.x - held.x, need.y - held.y, need.width, need.height))?;
        // Alpha rides along as a fourth plane so it is resampled exactly like colour.
        let planes = match &alpha {
            Some(a) => concatenate![Axis(0), rgb, a.view().insert_axis(Axis(0))],
            None => rgb,
        };
        let columns = match &up.taps_x {
            Some(taps) => apply_columns(planes.view(), need.x, &xs.iter().map(|&x| &taps[x]).collect::<Vec<_>>()),
            None => gather(planes, Axis(2), &xs, need.x),
        };
        let mut out = match &up.taps_y {
            Some(taps) => apply_rows(columns.view(), need.y, &ys.iter().map(|&y| &taps[y]).collect::<Vec<_>>()),
            None => gather(columns, Axis(1), &ys, need.y),
        };
        if up.taps_x.is_some() || up.taps_y.is_some() {
            out.mapv_inplace(|v| v.clamp(0.0, 1.0));
        }
        let alpha = alpha.is_some().then(|| out.index_axis(Axis(0), 3).to_owned());
        let rgb = if alpha.is_some() { out.slice(s![..3, .., ..]).to_owned() } else { out };
        Ok((rgb, alpha))
    }
}

/// Picks positions `indices - offset` along `axis`; the array itself when that is every position in order.
fn gather(planes: Array3<f32>, axis: Axis, indices: &[usize], offset: usize) -> Array3<f32> {
    let identity = indices.len() == planes.len_of(axis) && indices.iter().enumerate().all(|(i, &p)| p - offset == i);
    if identity {
        return planes;
    }
    let local: Vec<usize> = indices.iter().map(|&p| p - offset).collect();
    planes.select(axis, &local)
}

/// Where finished output rows go: a rectangle of the output frame, filled in any order.
pub(crate) trait Sink {
    /// Writes planes whose top-left is `(x, y)` relative to the sink's rectangle.
    fn put(&mut self, at: (usize, usize), rgb: ArrayView3<'_, f32>, alpha: Option<ArrayView2<'_, f32>>);
}

impl Sink for PixelsMut<'_> {
    fn put(&mut self, at: (usize, usize), rgb: ArrayView3<'_, f32>, alpha: Option<ArrayView2<'_, f32>>) {
        self.write(at, rgb, alpha);
    }
}

/// Collects the output as an [`Image`].
pub(crate) struct ImageSink {
    rgb: Array3<f32>,
    alpha: Option<Array2<f32>>,
}

impl ImageSink {
    /// A sink for a `width x height` image, or a "too large" error when its planes cannot be had.
    pub(crate) fn new(width: usize, height: usize, with_alpha: bool) -> Result<ImageSink> {
        let alpha = if with_alpha { Some(zeroed_plane(height, width)?) } else { None };
        Ok(ImageSink { rgb: zeroed_rgb(height, width)?, alpha })
    }

    pub(crate) fn finish(self) -> Image {
        Image::from_clamped(self.rgb, self.alpha)
    }
}

impl Sink for ImageSink {
    fn put(&mut self, (x, y): (usize, usize), rgb: ArrayView3<'_, f32>, alpha: Option<ArrayView2<'_, f32>>) {
        let (_, h, w) = rgb.dim();
        self.rgb.slice_mut(s![.., y..y + h, x..x + w]).assign(&rgb);
        if let (Some(dst), Some(src)) = (self.alpha.as_mut(), alpha) {
            dst.slice_mut(s![y..y + h, x..x + w]).assign(&src);
        }
    }
}
