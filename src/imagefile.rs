//! Image files for the CLI and the bindings: PNG, JPEG and TIFF (8 and 16 bit) and float32 `.npy` arrays, read
//! into and written from interleaved buffers, with writes that never leave a partial file behind, and a file
//! restored into another.

use std::io::Write;
use std::path::Path;

use image::codecs::{jpeg::JpegEncoder, png::PngEncoder, tiff::TiffEncoder};
use image::{DynamicImage, ExtendedColorType, ImageEncoder};
use ndarray::{Array3, Array4, ArrayView3};

use crate::error::{Error, Result};
use crate::pixels::{PixelLayout, Pixels, PixelsMut, SampleType};
use crate::{RestoreOptions, Restorer, Stats};

/// The most memory, in bytes, that decoding one image file may take: 4 GiB, far above what a restore needs
/// in tiles, and enough for a 16000x12000 16-bit RGBA picture. `DPIR_IMAGE_LIMIT` (in MiB) sets another.
pub const DEFAULT_IMAGE_LIMIT: u64 = 4 << 30;

/// The decoder's memory limit: `DPIR_IMAGE_LIMIT` MiB, else [`DEFAULT_IMAGE_LIMIT`].
pub fn image_limit() -> Result<u64> {
    match std::env::var("DPIR_IMAGE_LIMIT") {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(mib) if mib > 0 => Ok(mib.saturating_mul(1 << 20)),
            _ => Err(Error::InvalidOptions(format!("DPIR_IMAGE_LIMIT must be a number of MiB, got {text:?}"))),
        },
        Err(_) => Ok(DEFAULT_IMAGE_LIMIT),
    }
}

/// Reads an image file (or a float32 `.npy` of shape (H, W, 3) in [0, 1]) into a packed buffer. Gray with alpha
/// becomes RGBA. Decoding may take at most [`image_limit`] bytes.
pub fn read(path: &Path) -> Result<(PixelLayout, Vec<u8>)> {
    let fail = |message: String| Error::ImageFile { path: path.to_path_buf(), message };
    if extension(path) == "npy" {
        crate::npy::checked_shape(path).map_err(|why| fail(format!("cannot read .npy: {why}")))?;
        let hwc: Array3<f32> = ndarray_npy::read_npy(path).map_err(|e| fail(format!("cannot read .npy: {e}")))?;
        let (h, w, c) = hwc.dim();
        if c != 3 || h == 0 || w == 0 {
            return Err(fail(format!("expected an (H, W, 3) array, found {:?}", hwc.dim())));
        }
        let bytes = hwc.as_standard_layout().iter().flat_map(|v| v.to_ne_bytes()).collect();
        return Ok((PixelLayout::packed(w, h, 3, SampleType::F32), bytes));
    }
    let limit = image_limit()?;
    let file = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(&file)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    // The JPEG decoder fills what a truncated file lacks with grey rows instead of failing.
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&file) {
        return Err(fail("the JPEG data ends before the image does (a truncated or damaged file)".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(limit);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => Error::TooLarge(format!(
            "{}: decoding it takes more than the image limit of {} MiB; set DPIR_IMAGE_LIMIT to more MiB to read it",
            path.display(),
            limit >> 20
        )),
        e => fail(format!("cannot decode: {e}")),
    })?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let (bytes, channels, sample): (Vec<u8>, usize, SampleType) = match decoded {
        DynamicImage::ImageLuma8(b) => (b.into_raw(), 1, SampleType::U8),
        DynamicImage::ImageRgb8(b) => (b.into_raw(), 3, SampleType::U8),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_) => {
            (decoded.into_rgba8().into_raw(), 4, SampleType::U8)
        }
        DynamicImage::ImageLuma16(b) => (ne_bytes(&b.into_raw()), 1, SampleType::U16),
        DynamicImage::ImageRgb16(b) => (ne_bytes(&b.into_raw()), 3, SampleType::U16),
        DynamicImage::ImageLumaA16(_) | DynamicImage::ImageRgba16(_) => {
            (ne_bytes(&decoded.into_rgba16().into_raw()), 4, SampleType::U16)
        }
        DynamicImage::ImageRgb32F(b) => {
            (b.into_raw().iter().flat_map(|v| v.to_ne_bytes()).collect(), 3, SampleType::F32)
        }
        DynamicImage::ImageRgba32F(b) => {
            (b.into_raw().iter().flat_map(|v| v.to_ne_bytes()).collect(), 4, SampleType::F32)
        }
        other => return Err(fail(format!("unsupported pixel format {:?}", other.color()))),
    };
    Ok((PixelLayout::packed(width, height, channels, sample), bytes))
}

/// Reads a starting noise (1, C, h, w) as `--save-noise` writes it (float32 `.npy`), checking that the shape its
/// header declares fits in the file before reading it.
pub fn read_noise(path: &Path) -> Result<Array4<f32>> {
    let fail = |message: String| Error::ImageFile { path: path.to_path_buf(), message };
    crate::npy::checked_shape(path).map_err(|why| fail(format!("cannot read the noise: {why}")))?;
    ndarray_npy::read_npy(path).map_err(|e| fail(format!("cannot read the noise: {e}")))
}

/// The packed layout `path`'s format stores a `width x height` result of an `input` in: PNG and TIFF keep the
/// input's channels and bit depth (float becomes 16 bit), JPEG is 8-bit gray or RGB, `.npy` float32 RGB.
pub fn output_layout(path: &Path, input: &PixelLayout, width: usize, height: usize) -> Result<PixelLayout> {
    let (channels, sample) = match extension(path).as_str() {
        "npy" => (3, SampleType::F32),
        "jpg" | "jpeg" => (input.channels.min(3), SampleType::U8),
        "png" | "tif" | "tiff" => {
            (input.channels, if input.sample == SampleType::U8 { SampleType::U8 } else { SampleType::U16 })
        }
        _ => {
            return Err(Error::ImageFile {
                path: path.to_path_buf(),
                message: "unknown output format; use .png, .jpg, .tif or .npy".into(),
            })
        }
    };
    Ok(PixelLayout::packed(width, height, channels, sample))
}

/// An image file restored into the layout its output file's format stores, not yet written.
#[derive(Debug)]
#[non_exhaustive]
pub struct RestoredFile {
    /// The stored layout ([`output_layout`] of the output path).
    pub layout: PixelLayout,
    /// The restored pixels in that layout.
    pub bytes: Vec<u8>,
    /// The input's (width, height).
    pub input_size: (usize, usize),
    /// Timings.
    pub stats: Stats,
}

impl RestoredFile {
    /// Writes the file, whole or not at all ([`write`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        write(path, &self.layout, &self.bytes)
    }
}

/// Reads the image file `input` and restores it into what `output`'s format stores, as `dpir restore` does.
pub fn restore(restorer: &Restorer, input: &Path, output: &Path, options: &RestoreOptions) -> Result<RestoredFile> {
    let (layout, pixels) = read(input)?;
    let (width, height) = restorer.output_size_for(layout.width, layout.height, options)?;
    let stored = output_layout(output, &layout, width, height)?;
    let mut bytes = crate::pixels::zeroed(stored.validate()?)?;
    let stats =
        restorer.restore_pixels(&Pixels::new(layout, &pixels)?, &mut PixelsMut::new(stored, &mut bytes)?, options)?;
    Ok(RestoredFile { layout: stored, bytes, input_size: (layout.width, layout.height), stats })
}

/// Writes pixels of any layout as `path`'s format stores them ([`output_layout`]), converted a band of rows at a
/// time: only the stored bytes are image-sized. The file appears whole or not at all, as with [`write`].
pub fn write_pixels(path: &Path, pixels: &Pixels<'_>) -> Result<()> {
    let layout = pixels.layout();
    let stored = output_layout(path, layout, layout.width, layout.height)?;
    let mut bytes = crate::pixels::zeroed(stored.validate()?)?;
    PixelsMut::new(stored, &mut bytes)?.convert_from(pixels)?;
    write(path, &stored, &bytes)
}

/// Writes a packed buffer in [`output_layout`]'s layout for `path`. The file appears whole or not at all: it is
/// written beside the target and renamed over it.
pub fn write(path: &Path, layout: &PixelLayout, bytes: &[u8]) -> Result<()> {
    let fail = |message: String| Error::ImageFile { path: path.to_path_buf(), message };
    let (w, h) = (layout.width as u32, layout.height as u32);
    let encoded = match (extension(path).as_str(), layout.channels, layout.sample) {
        ("npy", 3, SampleType::F32) => {
            let values: Vec<f32> =
                bytes.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().expect("4"))).collect();
            let hwc = ArrayView3::from_shape((layout.height, layout.width, 3), &values).expect("sized");
            let mut out = Vec::new();
            ndarray_npy::WriteNpyExt::write_npy(&hwc, &mut out)
                .map_err(|e| fail(format!("cannot encode .npy: {e}")))?;
            out
        }
        (ext @ ("png" | "tif" | "tiff" | "jpg" | "jpeg"), n, sample) => {
            let colour = match (n, sample) {
                (1, SampleType::U8) => ExtendedColorType::L8,
                (3, SampleType::U8) => ExtendedColorType::Rgb8,
                (4, SampleType::U8) => ExtendedColorType::Rgba8,
                (1, SampleType::U16) => ExtendedColorType::L16,
                (3, SampleType::U16) => ExtendedColorType::Rgb16,
                (4, SampleType::U16) => ExtendedColorType::Rgba16,
                _ => return Err(fail(format!("cannot store {n} channels of {sample:?} in this format"))),
            };
            // Encoders read the caller's (native-endian) buffer in place: no copy of the image.
            let mut out = std::io::Cursor::new(Vec::new());
            let written = match ext {
                "png" => PngEncoder::new(&mut out).write_image(bytes, w, h, colour),
                "tif" | "tiff" => TiffEncoder::new(&mut out).write_image(bytes, w, h, colour),
                _ => JpegEncoder::new_with_quality(&mut out, 95).write_image(bytes, w, h, colour),
            };
            written.map_err(|e| fail(format!("cannot encode: {e}")))?;
            out.into_inner()
        }
        _ => return Err(fail("unknown output format or layout; use .png, .jpg, .tif or .npy".into())),
    };
    write_atomically(path, &encoded)
}

/// Writes bytes to a temporary file beside `path`, syncs it, and renames it over `path`. The file gets the mode a
/// plain write would leave: an existing file's own, else 0666 less the umask (as `cp` does), not the temporary
/// file's private 0600. (On Windows a new file takes its folder's permissions, as any new file does.)
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let existing = std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.permissions());
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut builder = tempfile::Builder::new();
    // Created with 0666, the kernel takes the umask off, as for any new file.
    #[cfg(unix)]
    builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666));
    let mut file = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    if let Some(permissions) = existing {
        file.as_file().set_permissions(permissions).map_err(|e| Error::io(file.path(), e))?;
    }
    file.write_all(bytes).map_err(|e| Error::io(file.path(), e))?;
    file.as_file().sync_all().map_err(|e| Error::io(file.path(), e))?;
    file.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Whether a JPEG's last scan is followed by the end-of-image marker: a file cut short is not. (An embedded
/// thumbnail's own end marker comes before the main image's scans, and entropy-coded data never holds FF D9.)
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|pair| pair == [0xFF, marker]);
    matches!((last(0xDA), last(0xD9)), (Some(scan), Some(end)) if end > scan)
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default()
}

fn ne_bytes(words: &[u16]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}
