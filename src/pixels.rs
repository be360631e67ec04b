//! Images as the pipeline sees them (planar float RGB, sRGB-encoded, straight alpha carried aside), and the
//! conversions from and to the interleaved buffers hosts hand over.

use half::f16;
use ndarray::{Array, Array2, Array3, ArrayView, ArrayView2, ArrayView3, Dimension, Ix2, Ix3};

use crate::rect::Rect;

use crate::error::{Error, Result};

/// Largest width or height accepted anywhere (pixels).
pub const MAX_SIDE: usize = 1 << 16;

/// How one sample is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SampleType {
    /// 8-bit unsigned, 0..=255 maps to [0, 1].
    U8,
    /// 16-bit unsigned, 0..=65535 maps to [0, 1].
    U16,
    /// IEEE half float.
    F16,
    /// IEEE single float.
    F32,
}

impl SampleType {
    /// Bytes per sample.
    pub fn size(self) -> usize {
        match self {
            SampleType::U8 => 1,
            SampleType::U16 | SampleType::F16 => 2,
            SampleType::F32 => 4,
        }
    }
}

/// Whether colour samples are multiplied by alpha.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AlphaMode {
    /// Colour independent of alpha.
    #[default]
    Straight,
    /// Colour already multiplied by alpha.
    Premultiplied,
}

/// How colour samples encode light.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transfer {
    /// sRGB-encoded (what the model was trained on).
    #[default]
    Srgb,
    /// Linear light; converted to sRGB encoding for the model and back.
    Linear,
}

/// Describes an interleaved pixel buffer.
///
/// Row `y` starts at byte `y * stride` when `stride >= 0`. With a negative stride (bottom-up hosts) the buffer
/// handed over starts at the lowest address, which holds the last row, and row `y` starts at
/// `(height - 1 - y) * |stride|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PixelLayout {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// 1 (gray), 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    /// Storage of one sample.
    pub sample: SampleType,
    /// Alpha convention (4 channels only).
    pub alpha: AlphaMode,
    /// How colour encodes light.
    pub transfer: Transfer,
    /// Bytes from one row to the next; negative for bottom-up buffers.
    pub stride: isize,
}

impl PixelLayout {
    /// A tightly packed, top-down, sRGB-encoded, straight-alpha layout.
    pub fn packed(width: usize, height: usize, channels: usize, sample: SampleType) -> PixelLayout {
        let stride = (width * channels * sample.size()) as isize;
        PixelLayout { width, height, channels, sample, alpha: AlphaMode::Straight, transfer: Transfer::Srgb, stride }
    }

    /// The same layout with `alpha` (4 channels only).
    pub fn with_alpha(self, alpha: AlphaMode) -> PixelLayout {
        PixelLayout { alpha, ..self }
    }

    /// The same layout with `transfer`.
    pub fn with_transfer(self, transfer: Transfer) -> PixelLayout {
        PixelLayout { transfer, ..self }
    }

    /// The same layout with rows `stride` bytes apart (negative for bottom-up buffers).
    pub fn with_stride(self, stride: isize) -> PixelLayout {
        PixelLayout { stride, ..self }
    }

    /// Bytes of one row's pixels (without padding).
    pub fn row_bytes(&self) -> Option<usize> {
        self.width.checked_mul(self.channels)?.checked_mul(self.sample.size())
    }

    /// Checks the description and returns the number of bytes a buffer must span.
    pub fn validate(&self) -> Result<usize> {
        let bad = |why: String| Err(Error::InvalidImage(why));
        if self.width == 0 || self.height == 0 {
            return bad(format!("{}x{} has no pixels", self.width, self.height));
        }
        if self.width > MAX_SIDE || self.height > MAX_SIDE {
            return bad(format!("{}x{} exceeds the largest side of {MAX_SIDE} pixels", self.width, self.height));
        }
        if ![1, 3, 4].contains(&self.channels) {
            return bad(format!("{} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)", self.channels));
        }
        if self.alpha == AlphaMode::Premultiplied && self.channels != 4 {
            return bad("premultiplied alpha needs 4 channels".into());
        }
        let Some(row) = self.row_bytes() else { return bad("row size overflows".into()) };
        let stride = self.stride.unsigned_abs();
        if stride < row {
            return bad(format!("row stride {} is smaller than a row of {row} bytes", self.stride));
        }
        match stride.checked_mul(self.height - 1).and_then(|n| n.checked_add(row)) {
            Some(span) if span <= isize::MAX as usize => Ok(span),
            _ => bad("buffer size overflows".into()),
        }
    }

    fn row_offset(&self, y: usize) -> usize {
        let stride = self.stride.unsigned_abs();
        if self.stride >= 0 {
            y * stride
        } else {
            (self.height - 1 - y) * stride
        }
    }
}

/// A zeroed buffer of `len` bytes, or a "too large" error when the memory cannot be had (never an abort).
pub fn zeroed(len: usize) -> Result<Vec<u8>> {
    zeros(len, "a pixel buffer")
}

/// Zeroed float planes of `shape`, or a "too large" error when the memory cannot be had (never an abort): every
/// image-sized array of the pipeline comes from here, so that no size a caller chooses can end the process.
pub(crate) fn zeroed_planes<D: Dimension>(shape: D) -> Result<Array<f32, D>> {
    let data = zeros(shape.size_checked().unwrap_or(usize::MAX), "image planes")?;
    Ok(Array::from_shape_vec(shape, data).expect("one value per position"))
}

/// A copy of `view`, reserved fallibly; see [`zeroed_planes`].
pub(crate) fn copied<D: Dimension>(view: ArrayView<'_, f32, D>) -> Result<Array<f32, D>> {
    let mut copy = zeroed_planes(view.raw_dim())?;
    copy.assign(&view);
    Ok(copy)
}

/// Colour planes (3, h, w) of zeros; see [`zeroed_planes`].
pub(crate) fn zeroed_rgb(height: usize, width: usize) -> Result<Array3<f32>> {
    zeroed_planes(Ix3(3, height, width))
}

/// One plane (h, w) of zeros; see [`zeroed_planes`].
pub(crate) fn zeroed_plane(height: usize, width: usize) -> Result<Array2<f32>> {
    zeroed_planes(Ix2(height, width))
}

/// Number types whose all-zero bytes are the value 0.
trait Zeroable: Copy {}
impl Zeroable for u8 {}
impl Zeroable for f32 {}

/// `len` zeros, allocated fallibly. The memory comes zeroed from the system as it is touched, so a large buffer
/// costs nothing until it is written.
fn zeros<T: Zeroable>(len: usize, what: &str) -> Result<Vec<T>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let too_large = || {
        let mb = len.saturating_mul(size_of::<T>()).div_ceil(1 << 20);
        Error::TooLarge(format!("cannot have {mb} MB of memory for {what}"))
    };
    let layout = std::alloc::Layout::array::<T>(len).map_err(|_| too_large())?;
    // SAFETY: `layout` is not zero-sized (len > 0 and T is a number).
    let data = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if data.is_null() {
        return Err(too_large());
    }
    // SAFETY: allocated by the global allocator with T's layout for exactly `len` values, each a valid zero.
    Ok(unsafe { Vec::from_raw_parts(data, len, len) })
}

/// An image in the pipeline's terms: (3, H, W) sRGB-encoded RGB in [0, 1], and straight alpha when the source
/// had it (carried through untouched, never restored).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    rgb: Array3<f32>,
    alpha: Option<Array2<f32>>,
}

impl Image {
    /// Wraps planar, sRGB-encoded RGB (3, H, W) and optional straight alpha (H, W). Colour is clamped to [0, 1].
    pub fn from_planes(mut rgb: Array3<f32>, alpha: Option<Array2<f32>>) -> Result<Image> {
        let (c, h, w) = rgb.dim();
        if c != 3 || h == 0 || w == 0 {
            return Err(Error::InvalidImage(format!("planes of shape {:?}; expected (3, H>0, W>0)", rgb.dim())));
        }
        if let Some(a) = &alpha {
            if a.dim() != (h, w) {
                return Err(Error::InvalidImage("alpha plane size differs from the colour planes".into()));
            }
        }
        if rgb.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidImage("colour samples must be finite".into()));
        }
        rgb.mapv_inplace(|v| v.clamp(0.0, 1.0));
        Ok(Image { rgb, alpha })
    }

    /// Planes the pipeline produced: finite, in [0, 1], sizes matching.
    pub(crate) fn from_clamped(rgb: Array3<f32>, alpha: Option<Array2<f32>>) -> Image {
        debug_assert!(rgb.iter().all(|v| (0.0..=1.0).contains(v)));
        Image { rgb, alpha }
    }

    /// Reads an interleaved buffer described by `layout`.
    pub fn from_pixels(layout: &PixelLayout, bytes: &[u8]) -> Result<Image> {
        let pixels = Pixels::new(*layout, bytes)?;
        let (rgb, alpha) = pixels.read(Rect::new(0, 0, layout.width, layout.height))?;
        Ok(Image { rgb, alpha })
    }

    /// Writes into an interleaved buffer described by `layout`, which must have this image's size. Gray
    /// destinations receive Rec. 709 luma; a destination alpha channel receives the carried alpha (1 if none).
    pub fn write_pixels(&self, layout: &PixelLayout, bytes: &mut [u8]) -> Result<()> {
        if (layout.width, layout.height) != (self.width(), self.height()) {
            return Err(Error::InvalidImage(format!(
                "destination is {}x{}, the image {}x{}",
                layout.width,
                layout.height,
                self.width(),
                self.height()
            )));
        }
        PixelsMut::new(*layout, bytes)?.write((0, 0), self.rgb.view(), self.alpha.as_ref().map(|a| a.view()));
        Ok(())
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.rgb.dim().2
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.rgb.dim().1
    }

    /// The colour planes, (3, H, W).
    pub fn rgb(&self) -> &Array3<f32> {
        &self.rgb
    }

    /// The straight alpha plane, when the source had one.
    pub fn alpha(&self) -> Option<&Array2<f32>> {
        self.alpha.as_ref()
    }
}

/// An interleaved pixel buffer, checked against its layout.
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    layout: PixelLayout,
    data: &'a [u8],
}

impl<'a> Pixels<'a> {
    /// Wraps `data` (for a negative stride: starting at the lowest address, the last row) after checking the
    /// layout and that `data` spans it.
    pub fn new(layout: PixelLayout, data: &'a [u8]) -> Result<Pixels<'a>> {
        check_span(&layout, data.len())?;
        Ok(Pixels { layout, data })
    }

    /// The buffer's layout.
    pub fn layout(&self) -> &PixelLayout {
        &self.layout
    }

    /// The pixels of `rect` (inside the buffer) as sRGB-encoded, straight-alpha planes: colour (3, h, w) clamped
    /// to [0, 1], and alpha (h, w) when the buffer has it. A NaN or infinite sample is an error.
    pub fn read(&self, rect: Rect) -> Result<(Array3<f32>, Option<Array2<f32>>)> {
        let layout = &self.layout;
        assert!(Rect::new(0, 0, layout.width, layout.height).contains(&rect), "reads stay inside the buffer");
        let n = layout.channels;
        let mut rgb = zeroed_rgb(rect.height, rect.width)?;
        let mut alpha = if n == 4 { Some(zeroed_plane(rect.height, rect.width)?) } else { None };
        let mut px = [0f32; 4];
        for y in 0..rect.height {
            let row = &self.data[layout.row_offset(rect.y + y)..];
            for x in 0..rect.width {
                for (c, value) in px.iter_mut().enumerate().take(n) {
                    *value = read_sample(row, ((rect.x + x) * n + c) * layout.sample.size(), layout.sample);
                    if !value.is_finite() {
                        return Err(Error::InvalidImage(format!(
                            "sample at ({}, {}) is not finite",
                            rect.x + x,
                            rect.y + y
                        )));
                    }
                }
                let a = if n == 4 { px[3] } else { 1.0 };
                let mut colour = if n == 1 { [px[0]; 3] } else { [px[0], px[1], px[2]] };
                if layout.alpha == AlphaMode::Premultiplied {
                    colour = colour.map(|v| if a > 0.0 { v / a } else { 0.0 });
                }
                if layout.transfer == Transfer::Linear {
                    colour = colour.map(linear_to_srgb);
                }
                for c in 0..3 {
                    rgb[[c, y, x]] = colour[c].clamp(0.0, 1.0);
                }
                if let Some(alpha) = alpha.as_mut() {
                    alpha[[y, x]] = a;
                }
            }
        }
        Ok((rgb, alpha))
    }
}

/// A writable interleaved pixel buffer, checked against its layout.
#[derive(Debug)]
pub struct PixelsMut<'a> {
    layout: PixelLayout,
    data: &'a mut [u8],
}

impl<'a> PixelsMut<'a> {
    /// Wraps `data` as [`Pixels::new`] does.
    pub fn new(layout: PixelLayout, data: &'a mut [u8]) -> Result<PixelsMut<'a>> {
        check_span(&layout, data.len())?;
        Ok(PixelsMut { layout, data })
    }

    /// The buffer's layout.
    pub fn layout(&self) -> &PixelLayout {
        &self.layout
    }

    /// Writes planes (colour (3, h, w), optional straight alpha) with their top-left at `(x, y)` of the buffer,
    /// converting to the buffer's format. Gray receives Rec. 709 luma; an alpha channel receives `alpha` (1 if
    /// none).
    pub fn write(&mut self, (x0, y0): (usize, usize), rgb: ArrayView3<'_, f32>, alpha: Option<ArrayView2<'_, f32>>) {
        let (_, h, w) = rgb.dim();
        let layout = self.layout;
        assert!(x0 + w <= layout.width && y0 + h <= layout.height, "writes stay inside the buffer");
        let n = layout.channels;
        for y in 0..h {
            let offset = layout.row_offset(y0 + y);
            let row = &mut self.data[offset..];
            for x in 0..w {
                let a = alpha.as_ref().map_or(1.0, |alpha| alpha[[y, x]]);
                let mut colour = [rgb[[0, y, x]], rgb[[1, y, x]], rgb[[2, y, x]]];
                if layout.transfer == Transfer::Linear {
                    colour = colour.map(srgb_to_linear);
                }
                if layout.alpha == AlphaMode::Premultiplied {
                    colour = colour.map(|v| v * a);
                }
                let px = match n {
                    1 => [0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2], 0.0, 0.0, 0.0],
                    3 => [colour[0], colour[1], colour[2], 0.0],
                    _ => [colour[0], colour[1], colour[2], a],
                };
                for (c, &value) in px.iter().enumerate().take(n) {
                    write_sample(row, ((x0 + x) * n + c) * layout.sample.size(), layout.sample, value);
                }
            }
        }
    }
}

impl PixelsMut<'_> {
    /// Converts `source`, of this buffer's size, into this buffer's format a band of rows at a time, so that no
    /// image-sized planes are needed. A non-finite source sample is an error, with this buffer partly written.
    pub fn convert_from(&mut self, source: &Pixels<'_>) -> Result<()> {
        let (width, height) = (self.layout.width, self.layout.height);
        if (source.layout.width, source.layout.height) != (width, height) {
            return Err(Error::InvalidImage(format!(
                "cannot convert {}x{} pixels into a {width}x{height} buffer",
                source.layout.width, source.layout.height
            )));
        }
        // About a megapixel of planes per band.
        let rows = ((1 << 20) / width).clamp(1, height);
        for y in (0..height).step_by(rows) {
            let (rgb, alpha) = source.read(Rect::new(0, y, width, rows.min(height - y)))?;
            self.write((0, y), rgb.view(), alpha.as_ref().map(|a| a.view()));
        }
        Ok(())
    }

    /// Copies tightly packed rows of this buffer's format (top row first) into it, honouring its stride.
    pub(crate) fn copy_rows_from(&mut self, packed: &[u8]) {
        let row = self.layout.row_bytes().expect("validated");
        for (y, src) in packed.chunks_exact(row).enumerate().take(self.layout.height) {
            let offset = self.layout.row_offset(y);
            self.data[offset..offset + row].copy_from_slice(src);
        }
    }
}

fn check_span(layout: &PixelLayout, len: usize) -> Result<()> {
    let span = layout.validate()?;
    if len < span {
        return Err(Error::InvalidImage(format!("buffer holds {len} bytes; the layout needs {span}")));
    }
    Ok(())
}

fn read_sample(row: &[u8], at: usize, sample: SampleType) -> f32 {
    match sample {
        SampleType::U8 => row[at] as f32 / 255.0,
        SampleType::U16 => u16::from_ne_bytes([row[at], row[at + 1]]) as f32 / 65535.0,
        SampleType::F16 => f16::from_ne_bytes([row[at], row[at + 1]]).to_f32(),
        SampleType::F32 => f32::from_ne_bytes(row[at..at + 4].try_into().expect("4 bytes")),
    }
}

fn write_sample(row: &mut [u8], at: usize, sample: SampleType, value: f32) {
    match sample {
        SampleType::U8 => row[at] = (value.clamp(0.0, 1.0) * 255.0).round() as u8,
        SampleType::U16 => {
            let v = (value.clamp(0.0, 1.0) * 65535.0).round() as u16;
            row[at..at + 2].copy_from_slice(&v.to_ne_bytes());
        }
        SampleType::F16 => row[at..at + 2].copy_from_slice(&f16::from_f32(value).to_ne_bytes()),
        SampleType::F32 => row[at..at + 4].copy_from_slice(&value.to_ne_bytes()),
    }
}

/// The sRGB encoding curve (IEC 61966-2-1).
pub fn linear_to_srgb(v: f32) -> f32 {
    if v <= 0.003_130_8 {
        12.92 * v
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// The inverse of [`linear_to_srgb`].
pub fn srgb_to_linear(v: f32) -> f32 {
    if v <= 0.040_45 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(layout: PixelLayout, bytes: &[u8]) -> Vec<u8> {
        let image = Image::from_pixels(&layout, bytes).unwrap();
        let mut out = vec![0u8; bytes.len()];
        image.write_pixels(&layout, &mut out).unwrap();
        out
    }

    #[test]
    fn eight_and_sixteen_bit_round_trip_exactly() {
        let bytes: Vec<u8> = (0..5 * 3 * 4).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(roundtrip(PixelLayout::packed(5, 3, 4, SampleType::U8), &bytes), bytes);
        let words: Vec<u8> = (0..4 * 2 * 3).flat_map(|i: u16| (i * 2731).to_ne_bytes()).collect();
        assert_eq!(roundtrip(PixelLayout::packed(4, 2, 3, SampleType::U16), &words), words);
    }

    #[test]
    fn negative_stride_reads_rows_bottom_up() {
        // Two rows of one gray pixel; in memory the last row comes first.
        let layout = PixelLayout { stride: -1, ..PixelLayout::packed(1, 2, 1, SampleType::U8) };
        let image = Image::from_pixels(&layout, &[255, 0]).unwrap();
        assert_eq!(image.rgb()[[0, 0, 0]], 0.0);
        assert_eq!(image.rgb()[[0, 1, 0]], 1.0);
        assert_eq!(roundtrip(layout, &[255, 0]), vec![255, 0]);
    }

    #[test]
    fn premultiplied_and_linear_are_undone_and_redone() {
        let px = [0.1f32, 0.2, 0.3, 0.5];
        let bytes: Vec<u8> = px.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let layout = PixelLayout {
            alpha: AlphaMode::Premultiplied,
            transfer: Transfer::Linear,
            ..PixelLayout::packed(1, 1, 4, SampleType::F32)
        };
        let image = Image::from_pixels(&layout, &bytes).unwrap();
        assert!((image.rgb()[[0, 0, 0]] - linear_to_srgb(0.2)).abs() < 1e-6);
        let back = roundtrip(layout, &bytes);
        let values: Vec<f32> = back.chunks(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect();
        for (a, b) in values.iter().zip(px) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn rejects_inconsistent_layouts() {
        let ok = PixelLayout::packed(4, 4, 3, SampleType::U8);
        for bad in [
            PixelLayout { width: 0, ..ok },
            PixelLayout { channels: 2, ..ok },
            PixelLayout { stride: 11, ..ok },
            PixelLayout { alpha: AlphaMode::Premultiplied, ..ok },
            PixelLayout { width: MAX_SIDE + 1, ..ok },
            PixelLayout { stride: isize::MAX, ..ok },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(Image::from_pixels(&ok, &[0u8; 47]).is_err());
    }
}
