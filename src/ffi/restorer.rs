//! The loaded model (`dpir_restorer`) and what it does: restore a whole image or a region of a frame, and say
//! what a restore needs (output size, tiles, memory, the source pixels a region reads).

use std::ffi::{c_char, CString};

use super::options::{dpir_execution_provider, dpir_load_options, dpir_restore_options, restore_options};
use super::pixels::{dpir_pixels, Described};
use super::{
    c_string, call, call_quietly, dpir_status, init_struct, non_null, put, read_struct, write_struct, Failure, Outcome,
    Versioned,
};
use crate::{ExecutionProvider, Rect, Region, Restorer};

/// A loaded model bundle with its ONNX Runtime sessions. Thread-safe: any number of threads may restore with one
/// restorer at the same time (each call keeps its own state; the graphs' runs are queued per graph).
/// Free it with `dpir_restorer_free()` once no call uses it.
pub struct dpir_restorer {
    restorer: Restorer,
    model_name: CString,
    execution_provider: CString,
    onnxruntime_library: CString,
}

/// What a loaded restorer is, filled by `dpir_restorer_get_info()`. Strings belong to the restorer and stay
/// valid until `dpir_restorer_free()`. Fields are only ever appended.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_restorer_info {
    /// `sizeof(dpir_restorer_info)` as passed to `dpir_restorer_get_info()`.
    pub size: usize,
    /// The bundle's model name (its manifest's `name`).
    pub model_name: *const c_char,
    /// The execution provider in use, as text: "cpu", "cuda:0", "tensorrt:0 (fp16)".
    pub execution_provider_name: *const c_char,
    /// Path of the ONNX Runtime library in use.
    pub onnxruntime_library: *const c_char,
    /// The `dpir_execution_provider` in use (what `DPIR_EXECUTION_PROVIDER_AUTO` chose; never AUTO).
    pub execution_provider: u32,
    /// Its CUDA device (0 on the CPU).
    pub device: i32,
    /// Denoising steps when the options leave them at 0.
    pub default_steps: u32,
    /// Guidance scale when the options leave it at 0.
    pub default_guidance: f32,
    /// Seed when the options leave it at `DPIR_SEED_DEFAULT`.
    pub default_seed: u64,
    /// 1 when the bundle has a text encoder, so `dpir_restore_options.prompt_text` can be used; else 0.
    pub has_text_encoder: u32,
    /// Tile side, in latent samples, when the options leave it at 0 (capped at one pass).
    pub default_tile_size: u32,
    /// Tile overlap, in latent samples, when the options leave it at -1.
    pub default_tile_overlap: u32,
    /// Pixels per latent sample along each side: a tile of `default_tile_size` covers that many times as many
    /// pixels.
    pub pixels_per_latent: u32,
    /// Output size / input size when the options leave the scale at its default.
    pub default_scale: f32,
}

impl Versioned for dpir_restorer_info {
    const NAME: &'static str = "dpir_restorer_info";
    // 64: before the tile defaults, the pixels per latent and the scale.
    const SIZES: &'static [usize] = &[64, std::mem::size_of::<dpir_restorer_info>()];

    fn defaults() -> dpir_restorer_info {
        dpir_restorer_info {
            size: std::mem::size_of::<dpir_restorer_info>(),
            model_name: std::ptr::null(),
            execution_provider_name: std::ptr::null(),
            onnxruntime_library: std::ptr::null(),
            execution_provider: dpir_execution_provider::Cpu as u32,
            device: 0,
            default_steps: 0,
            default_guidance: 0.0,
            default_seed: 0,
            has_text_encoder: 0,
            default_tile_size: 0,
            default_tile_overlap: 0,
            pixels_per_latent: 0,
            default_scale: 1.0,
        }
    }
}

impl dpir_restorer {
    pub(super) fn restorer(&self) -> &Restorer {
        &self.restorer
    }
}

/// Loads the model bundle in directory `bundle` with `options` (NULL: the defaults, CPU), validating its manifest
/// against every graph, and stores the restorer in `*restorer`. Blocks while ONNX Runtime builds the sessions
/// (seconds for the real model; minutes when TensorRT builds engines).
///
/// On failure `*restorer` is set to NULL and the status says why: `DPIR_STATUS_INVALID_ARGUMENT` (NULL
/// argument, bad `size`), `DPIR_STATUS_INVALID_OPTIONS`, `DPIR_STATUS_ONNX_RUNTIME`,
/// `DPIR_STATUS_EXECUTION_PROVIDER`, `DPIR_STATUS_BUNDLE`, `DPIR_STATUS_INFERENCE`, `DPIR_STATUS_IO`.
/// Thread-safe.
///
/// # Safety
/// `bundle` must be NULL or a NUL-terminated path; `options` NULL or an initialised `dpir_load_options`;
/// `restorer` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_restorer_load(
    bundle: *const c_char,
    options: *const dpir_load_options,
    restorer: *mut *mut dpir_restorer,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        unsafe { put(restorer, std::ptr::null_mut(), "restorer")? };
        // SAFETY: forwarded from the caller.
        let (bundle, runtime) = unsafe { (super::path(bundle, "bundle")?, super::options::runtime_options(options)?) };
        let loaded = Restorer::load(bundle, &runtime)?;
        let handle = Box::new(dpir_restorer {
            model_name: c_string(loaded.manifest().name.clone()),
            execution_provider: c_string(loaded.execution_provider().to_string()),
            onnxruntime_library: c_string(loaded.onnxruntime_library().display().to_string()),
            restorer: loaded,
        });
        // SAFETY: checked writable above.
        unsafe { put(restorer, Box::into_raw(handle), "restorer") }
    })
}

/// Frees a restorer and its sessions. NULL does nothing. Only once no other call (on any thread) uses it.
///
/// # Safety
/// `restorer` must be NULL or a restorer from `dpir_restorer_load()` not yet freed and not in use.
#[no_mangle]
pub unsafe extern "C" fn dpir_restorer_free(restorer: *mut dpir_restorer) {
    call_quietly((), || {
        if !restorer.is_null() {
            // SAFETY: made by Box::into_raw in dpir_restorer_load, freed once by the caller's contract.
            drop(unsafe { Box::from_raw(restorer) });
        }
    })
}

/// Describes a restorer into `*info`, a struct of `size` bytes (pass `sizeof *info`). Thread-safe.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` for a NULL argument or an unknown `size`.
///
/// # Safety
/// `restorer` must be NULL or live; `info` NULL or valid for writing `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_restorer_get_info(
    restorer: *const dpir_restorer,
    info: *mut dpir_restorer_info,
    size: usize,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let handle = unsafe { non_null(restorer, "restorer")? };
        let manifest = handle.restorer.manifest();
        let (kind, device) = match handle.restorer.execution_provider() {
            ExecutionProvider::Cpu => (dpir_execution_provider::Cpu, 0),
            ExecutionProvider::Cuda { device } => (dpir_execution_provider::Cuda, *device),
            ExecutionProvider::TensorRt { device, .. } => (dpir_execution_provider::Tensorrt, *device),
            ExecutionProvider::Auto => (dpir_execution_provider::Auto, 0),
        };
        let value = dpir_restorer_info {
            size,
            model_name: handle.model_name.as_ptr(),
            execution_provider_name: handle.execution_provider.as_ptr(),
            onnxruntime_library: handle.onnxruntime_library.as_ptr(),
            execution_provider: kind as u32,
            device,
            default_steps: u32::try_from(manifest.scheduler.steps).unwrap_or(u32::MAX),
            default_guidance: manifest.defaults.guidance,
            default_seed: manifest.defaults.seed,
            has_text_encoder: handle.restorer.has_text_encoder() as u32,
            default_tile_size: u32::try_from(manifest.default_tile()).unwrap_or(u32::MAX),
            default_tile_overlap: u32::try_from(manifest.defaults.latent_overlap).unwrap_or(u32::MAX),
            pixels_per_latent: u32::try_from(manifest.latent.downscale).unwrap_or(u32::MAX),
            default_scale: 1.0,
        };
        // SAFETY: forwarded from the caller.
        unsafe { write_struct(info, size, value, "info") }
    })
}

/// What restoring an image of a given size needs, filled by `dpir_get_requirements()`. Fields are only ever appended.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_requirements {
    /// `sizeof(dpir_requirements)` as passed to `dpir_get_requirements()`.
    pub size: usize,
    /// Width of the output (the input's times the scale): what a whole-image destination must measure.
    pub output_width: u32,
    /// Height of the output.
    pub output_height: u32,
    /// The model works on multiples of this many pixels (inputs are padded to it by the library).
    pub pixel_multiple: u32,
    /// The largest side one model pass takes, in pixels; larger images are restored in tiles.
    pub max_pass_size: u32,
    /// Sampling tiles the restore runs.
    pub tiles: u64,
    /// Estimated peak memory of the restore, in bytes, beyond the caller's buffers: the weights loaded at that
    /// moment, the largest model run's activations for the chosen tile, and dpir's own buffers. Device memory
    /// on CUDA and TensorRT (an upper bound there), resident memory on the CPU.
    pub estimated_bytes: u64,
    /// The part of `estimated_bytes` that is weights.
    pub weights_bytes: u64,
    /// The tile side the restore uses, in pixels: within a memory budget, the largest that fits.
    pub tile_size: u32,
    /// Nonzero when, within the memory budget, the prompt encoders and the transformer take turns in memory.
    pub releases_graphs: u32,
}

impl Versioned for dpir_requirements {
    const NAME: &'static str = "dpir_requirements";
    const SIZES: &'static [usize] = &[40, std::mem::size_of::<dpir_requirements>()];

    fn defaults() -> dpir_requirements {
        dpir_requirements {
            size: std::mem::size_of::<dpir_requirements>(),
            output_width: 0,
            output_height: 0,
            pixel_multiple: 0,
            max_pass_size: 0,
            tiles: 0,
            estimated_bytes: 0,
            weights_bytes: 0,
            tile_size: 0,
            releases_graphs: 0,
        }
    }
}

/// A rectangle of pixels: `x`, `y` its top-left corner (y down, 0 = top row). A plain value type that never
/// changes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct dpir_rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// A rectangle inside a frame, whose sides fit `u32` (they are at most 65536).
impl From<Rect> for dpir_rect {
    fn from(rect: Rect) -> dpir_rect {
        dpir_rect { x: rect.x as u32, y: rect.y as u32, width: rect.width as u32, height: rect.height as u32 }
    }
}

impl From<dpir_rect> for Rect {
    fn from(rect: dpir_rect) -> Rect {
        Rect::new(rect.x as usize, rect.y as usize, rect.width as usize, rect.height as usize)
    }
}

/// A rectangle of a frame to restore from a crop of the frame's pixels, for hosts that render in tiles (OpenFX)
/// or restore a selection (GIMP). In the default (independent) tile mode, restoring a frame region by region
/// gives exactly the pixels of one whole-frame restore, when each region's crop covers what
/// `dpir_region_of_interest()` asks for and `context` is the whole frame. Fill with
/// `dpir_region_init(&region, sizeof region)`; fields are only ever appended.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_region {
    /// `sizeof(dpir_region)`, set by `dpir_region_init()`.
    pub size: usize,
    /// The crop of the frame's input pixels, covering at least `dpir_region_of_interest()` of `rect`. Required.
    pub source: *const dpir_pixels,
    /// The whole frame (at any resolution, for example a proxy) for the global prompt, or NULL (default): the
    /// crop then stands in for it, and the result differs from a whole-frame restore unless the crop is the
    /// whole frame.
    pub context: *const dpir_pixels,
    /// Column of the crop's top-left pixel in the frame, in input pixels.
    pub origin_x: u32,
    /// Row of the crop's top-left pixel in the frame (y down), in input pixels.
    pub origin_y: u32,
    /// Width of the whole frame, in input pixels.
    pub frame_width: u32,
    /// Height of the whole frame, in input pixels.
    pub frame_height: u32,
    /// The rectangle to produce, in output-frame pixels (the frame times the scale); the destination measures
    /// `rect.width` x `rect.height`.
    pub rect: dpir_rect,
}

impl Versioned for dpir_region {
    const NAME: &'static str = "dpir_region";
    const SIZES: &'static [usize] = &[std::mem::size_of::<dpir_region>()];

    fn defaults() -> dpir_region {
        dpir_region {
            size: std::mem::size_of::<dpir_region>(),
            source: std::ptr::null(),
            context: std::ptr::null(),
            origin_x: 0,
            origin_y: 0,
            frame_width: 0,
            frame_height: 0,
            rect: dpir_rect { x: 0, y: 0, width: 0, height: 0 },
        }
    }
}

/// Fills `region` with the defaults (everything zero or NULL) and sets its `size` field; pass `sizeof *region`.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` when `region` is NULL or `size` is not a size of `dpir_region` this
/// library knows. Thread-safe.
///
/// # Safety
/// `region` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_region_init(region: *mut dpir_region, size: usize) -> dpir_status {
    // SAFETY: forwarded from the caller.
    call(|| unsafe { init_struct(region, size) })
}

/// Fills `*requirements`, a struct of `size` bytes (pass `sizeof *requirements`), with what restoring a
/// `width` x `height` image with `options` (NULL: the defaults) needs: the output size a destination must have,
/// the pixel multiple and largest pass of the model, the tiles and a memory estimate. Thread-safe.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` (NULL argument, unknown `size`), `DPIR_STATUS_INVALID_IMAGE` (an empty
/// size), `DPIR_STATUS_INVALID_OPTIONS`, `DPIR_STATUS_TOO_LARGE` (an output side over 65536 pixels).
///
/// # Safety
/// `restorer` must be NULL or live; `options` NULL or initialised; `requirements` NULL or valid for writing
/// `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_get_requirements(
    restorer: *const dpir_restorer,
    width: u32,
    height: u32,
    options: *const dpir_restore_options,
    requirements: *mut dpir_requirements,
    size: usize,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (handle, options) = unsafe { (non_null(restorer, "restorer")?, restore_options(options)?) };
        let needs = handle.restorer.requirements(width as usize, height as usize, &options)?;
        let value = dpir_requirements {
            size,
            output_width: needs.output_size.0 as u32,
            output_height: needs.output_size.1 as u32,
            pixel_multiple: u32::try_from(needs.pixel_multiple).unwrap_or(u32::MAX),
            max_pass_size: u32::try_from(needs.max_pass_size).unwrap_or(u32::MAX),
            tiles: needs.tiles as u64,
            estimated_bytes: needs.estimated_bytes,
            weights_bytes: needs.weights_bytes,
            tile_size: u32::try_from(needs.tile_size).unwrap_or(u32::MAX),
            releases_graphs: needs.releases_graphs as u32,
        };
        // SAFETY: forwarded from the caller.
        unsafe { write_struct(requirements, size, value, "requirements") }
    })
}

/// Stores in `*roi` the input pixels (frame coordinates, inside the frame) that restoring `rect` (output-frame
/// pixels) of a `frame_width` x `frame_height` frame with `options` (NULL: the defaults) reads: what a host must
/// hand over as the region's crop. Thread-safe.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` (NULL argument), `DPIR_STATUS_INVALID_IMAGE` (an empty frame),
/// `DPIR_STATUS_INVALID_OPTIONS` (bad options, a rectangle outside the output frame),
/// `DPIR_STATUS_TOO_LARGE`.
///
/// # Safety
/// `restorer` must be NULL or live; `rect` NULL or readable; `options` NULL or initialised; `roi` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_region_of_interest(
    restorer: *const dpir_restorer,
    frame_width: u32,
    frame_height: u32,
    rect: *const dpir_rect,
    options: *const dpir_restore_options,
    roi: *mut dpir_rect,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (handle, rect, options) =
            unsafe { (non_null(restorer, "restorer")?, non_null(rect, "rect")?, restore_options(options)?) };
        if roi.is_null() {
            return Err(Failure::argument("roi is NULL"));
        }
        let frame = (frame_width as usize, frame_height as usize);
        let area = handle.restorer.region_of_interest(frame, (*rect).into(), &options)?;
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { put(roi, area.into(), "roi") }
    })
}

/// A validated destination for a restore, apart from every source.
///
/// # Safety
/// As for [`Described::new`].
unsafe fn described_destination(ptr: *const dpir_pixels, sources: &[&Described]) -> Outcome<Described> {
    // SAFETY: forwarded.
    let destination = unsafe { Described::new(ptr, "destination")? };
    for source in sources {
        source.check_apart(&destination)?;
    }
    Ok(destination)
}

/// Restores the whole image `source` into `destination`, which must measure what `dpir_get_requirements()` gives as
/// the output size (the source's size times the scale) and may have any channels, sample type, alpha mode,
/// transfer and stride. Images larger than one model pass are restored in tiles. `options` may be NULL (the
/// defaults). Blocks until done; thread-safe (several threads may restore with one restorer at once).
///
/// Everything is validated before any pixel is read: `DPIR_STATUS_INVALID_ARGUMENT` (NULL restorer, unknown
/// `size`), `DPIR_STATUS_INVALID_IMAGE` (bad descriptor, destination of the wrong size, source and destination
/// overlapping), `DPIR_STATUS_INVALID_OPTIONS`, `DPIR_STATUS_TOO_LARGE`. Then `DPIR_STATUS_CANCELLED`,
/// `DPIR_STATUS_INFERENCE` or `DPIR_STATUS_BAD_OUTPUT` may stop the restore. The destination is written only when
/// the restore succeeds: on any failure it is left untouched.
///
/// # Safety
/// `restorer` must be NULL or live; the descriptors NULL or describing memory readable (source) and writable
/// (destination) and not changed by anyone else during the call; `options` NULL or initialised.
#[no_mangle]
pub unsafe extern "C" fn dpir_restore(
    restorer: *const dpir_restorer,
    source: *const dpir_pixels,
    destination: *const dpir_pixels,
    options: *const dpir_restore_options,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let handle = unsafe { non_null(restorer, "restorer")? };
        // SAFETY: forwarded from the caller.
        let source = unsafe { Described::new(source, "source")? };
        // SAFETY: forwarded from the caller.
        let (destination, options) =
            unsafe { (described_destination(destination, &[&source])?, restore_options(options)?) };
        // SAFETY: validated; readable, and writable apart from the source, by the caller's contract.
        let (pixels, mut dest) = unsafe { (source.pixels()?, destination.pixels_mut()?) };
        handle.restorer.restore_pixels(&pixels, &mut dest, &options)?;
        Ok(())
    })
}

/// Restores `region->rect` of a frame from a crop of it into `destination`, which measures `rect.width` x
/// `rect.height` (any format and stride). `options` may be NULL (the defaults). Blocks until done; thread-safe.
///
/// In the default (independent) tile mode the result equals the same rectangle of a whole-frame `dpir_restore()`
/// when the crop covers `dpir_region_of_interest()` of the rectangle and `region->context` is the whole frame
/// (or the crop is). In `DPIR_TILE_MODE_JOINT` a region only approximates the whole-frame restore.
///
/// Returns the statuses of `dpir_restore()`; also `DPIR_STATUS_INVALID_IMAGE` for a crop outside the frame and
/// `DPIR_STATUS_INVALID_OPTIONS` for a rectangle outside the output frame. The destination is written only when
/// the restore succeeds.
///
/// # Safety
/// As for `dpir_restore()`; `region` must be NULL or an initialised `dpir_region` whose descriptors are NULL or
/// valid.
#[no_mangle]
pub unsafe extern "C" fn dpir_restore_region(
    restorer: *const dpir_restorer,
    region: *const dpir_region,
    destination: *const dpir_pixels,
    options: *const dpir_restore_options,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (handle, region) = unsafe { (non_null(restorer, "restorer")?, read_struct(region, "region")?) };
        // SAFETY: forwarded from the caller.
        let source = unsafe { Described::new(region.source, "region source")? };
        let context = match region.context.is_null() {
            true => None,
            // SAFETY: forwarded from the caller.
            false => Some(unsafe { Described::new(region.context, "region context")? }),
        };
        let sources: Vec<&Described> = std::iter::once(&source).chain(&context).collect();
        // SAFETY: forwarded from the caller.
        let (destination, options) =
            unsafe { (described_destination(destination, &sources)?, restore_options(options)?) };
        // SAFETY: validated; readable, and writable apart from the sources, by the caller's contract.
        let (pixels, context, mut dest) = unsafe {
            let context = context.as_ref().map(|context| context.pixels()).transpose()?;
            (source.pixels()?, context, destination.pixels_mut()?)
        };
        let region = Region {
            source: pixels,
            origin: (region.origin_x as usize, region.origin_y as usize),
            frame: (region.frame_width as usize, region.frame_height as usize),
            rect: region.rect.into(),
            context,
        };
        handle.restorer.restore_region(&region, &mut dest, &options)?;
        Ok(())
    })
}
