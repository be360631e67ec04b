//! Pixel descriptors (`dpir_pixels`): their validation and the memory they span; and `dpir_image`, pixel
//! buffers the library owns (image files read into memory, blank images to restore into).

use std::ffi::{c_char, c_void};

use super::{
    c_enum_from_u32, call, call_quietly, dpir_status, init_struct, put, read_struct, Failure, Outcome, Versioned,
};
use crate::imagefile;
use crate::{AlphaMode, PixelLayout, Pixels, PixelsMut, SampleType, Transfer};

/// How one sample is stored (the `sample` field of `dpir_pixels`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_sample_type {
    /// 8-bit unsigned, 0..255 maps to [0, 1].
    U8 = 0,
    /// 16-bit unsigned in native byte order, 0..65535 maps to [0, 1].
    U16 = 1,
    /// IEEE 754 half float in native byte order.
    F16 = 2,
    /// IEEE 754 single float in native byte order.
    F32 = 3,
}
c_enum_from_u32!(dpir_sample_type: U8, U16, F16, F32);

/// Whether colour samples are multiplied by alpha (the `alpha` field of `dpir_pixels`). Alpha itself is carried
/// through untouched (resized with the image when scaling), never restored.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_alpha {
    /// Colour independent of alpha (also the value for 1 and 3 channels).
    Straight = 0,
    /// Colour already multiplied by alpha; 4 channels only.
    Premultiplied = 1,
}
c_enum_from_u32!(dpir_alpha: Straight, Premultiplied);

/// How colour samples encode light (the `transfer` field of `dpir_pixels`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_transfer {
    /// sRGB-encoded, as image files usually are (what the model was trained on).
    Srgb = 0,
    /// Linear light (as in OpenFX hosts and GIMP's linear mode); converted for the model and back.
    Linear = 1,
}
c_enum_from_u32!(dpir_transfer: Srgb, Linear);

/// Describes an interleaved pixel buffer the caller owns: a source dpir reads or a destination it writes.
///
/// Row `y` (0 = top) starts at `(char *)data + y * stride`. A negative stride describes a bottom-up buffer
/// (OpenFX, BMP): `data` still points to row 0, the top row, and the rows below it lie at lower addresses.
/// Samples are interleaved (gray; RGB; RGBA) and need no particular alignment.
///
/// Always fill one with `dpir_pixels_init(&pixels, sizeof pixels)` first, then set the fields. dpir validates a
/// descriptor completely before it touches the memory it describes, and never reads or writes outside the
/// `|stride| * (height - 1) + width * channels * sample size` bytes it spans.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_pixels {
    /// `sizeof(dpir_pixels)`, set by `dpir_pixels_init()`.
    pub size: usize,
    /// Pixels per row, 1..65536.
    pub width: u32,
    /// Rows, 1..65536.
    pub height: u32,
    /// 1 (gray), 3 (RGB) or 4 (RGBA).
    pub channels: u32,
    /// A `dpir_sample_type`. Default `DPIR_SAMPLE_TYPE_U8`.
    pub sample: u32,
    /// A `dpir_alpha`. Default `DPIR_ALPHA_STRAIGHT`.
    pub alpha: u32,
    /// A `dpir_transfer`. Default `DPIR_TRANSFER_SRGB`.
    pub transfer: u32,
    /// Bytes from the start of one row to the start of the next (the row below); negative for bottom-up
    /// buffers. Its magnitude is at least `width * channels * sample size`.
    pub stride: isize,
    /// Row 0 (the top row). Never NULL. dpir only reads a source, only writes a destination, and keeps no
    /// pointer after the call returns.
    pub data: *mut c_void,
}

impl Versioned for dpir_pixels {
    const NAME: &'static str = "dpir_pixels";
    const SIZES: &'static [usize] = &[std::mem::size_of::<dpir_pixels>()];

    fn defaults() -> dpir_pixels {
        dpir_pixels {
            size: std::mem::size_of::<dpir_pixels>(),
            width: 0,
            height: 0,
            channels: 0,
            sample: dpir_sample_type::U8 as u32,
            alpha: dpir_alpha::Straight as u32,
            transfer: dpir_transfer::Srgb as u32,
            stride: 0,
            data: std::ptr::null_mut(),
        }
    }
}

/// A validated descriptor: the Rust layout, the memory it spans (from its lowest address), and what the caller
/// passed it as ("source", "destination", ...), for messages.
#[derive(Debug)]
pub(crate) struct Described {
    pub(crate) layout: PixelLayout,
    start: *mut u8,
    span: usize,
    what: &'static str,
}

impl Described {
    /// Validates the descriptor at `ptr` without touching the pixels; `what` names it in messages.
    ///
    /// # Safety
    /// A non-NULL `ptr` must point to a `dpir_pixels` (of the size its `size` field gives).
    pub(crate) unsafe fn new(ptr: *const dpir_pixels, what: &'static str) -> Outcome<Described> {
        // SAFETY: the caller's contract.
        let pixels = unsafe { read_struct(ptr, what)? };
        let bad = |message: String| Failure::image(format!("{what}: {message}"));
        let sample = dpir_sample_type::try_from(pixels.sample)
            .map_err(|v| bad(format!("sample {v} is not a dpir_sample_type (0 to 3)")))?;
        let alpha =
            dpir_alpha::try_from(pixels.alpha).map_err(|v| bad(format!("alpha {v} is not a dpir_alpha (0 or 1)")))?;
        let transfer = dpir_transfer::try_from(pixels.transfer)
            .map_err(|v| bad(format!("transfer {v} is not a dpir_transfer (0 or 1)")))?;
        let layout = PixelLayout {
            width: pixels.width as usize,
            height: pixels.height as usize,
            channels: pixels.channels as usize,
            sample: sample.into(),
            alpha: alpha.into(),
            transfer: transfer.into(),
            stride: pixels.stride,
        };
        let span = layout.validate().map_err(Failure::about(what))?;
        if pixels.data.is_null() {
            return Err(bad("data is NULL".into()));
        }
        // Bottom-up rows lie below `data`: the span starts (height - 1) strides lower.
        let below = if layout.stride < 0 { layout.stride.unsigned_abs() * (layout.height - 1) } else { 0 };
        let lowest = (pixels.data as usize).checked_sub(below);
        if lowest.and_then(|lowest| lowest.checked_add(span)).is_none() {
            return Err(bad(format!(
                "{span} bytes from row 0 at {:p} with stride {} run outside the address space",
                pixels.data, layout.stride
            )));
        }
        Ok(Described { layout, start: pixels.data.cast::<u8>().wrapping_sub(below), span, what })
    }

    /// Bytes the buffer spans.
    pub(crate) fn span(&self) -> usize {
        self.span
    }

    /// Whether the two buffers share any byte.
    fn overlaps(&self, other: &Described) -> bool {
        let (a, b) = (self.start as usize, other.start as usize);
        a < b + other.span && b < a + self.span
    }

    /// Fails unless `destination` shares no byte with this buffer (Rust may not read and write one memory).
    pub(crate) fn check_apart(&self, destination: &Described) -> Outcome {
        if self.overlaps(destination) {
            return Err(Failure::image(format!(
                "{} and {} overlap; restoring in place is not supported, use separate buffers",
                self.what, destination.what
            )));
        }
        Ok(())
    }

    /// The pixels, to read.
    ///
    /// # Safety
    /// The descriptor's caller promised `span` readable bytes, not written by anyone during `'a`.
    pub(crate) unsafe fn pixels<'a>(&self) -> Outcome<Pixels<'a>> {
        // SAFETY: validated non-NULL, no wrap-around, span <= isize::MAX; the rest is the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(self.start, self.span) };
        Pixels::new(self.layout, bytes).map_err(Failure::about(self.what))
    }

    /// The pixels, to write.
    ///
    /// # Safety
    /// The descriptor's caller promised `span` writable bytes, used by nobody else during `'a` (callers check
    /// the destination is apart from every source with [`Described::check_apart`]).
    pub(crate) unsafe fn pixels_mut<'a>(&self) -> Outcome<PixelsMut<'a>> {
        // SAFETY: as for `pixels`, and nothing else refers to these bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.start, self.span) };
        PixelsMut::new(self.layout, bytes).map_err(Failure::about(self.what))
    }
}

impl From<dpir_sample_type> for SampleType {
    fn from(sample: dpir_sample_type) -> SampleType {
        match sample {
            dpir_sample_type::U8 => SampleType::U8,
            dpir_sample_type::U16 => SampleType::U16,
            dpir_sample_type::F16 => SampleType::F16,
            dpir_sample_type::F32 => SampleType::F32,
        }
    }
}

impl From<SampleType> for dpir_sample_type {
    fn from(sample: SampleType) -> dpir_sample_type {
        match sample {
            SampleType::U8 => dpir_sample_type::U8,
            SampleType::U16 => dpir_sample_type::U16,
            SampleType::F16 => dpir_sample_type::F16,
            SampleType::F32 => dpir_sample_type::F32,
        }
    }
}

impl From<dpir_alpha> for AlphaMode {
    fn from(alpha: dpir_alpha) -> AlphaMode {
        match alpha {
            dpir_alpha::Straight => AlphaMode::Straight,
            dpir_alpha::Premultiplied => AlphaMode::Premultiplied,
        }
    }
}

impl From<dpir_transfer> for Transfer {
    fn from(transfer: dpir_transfer) -> Transfer {
        match transfer {
            dpir_transfer::Srgb => Transfer::Srgb,
            dpir_transfer::Linear => Transfer::Linear,
        }
    }
}

/// Fills `pixels` with the defaults (everything zero or NULL, 8-bit straight-alpha sRGB samples) and sets its
/// `size` field; pass `sizeof *pixels` as `size`.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` when `pixels` is NULL or `size` is not a size of `dpir_pixels` this
/// library knows. Thread-safe.
///
/// # Safety
/// `pixels` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_pixels_init(pixels: *mut dpir_pixels, size: usize) -> dpir_status {
    // SAFETY: forwarded from the caller.
    call(|| unsafe { init_struct(pixels, size) })
}

/// Checks a pixel descriptor exactly as a restore would, without touching its pixels, and stores the number of
/// bytes the buffer spans in `*span` (when `span` is not NULL): what a caller must allocate for it.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` for a NULL `pixels` or a wrong `size` field, `DPIR_STATUS_INVALID_IMAGE`
/// for any inconsistent descriptor, with the reason in `dpir_last_error_message()`. Thread-safe.
///
/// # Safety
/// `pixels` must be NULL or point to a `dpir_pixels`; `span` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_pixels_validate(pixels: *const dpir_pixels, span: *mut usize) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let described = unsafe { Described::new(pixels, "pixels")? };
        if !span.is_null() {
            // SAFETY: non-NULL and writable by the caller's contract.
            unsafe { put(span, described.span(), "span")? };
        }
        Ok(())
    })
}

/// A pixel buffer owned by dpir: an image file read into memory (`dpir_image_read()`), or a blank image
/// (`dpir_image_create()`). Tightly packed, top-down, straight alpha, sRGB-encoded, 16-byte aligned.
/// Free it with `dpir_image_free()`.
pub struct dpir_image {
    pixels: dpir_pixels,
    memory: std::alloc::Layout,
}

impl dpir_image {
    /// A zeroed, packed image of `layout`, or `DPIR_STATUS_TOO_LARGE` when the memory cannot be had. The zeroed
    /// memory comes from the system as it is touched, so asking costs nothing until it is used.
    fn blank(layout: PixelLayout) -> Outcome<Box<dpir_image>> {
        let span = layout.validate().map_err(Failure::about("image"))?;
        let too_large = || Failure::new(dpir_status::TooLarge, format!("cannot allocate {span} bytes for an image"));
        let memory = std::alloc::Layout::from_size_align(span, 16).map_err(|_| too_large())?;
        // SAFETY: `span` is not zero (validated layouts hold at least one pixel).
        let data = unsafe { std::alloc::alloc_zeroed(memory) };
        if data.is_null() {
            return Err(too_large());
        }
        let sample: dpir_sample_type = layout.sample.into();
        let pixels = dpir_pixels {
            width: layout.width as u32,
            height: layout.height as u32,
            channels: layout.channels as u32,
            sample: sample as u32,
            stride: layout.stride,
            data: data.cast::<c_void>(),
            ..dpir_pixels::defaults()
        };
        Ok(Box::new(dpir_image { pixels, memory }))
    }
}

impl Drop for dpir_image {
    fn drop(&mut self) {
        // SAFETY: allocated in `blank` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.pixels.data.cast::<u8>(), self.memory) };
    }
}

/// Allocates a blank (all zero) image of `width` x `height` pixels with `channels` (1, 3 or 4) samples of type
/// `sample` (a `dpir_sample_type`), tightly packed, and stores it in `*image`; `dpir_image_pixels()` describes it.
///
/// On failure `*image` is set to NULL: `DPIR_STATUS_INVALID_ARGUMENT` (NULL `image`), `DPIR_STATUS_INVALID_IMAGE`
/// (bad size, channels or sample type), `DPIR_STATUS_TOO_LARGE` (out of memory). Thread-safe.
///
/// # Safety
/// `image` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_image_create(
    width: u32,
    height: u32,
    channels: u32,
    sample: u32,
    image: *mut *mut dpir_image,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        unsafe { put(image, std::ptr::null_mut(), "image")? };
        let sample = dpir_sample_type::try_from(sample)
            .map_err(|v| Failure::image(format!("image: sample {v} is not a dpir_sample_type (0 to 3)")))?;
        let layout = PixelLayout::packed(width as usize, height as usize, channels as usize, sample.into());
        let blank = dpir_image::blank(layout)?;
        // SAFETY: checked writable above.
        unsafe { put(image, Box::into_raw(blank), "image") }
    })
}

/// Reads a PNG, JPEG or TIFF file (8 or 16 bit; gray, RGB or RGBA; gray with alpha becomes RGBA) into a new image,
/// stored in `*image`. Its sample type is U8 or U16 as in the file (F32 for float TIFFs), top-down, packed,
/// straight alpha, sRGB-encoded.
///
/// On failure `*image` is set to NULL: `DPIR_STATUS_INVALID_ARGUMENT` (NULL argument), `DPIR_STATUS_IO` (missing,
/// unreadable or undecodable file). Thread-safe.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string; `image` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_image_read(path: *const c_char, image: *mut *mut dpir_image) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        unsafe { put(image, std::ptr::null_mut(), "image")? };
        // SAFETY: forwarded from the caller.
        let path = unsafe { super::path(path, "path")? };
        let (layout, decoded) = imagefile::read(path)?;
        let blank = dpir_image::blank(layout)?;
        // SAFETY: the buffer was just allocated with at least `decoded.len()` bytes and nothing else refers to it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(blank.pixels.data.cast::<u8>(), decoded.len()) };
        bytes.copy_from_slice(&decoded);
        // SAFETY: checked writable above.
        unsafe { put(image, Box::into_raw(blank), "image") }
    })
}

/// The descriptor of an image's pixels, owned by the image: valid until `dpir_image_free()`. Its pixels may be
/// read and written through `data` (for example as a restore's destination). NULL when `image` is NULL.
/// Thread-safe.
///
/// # Safety
/// `image` must be NULL or an image from `dpir_image_create()` or `dpir_image_read()` that was not freed.
#[no_mangle]
pub unsafe extern "C" fn dpir_image_pixels(image: *const dpir_image) -> *const dpir_pixels {
    call_quietly(std::ptr::null(), || {
        // SAFETY: the caller's contract.
        unsafe { image.as_ref() }.map_or(std::ptr::null(), |image| &image.pixels as *const dpir_pixels)
    })
}

/// Writes the pixels `pixels` describes to an image file, in the format of its extension: `.png` and `.tif` keep
/// 1, 3 or 4 channels at 8 bits (U8) or 16 bits (U16, F16, F32); `.jpg` is 8-bit gray or RGB. Linear or
/// premultiplied pixels are converted to sRGB-encoded straight alpha. The file appears whole or not at all (it is
/// written beside `path` and renamed over it).
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` (NULL argument), `DPIR_STATUS_INVALID_IMAGE` (bad descriptor),
/// `DPIR_STATUS_IO` (unknown extension, unwritable place). Thread-safe.
///
/// # Safety
/// `pixels` must be NULL or a descriptor of readable memory; `path` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dpir_image_write(pixels: *const dpir_pixels, path: *const c_char) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (described, path) = unsafe { (Described::new(pixels, "pixels")?, super::path(path, "path")?) };
        // SAFETY: validated; the caller promised readable memory.
        imagefile::write_pixels(path, &unsafe { described.pixels()? })?;
        Ok(())
    })
}

/// Frees an image and its pixels. NULL does nothing. Not while another thread uses the image.
///
/// # Safety
/// `image` must be NULL or an image from `dpir_image_create()` or `dpir_image_read()` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn dpir_image_free(image: *mut dpir_image) {
    call_quietly((), || {
        if !image.is_null() {
            // SAFETY: made by Box::into_raw in this module, freed once by the caller's contract.
            drop(unsafe { Box::from_raw(image) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(width: u32, height: u32, channels: u32, stride: isize, data: *mut c_void) -> dpir_pixels {
        dpir_pixels { width, height, channels, stride, data, ..dpir_pixels::defaults() }
    }

    #[test]
    fn negative_strides_start_below_row_zero() {
        let mut buffer = [0u8; 12];
        let row0 = buffer[8..].as_mut_ptr().cast::<c_void>();
        let pixels = descriptor(4, 3, 1, -4, row0);
        // SAFETY: a live descriptor.
        let described = unsafe { Described::new(&pixels, "source") }.unwrap();
        assert_eq!(described.span(), 12);
        assert_eq!(described.start, buffer.as_mut_ptr());
    }

    #[test]
    fn rows_below_address_zero_are_refused() {
        let pixels = descriptor(4, 3, 1, -4, 4 as *mut c_void);
        // SAFETY: the pixels are never touched.
        let failure = unsafe { Described::new(&pixels, "source") }.unwrap_err();
        assert_eq!(failure.status, dpir_status::InvalidImage);
        assert!(failure.message.contains("address space"), "{}", failure.message);
    }

    #[test]
    fn overlap_is_detected() {
        let mut buffer = [0u8; 32];
        let base = buffer.as_mut_ptr();
        let at = |offset: usize, n: u32| {
            let pixels = descriptor(n, 1, 1, n as isize, base.wrapping_add(offset).cast());
            // SAFETY: a live descriptor.
            unsafe { Described::new(&pixels, "x") }.unwrap()
        };
        assert!(at(0, 8).overlaps(&at(7, 4)));
        assert!(!at(0, 8).overlaps(&at(8, 4)));
        assert!(at(8, 4).overlaps(&at(0, 16)));
    }
}
