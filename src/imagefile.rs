//! Image files for the CLI: PNG, JPEG and TIFF (8 and 16 bit) in and out, `.npy` float arrays out, and writes
//! that never leave a partial file behind.

use std::io::Write;
use std::path::Path;

use image::{DynamicImage, ImageFormat};
use ndarray::{Array3, Axis};

use crate::error::{Error, Result};
use crate::pixels::{Image, PixelLayout, SampleType};

/// What a file held, so the output can be written back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFormat {
    /// 1 (gray), 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    /// Bits per sample: 8, 16 or 32 (float).
    pub bits: u32,
}

/// Reads an image file.
pub fn read(path: &Path) -> Result<(Image, FileFormat)> {
    let fail = |message: String| Error::ImageFile { path: path.to_path_buf(), message };
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let decoded = reader.decode().map_err(|e| fail(format!("cannot decode: {e}")))?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let (bytes, channels, sample, bits): (Vec<u8>, usize, SampleType, u32) = match decoded {
        DynamicImage::ImageLuma8(b) => (b.into_raw(), 1, SampleType::U8, 8),
        DynamicImage::ImageRgb8(b) => (b.into_raw(), 3, SampleType::U8, 8),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_) => {
            (decoded.into_rgba8().into_raw(), 4, SampleType::U8, 8)
        }
        DynamicImage::ImageLuma16(b) => (bytes_of_u16(&b.into_raw()), 1, SampleType::U16, 16),
        DynamicImage::ImageRgb16(b) => (bytes_of_u16(&b.into_raw()), 3, SampleType::U16, 16),
        DynamicImage::ImageLumaA16(_) | DynamicImage::ImageRgba16(_) => {
            (bytes_of_u16(&decoded.into_rgba16().into_raw()), 4, SampleType::U16, 16)
        }
        DynamicImage::ImageRgb32F(b) => (bytes_of_f32(&b.into_raw()), 3, SampleType::F32, 32),
        DynamicImage::ImageRgba32F(b) => (bytes_of_f32(&b.into_raw()), 4, SampleType::F32, 32),
        other => return Err(fail(format!("unsupported pixel format {:?}", other.color()))),
    };
    let layout = PixelLayout::packed(width, height, channels, sample);
    let image = Image::from_pixels(&layout, &bytes).map_err(|e| fail(e.to_string()))?;
    Ok((image, FileFormat { channels, bits }))
}

/// Writes `image` to `path` in the format its extension names (png, jpg/jpeg, tif/tiff, or npy for a float32
/// (H, W, 3) array), with the given channels and bit depth where the format allows. The file appears whole or
/// not at all: it is written beside the target and renamed over it.
pub fn write(path: &Path, image: &Image, format: FileFormat) -> Result<()> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    let encoded: Vec<u8> = match extension.as_str() {
        "npy" => npy_bytes(image)?,
        "png" | "tif" | "tiff" | "jpg" | "jpeg" => encode(path, image, format, &extension)?,
        _ => {
            return Err(Error::ImageFile {
                path: path.to_path_buf(),
                message: "unknown output format; use .png, .jpg, .tif or .npy".into(),
            })
        }
    };
    write_atomically(path, &encoded)
}

fn encode(path: &Path, image: &Image, format: FileFormat, extension: &str) -> Result<Vec<u8>> {
    let jpeg = matches!(extension, "jpg" | "jpeg");
    // JPEG holds 8-bit gray or RGB only; PNG and TIFF keep 16 bits; floats become 16 bits.
    let channels = if jpeg { format.channels.min(3) } else { format.channels };
    let sample = if jpeg || format.bits == 8 { SampleType::U8 } else { SampleType::U16 };
    let layout = PixelLayout::packed(image.width(), image.height(), channels, sample);
    let mut bytes = vec![0u8; layout.validate()?];
    image.write_pixels(&layout, &mut bytes)?;
    let (w, h) = (image.width() as u32, image.height() as u32);
    let fail = |message: String| Error::ImageFile { path: path.to_path_buf(), message };
    let dynamic = match (channels, sample) {
        (1, SampleType::U8) => DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, bytes).expect("sized")),
        (3, SampleType::U8) => DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, bytes).expect("sized")),
        (4, SampleType::U8) => DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, bytes).expect("sized")),
        (n, _) => {
            let words: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])).collect();
            match n {
                1 => DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, words).expect("sized")),
                3 => DynamicImage::ImageRgb16(image::ImageBuffer::from_raw(w, h, words).expect("sized")),
                _ => DynamicImage::ImageRgba16(image::ImageBuffer::from_raw(w, h, words).expect("sized")),
            }
        }
    };
    let target = match extension {
        "png" => ImageFormat::Png,
        "tif" | "tiff" => ImageFormat::Tiff,
        _ => ImageFormat::Jpeg,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    if target == ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        dynamic.write_with_encoder(encoder).map_err(|e| fail(format!("cannot encode: {e}")))?;
    } else {
        dynamic.write_to(&mut out, target).map_err(|e| fail(format!("cannot encode: {e}")))?;
    }
    Ok(out.into_inner())
}

/// The image as a float32 (H, W, 3) `.npy` file.
fn npy_bytes(image: &Image) -> Result<Vec<u8>> {
    let hwc: Array3<f32> = image.rgb().view().permuted_axes([1, 2, 0]).as_standard_layout().into_owned();
    let mut out = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&hwc, &mut out)
        .map_err(|e| Error::InvalidImage(format!("cannot encode .npy: {e}")))?;
    Ok(out)
}

/// Reads a float32 `.npy` image (H, W, 3) in [0, 1].
pub fn read_npy_image(path: &Path) -> Result<Image> {
    let hwc: Array3<f32> = ndarray_npy::read_npy(path)
        .map_err(|e| Error::ImageFile { path: path.to_path_buf(), message: format!("cannot read .npy: {e}") })?;
    if hwc.len_of(Axis(2)) != 3 {
        return Err(Error::ImageFile { path: path.to_path_buf(), message: "expected an (H, W, 3) array".into() });
    }
    Image::from_planes(hwc.permuted_axes([2, 0, 1]).as_standard_layout().into_owned().mapv(|v| v.clamp(0.0, 1.0)), None)
}

/// Writes bytes to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    file.write_all(bytes).map_err(|e| Error::io(file.path(), e))?;
    file.as_file().sync_all().map_err(|e| Error::io(file.path(), e))?;
    file.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

fn bytes_of_u16(words: &[u16]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn bytes_of_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}
