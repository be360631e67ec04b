//! Options from C: how a bundle is loaded (`dpir_load_options`), how an image is restored
//! (`dpir_restore_options`), progress reports and the cancel handle.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Mutex};

use super::{
    c_enum_from_u32, call, call_quietly, dpir_status, init_struct, put, read_struct, Failure, Outcome, Versioned,
};
use crate::{
    CancelToken, ClipInput, ColorFix, Control, ExecutionProvider, Progress, RestoreOptions, RuntimeOptions, Stage,
    TileMode,
};

/// `seed` of `dpir_restore_options` meaning "the bundle's default seed".
pub const DPIR_SEED_DEFAULT: u64 = u64::MAX;

/// Where the graphs run (the `execution_provider` field of `dpir_load_options`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_execution_provider {
    /// ONNX Runtime's CPU provider. Always available.
    Cpu = 0,
    /// NVIDIA CUDA on `device`. Needs `libonnxruntime_providers_cuda.so` (Windows: `onnxruntime_providers_cuda.dll`;
    /// from onnxruntime-gpu) with CUDA 13 and cuDNN 9.
    Cuda = 1,
    /// NVIDIA TensorRT on `device`. Also needs TensorRT 10 (`libnvinfer`).
    Tensorrt = 2,
    /// The best that registers: TensorRT, then CUDA (device 0), then CPU; `dpir_restorer_get_info()` tells which.
    Auto = 3,
}
c_enum_from_u32!(dpir_execution_provider: Cpu, Cuda, Tensorrt, Auto);

/// Which image CLIP sees (the `clip_input` field of `dpir_restore_options`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_clip_input {
    /// The bundle's default.
    Default = 0,
    /// The (upsampled) input.
    Lq = 1,
    /// The VAE's reconstruction of the input (the paper's figure); costs one more decode.
    InitialRestoration = 2,
}
c_enum_from_u32!(dpir_clip_input: Default, Lq, InitialRestoration);

/// The colour fix after decoding (the `color_fix` field of `dpir_restore_options`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_color_fix {
    /// The bundle's default (wavelet for the real model).
    Default = 0,
    /// Keep the result's detail, take the low frequencies from the input.
    Wavelet = 1,
    /// The decoder's colours as they are.
    None = 2,
}
c_enum_from_u32!(dpir_color_fix: Default, Wavelet, None);

/// How an image larger than one model pass is split (the `tile_mode` field of `dpir_restore_options`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_tile_mode {
    /// The library's default (independent).
    Default = 0,
    /// Each tile is sampled, decoded and colour-fixed on its own, then blended with its neighbours. A pixel
    /// depends only on the tiles that contain it: region restores equal the same region of a whole restore, and
    /// memory stays per tile.
    Independent = 1,
    /// Every step blends all tiles' velocities before one step on the whole latent (the official tiled sampler).
    /// Needs the whole frame's latent in memory; region restores only approximate the whole restore.
    Joint = 2,
}
c_enum_from_u32!(dpir_tile_mode: Default, Independent, Joint);

/// What a restore is doing, in progress reports.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_stage {
    /// Upsampling and encoding the input.
    Encode = 0,
    /// Computing the CLIP prompts.
    Prompt = 1,
    /// Denoising: `step` of `steps`.
    Sample = 2,
    /// Decoding and fixing colour.
    Decode = 3,
}

impl From<Stage> for dpir_stage {
    fn from(stage: Stage) -> dpir_stage {
        match stage {
            Stage::Encode => dpir_stage::Encode,
            Stage::Prompt => dpir_stage::Prompt,
            Stage::Sample => dpir_stage::Sample,
            Stage::Decode => dpir_stage::Decode,
        }
    }
}

/// How `dpir_restorer_load()` loads a bundle. Fill with `dpir_load_options_init(&options, sizeof options)`, then
/// change what you need; fields are only ever appended.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_load_options {
    /// `sizeof(dpir_load_options)`, set by `dpir_load_options_init()`.
    pub size: usize,
    /// Path of `libonnxruntime.so` (Windows: `onnxruntime.dll`) to load, or NULL (default) to search:
    /// `DPIR_ORT_LIB`, `ORT_DYLIB_PATH`, beside the executable, beside libdpir, an installed onnxruntime Python
    /// package (README, "ONNX Runtime").
    /// One process loads one ONNX Runtime: a later load naming another library fails. Copied during the call.
    pub onnxruntime_library: *const c_char,
    /// A `dpir_execution_provider`. Default `DPIR_EXECUTION_PROVIDER_CPU`.
    pub execution_provider: u32,
    /// CUDA device ordinal for CUDA and TensorRT, >= 0. Default 0. No effect on the CPU.
    pub device: i32,
    /// ONNX Runtime intra-op threads per graph, at most 256; 0 (default) lets ONNX Runtime choose (one per core).
    pub threads: u32,
    /// Nonzero (default 1) builds fp16 TensorRT engines. No effect on other providers.
    pub tensorrt_fp16: u32,
    /// Root folder of the TensorRT engine and timing caches, or NULL (default) for the per-user folder
    /// `$XDG_CACHE_HOME/dpir/tensorrt` (`~/.cache/dpir/tensorrt`). No effect on other providers. Copied during
    /// the call.
    pub tensorrt_engine_cache: *const c_char,
    /// The most memory a restore may take, in bytes; 0 (default): no limit. Device memory on CUDA and TensorRT,
    /// resident memory on the CPU. Within it, graphs a stage does not need are released when keeping them would
    /// not fit and loaded again when needed, and tiles are made smaller until the estimate fits; a restore that
    /// cannot fit fails with `DPIR_STATUS_OUT_OF_MEMORY`, naming the budget it needs. `dpir_get_requirements()`
    /// reports the estimate and the tile chosen.
    pub memory_budget: u64,
}

impl Versioned for dpir_load_options {
    const NAME: &'static str = "dpir_load_options";
    const SIZES: &'static [usize] = &[40, std::mem::size_of::<dpir_load_options>()];

    fn defaults() -> dpir_load_options {
        dpir_load_options {
            size: std::mem::size_of::<dpir_load_options>(),
            onnxruntime_library: std::ptr::null(),
            execution_provider: dpir_execution_provider::Cpu as u32,
            device: 0,
            threads: 0,
            tensorrt_fp16: 1,
            tensorrt_engine_cache: std::ptr::null(),
            memory_budget: 0,
        }
    }
}

/// One progress report, passed to a `dpir_progress_fn`. Owned by dpir, valid during the callback only.
/// Fields are only ever appended: `size` is the library's `sizeof(dpir_progress)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_progress {
    /// The library's `sizeof(dpir_progress)`.
    pub size: usize,
    /// What is running.
    pub stage: dpir_stage,
    /// Denoising steps done so far (during `DPIR_STAGE_SAMPLE`; `steps` at `DPIR_STAGE_DECODE`, 0 before).
    pub step: u32,
    /// Denoising steps of this restore.
    pub steps: u32,
    /// Tile being processed, from 1.
    pub tile: u32,
    /// Tiles of this restore (1 when the image fits one pass).
    pub tiles: u32,
    /// How much of the whole call is done, 0 to 1, never decreasing within a call: what a progress bar shows.
    /// Libraries before 0.2 leave it unset (check `dpir_version()`).
    pub fraction: f32,
}

/// A progress callback: called before each model call with `user_data` from the options. Return 0 to go on,
/// nonzero to cancel (the restore then returns `DPIR_STATUS_CANCELLED` and writes nothing).
///
/// It is called on the thread that called the restore or on a dpir worker thread, never concurrently with
/// itself for one restore. It must not call `dpir_restorer_free()` on the running restorer, and must return
/// normally (no C++ exception or longjmp may cross it).
pub type dpir_progress_fn = unsafe extern "C" fn(progress: *const dpir_progress, user_data: *mut c_void) -> c_int;

/// How one restore runs. Fill with `dpir_restore_options_init(&options, sizeof options)`, then change what you
/// need; fields are only ever appended. Unset values take the bundle's defaults. Passing NULL options means all
/// defaults. Nothing in it is kept after the call returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_restore_options {
    /// `sizeof(dpir_restore_options)`, set by `dpir_restore_options_init()`.
    pub size: usize,
    /// Output size / input size, > 0 and finite. Default 1. The input is upsampled with Lanczos-3 first.
    pub scale: f32,
    /// Denoising steps, 1..1000, or 0 (default) for the bundle's (28 for the real model).
    pub steps: u32,
    /// Seed of the starting noise (and of the posterior draw), or `DPIR_SEED_DEFAULT` (default) for the bundle's.
    pub seed: u64,
    /// Classifier-free guidance scale in 1..100 (1 turns it off; above 1 doubles the transformer calls), or 0
    /// (default) for the bundle's.
    pub guidance: f32,
    /// A `dpir_clip_input`. Default `DPIR_CLIP_INPUT_DEFAULT`.
    pub clip_input: u32,
    /// A `dpir_color_fix`. Default `DPIR_COLOR_FIX_DEFAULT`.
    pub color_fix: u32,
    /// Nonzero draws the input latent from the encoder's posterior (seeded) instead of taking its mean.
    /// Default 0.
    pub sample_posterior: u32,
    /// Name of a precomputed text prompt of the bundle, or "zeros" for none, or NULL (default) for the bundle's
    /// default prompt. UTF-8. A name the bundle lacks fails the restore with `DPIR_STATUS_INVALID_OPTIONS`.
    pub prompt: *const c_char,
    /// A caption (UTF-8) encoded with the bundle's text encoder, replacing `prompt`, or NULL (default). Bundles
    /// without a text encoder (see `dpir_restorer_info.has_text_encoder`) fail the restore with
    /// `DPIR_STATUS_INVALID_OPTIONS`.
    pub prompt_text: *const c_char,
    /// Progress callback, or NULL (default).
    pub progress: Option<unsafe extern "C" fn(progress: *const dpir_progress, user_data: *mut c_void) -> c_int>,
    /// Passed to `progress` as it is. Default NULL.
    pub progress_user_data: *mut c_void,
    /// A cancel handle another thread may trigger with `dpir_cancel_request()`, or NULL (default). The restore
    /// holds its own reference: the handle may be freed while the restore runs.
    pub cancel: *const dpir_cancel,
    /// A `dpir_tile_mode`: how images larger than one tile are sampled. Default `DPIR_TILE_MODE_DEFAULT`
    /// (independent).
    pub tile_mode: u32,
    /// Tile side in latent samples (a multiple of the model's patch size, at most one pass), or 0 (default) for
    /// the bundle's (128 latent samples = 1024 pixels for SD3, capped at one pass).
    pub tile_size: u32,
    /// Overlap of neighbouring tiles in latent samples, smaller than the tile, or -1 (default) for the bundle's
    /// (16).
    pub tile_overlap: i32,
    /// Tiles per transformer call in joint mode, 1..64, or 0 (default) for 1. No effect in independent mode.
    pub tile_batch: u32,
    /// Joint-mode region restores: pixels of surrounding frame sampled with the region, 0..65536, or -1
    /// (default) for one tile overlap. No effect in independent mode.
    pub context_margin: i32,
    /// Nonzero sizes the output as the paper's test script does ("the paper's setting": the long side 1024
    /// pixels, each side a multiple of 8), overriding `scale`. Default 0. Since 0.3; it sits in what was the
    /// struct's tail padding, so the struct's size is unchanged: check `dpir_version()` before relying on it.
    pub paper_size: u32,
}

impl Versioned for dpir_restore_options {
    const NAME: &'static str = "dpir_restore_options";
    const SIZES: &'static [usize] = &[std::mem::size_of::<dpir_restore_options>()];

    fn defaults() -> dpir_restore_options {
        dpir_restore_options {
            size: std::mem::size_of::<dpir_restore_options>(),
            scale: 1.0,
            steps: 0,
            seed: DPIR_SEED_DEFAULT,
            guidance: 0.0,
            clip_input: dpir_clip_input::Default as u32,
            color_fix: dpir_color_fix::Default as u32,
            sample_posterior: 0,
            prompt: std::ptr::null(),
            prompt_text: std::ptr::null(),
            progress: None,
            progress_user_data: std::ptr::null_mut(),
            cancel: std::ptr::null(),
            tile_mode: dpir_tile_mode::Default as u32,
            tile_size: 0,
            tile_overlap: -1,
            tile_batch: 0,
            context_margin: -1,
            paper_size: 0,
        }
    }
}

/// Fills `options` with the defaults and sets its `size` field; pass `sizeof *options` as `size`.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` when `options` is NULL or `size` is not a size of
/// `dpir_load_options` this library knows. Thread-safe.
///
/// # Safety
/// `options` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_load_options_init(options: *mut dpir_load_options, size: usize) -> dpir_status {
    // SAFETY: forwarded from the caller.
    call(|| unsafe { init_struct(options, size) })
}

/// Fills `options` with the defaults and sets its `size` field; pass `sizeof *options` as `size`.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` when `options` is NULL or `size` is not a size of
/// `dpir_restore_options` this library knows. Thread-safe.
///
/// # Safety
/// `options` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_restore_options_init(options: *mut dpir_restore_options, size: usize) -> dpir_status {
    // SAFETY: forwarded from the caller.
    call(|| unsafe { init_struct(options, size) })
}

/// The runtime options a C caller asked for (NULL: the defaults).
///
/// # Safety
/// A non-NULL `ptr` must point to a `dpir_load_options` whose strings are NUL-terminated.
pub(crate) unsafe fn runtime_options(ptr: *const dpir_load_options) -> Outcome<RuntimeOptions> {
    // SAFETY: NULL or a `dpir_load_options`, by the caller's contract.
    let options =
        if ptr.is_null() { dpir_load_options::defaults() } else { unsafe { read_struct(ptr, "load options")? } };
    let bad = |message: String| Failure::options(format!("load options: {message}"));
    let kind = dpir_execution_provider::try_from(options.execution_provider)
        .map_err(|v| bad(format!("execution_provider {v} is not a dpir_execution_provider (0 to 3)")))?;
    let device = options.device;
    if device < 0 {
        return Err(bad(format!("device {device} is negative")));
    }
    let optional_path = |ptr: *const c_char, what: &str| -> Outcome<_> {
        if ptr.is_null() {
            return Ok(None);
        }
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        Ok(Some(unsafe { super::path(ptr, what)? }.to_path_buf()))
    };
    let engine_cache = optional_path(options.tensorrt_engine_cache, "tensorrt_engine_cache")?;
    let execution_provider = match kind {
        dpir_execution_provider::Cpu => ExecutionProvider::Cpu,
        dpir_execution_provider::Cuda => ExecutionProvider::Cuda { device },
        dpir_execution_provider::Tensorrt => {
            ExecutionProvider::TensorRt { device, fp16: options.tensorrt_fp16 != 0, engine_cache }
        }
        dpir_execution_provider::Auto => ExecutionProvider::Auto,
    };
    Ok(RuntimeOptions {
        onnxruntime_library: optional_path(options.onnxruntime_library, "onnxruntime_library")?,
        execution_provider,
        threads: options.threads as usize,
        // Not among the C options: the memory budget caps the GPU's arenas.
        gpu_memory_limit: None,
        memory_budget: (options.memory_budget > 0).then_some(options.memory_budget),
    })
}

/// The restore options a C caller asked for (NULL: the defaults).
///
/// # Safety
/// A non-NULL `ptr` must point to a `dpir_restore_options` whose strings are NUL-terminated and whose cancel
/// handle is live.
pub(crate) unsafe fn restore_options(ptr: *const dpir_restore_options) -> Outcome<RestoreOptions> {
    // SAFETY: NULL or a `dpir_restore_options`, by the caller's contract.
    let options =
        if ptr.is_null() { dpir_restore_options::defaults() } else { unsafe { read_struct(ptr, "restore options")? } };
    let bad = |message: String| Failure::options(format!("restore options: {message}"));
    let clip_input = match dpir_clip_input::try_from(options.clip_input) {
        Ok(dpir_clip_input::Default) => None,
        Ok(dpir_clip_input::Lq) => Some(ClipInput::Lq),
        Ok(dpir_clip_input::InitialRestoration) => Some(ClipInput::InitialRestoration),
        Err(v) => return Err(bad(format!("clip_input {v} is not a dpir_clip_input (0 to 2)"))),
    };
    let color_fix = match dpir_color_fix::try_from(options.color_fix) {
        Ok(dpir_color_fix::Default) => None,
        Ok(dpir_color_fix::Wavelet) => Some(ColorFix::Wavelet),
        Ok(dpir_color_fix::None) => Some(ColorFix::None),
        Err(v) => return Err(bad(format!("color_fix {v} is not a dpir_color_fix (0 to 2)"))),
    };
    let tile_mode = match dpir_tile_mode::try_from(options.tile_mode) {
        Ok(dpir_tile_mode::Default) => TileMode::default(),
        Ok(dpir_tile_mode::Independent) => TileMode::Independent,
        Ok(dpir_tile_mode::Joint) => TileMode::Joint,
        Err(v) => return Err(bad(format!("tile_mode {v} is not a dpir_tile_mode (0 to 2)"))),
    };
    let automatic = |name: &str, value: i32| -> Outcome<Option<usize>> {
        match value {
            -1 => Ok(None),
            0.. => Ok(Some(value as usize)),
            _ => Err(bad(format!("{name} {value} is negative (-1 means the library's choice)"))),
        }
    };
    let text = |ptr: *const c_char, name: &str| -> Outcome<Option<String>> {
        if ptr.is_null() {
            return Ok(None);
        }
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        let text = unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| bad(format!("{name} is not UTF-8")))?;
        Ok(Some(text.to_owned()))
    };
    // SAFETY: forwarded from the caller.
    let control = unsafe { control(options.progress, options.progress_user_data, options.cancel) };
    let rust = RestoreOptions {
        scale: Some(options.scale),
        paper_size: options.paper_size != 0,
        steps: (options.steps != 0).then_some(options.steps as usize),
        seed: (options.seed != DPIR_SEED_DEFAULT).then_some(options.seed),
        guidance: (options.guidance != 0.0).then_some(options.guidance),
        prompt: text(options.prompt, "prompt")?,
        prompt_text: text(options.prompt_text, "prompt_text")?,
        clip_input,
        color_fix,
        sample_posterior: options.sample_posterior != 0,
        progress: control.progress,
        tile_mode,
        tile_size: (options.tile_size != 0).then_some(options.tile_size as usize),
        tile_overlap: automatic("tile_overlap", options.tile_overlap)?,
        tile_batch: (options.tile_batch != 0).then_some(options.tile_batch as usize),
        context_margin: automatic("context_margin", options.context_margin)?,
        cancel: control.cancel,
        ..RestoreOptions::default()
    };
    Ok(rust)
}

/// A C caller's progress callback with its user data, and cancel handle, as a [`Control`].
///
/// # Safety
/// `cancel` must be NULL or live.
pub(crate) unsafe fn control(
    progress: Option<dpir_progress_fn>,
    user_data: *mut c_void,
    cancel: *const dpir_cancel,
) -> Control {
    // SAFETY: NULL or live, by the caller's contract.
    let cancel = unsafe { cancel.as_ref() }.map(|cancel| cancel.token.clone());
    let progress = progress.map(|function| {
        let callback = Callback { function, user_data, serial: Mutex::new(()) };
        Arc::new(move |progress: &Progress| callback.report(progress)) as Arc<crate::ProgressFn>
    });
    Control { progress, cancel }
}

/// A C progress callback with its user data.
struct Callback {
    function: dpir_progress_fn,
    user_data: *mut c_void,
    /// Calls never overlap, whatever thread the pipeline reports from.
    serial: Mutex<()>,
}

// SAFETY: the header tells callers their callback and user data are used from dpir's threads, one call at a time
// (the mutex makes sure of the latter).
unsafe impl Send for Callback {}
// SAFETY: as above.
unsafe impl Sync for Callback {}

impl Callback {
    /// Calls the C function; true to go on.
    fn report(&self, progress: &Progress) -> bool {
        let _serial = self.serial.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let report = dpir_progress {
            size: std::mem::size_of::<dpir_progress>(),
            stage: progress.stage.into(),
            step: count(progress.step),
            steps: count(progress.steps),
            tile: count(progress.tile),
            tiles: count(progress.tiles),
            fraction: progress.fraction,
        };
        // SAFETY: the caller gave this function for these arguments; the report lives during the call.
        unsafe { (self.function)(&report, self.user_data) == 0 }
    }
}

/// A cancel handle: one thread triggers it, the restores that were given it stop before their next model call
/// and return `DPIR_STATUS_CANCELLED`. A triggered handle stays triggered: use a new one for the next restore.
pub struct dpir_cancel {
    token: CancelToken,
}

/// Creates a cancel handle in `*cancel` (NULL on failure). Free it with `dpir_cancel_free()`. Thread-safe.
///
/// # Safety
/// `cancel` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_cancel_new(cancel: *mut *mut dpir_cancel) -> dpir_status {
    call(|| {
        let handle = Box::into_raw(Box::new(dpir_cancel { token: CancelToken::new() }));
        // SAFETY: forwarded from the caller.
        unsafe { put(cancel, handle, "cancel") }.inspect_err(|_| {
            // SAFETY: just made and not handed out.
            drop(unsafe { Box::from_raw(handle) });
        })
    })
}

/// Requests cancellation of every restore using `cancel`. Safe from any thread (a signal handler excepted), any
/// number of times, while restores run. NULL does nothing.
///
/// # Safety
/// `cancel` must be NULL or a live handle from `dpir_cancel_new()`.
#[no_mangle]
pub unsafe extern "C" fn dpir_cancel_request(cancel: *const dpir_cancel) {
    call_quietly((), || {
        // SAFETY: the caller's contract.
        if let Some(cancel) = unsafe { cancel.as_ref() } {
            cancel.token.cancel();
        }
    })
}

/// 1 when `dpir_cancel_request()` was called on `cancel`, else 0 (also for NULL). Thread-safe.
///
/// # Safety
/// `cancel` must be NULL or a live handle from `dpir_cancel_new()`.
#[no_mangle]
pub unsafe extern "C" fn dpir_cancel_is_requested(cancel: *const dpir_cancel) -> c_int {
    call_quietly(0, || {
        // SAFETY: the caller's contract.
        unsafe { cancel.as_ref() }.is_some_and(|cancel| cancel.token.is_cancelled()) as c_int
    })
}

/// Frees a cancel handle. NULL does nothing. Restores already given the handle keep working (and can still be
/// cancelled by no one); do not free it while another thread may call `dpir_cancel_request()` on it.
///
/// # Safety
/// `cancel` must be NULL or a handle from `dpir_cancel_new()` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn dpir_cancel_free(cancel: *mut dpir_cancel) {
    call_quietly((), || {
        if !cancel.is_null() {
            // SAFETY: made by Box::into_raw in dpir_cancel_new, freed once by the caller's contract.
            drop(unsafe { Box::from_raw(cancel) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_options_are_the_defaults() {
        // SAFETY: NULL is allowed.
        let options = unsafe { restore_options(std::ptr::null()) }.unwrap();
        assert_eq!(options.scale, Some(1.0));
        assert_eq!((options.steps, options.seed, options.guidance), (None, None, None));
        assert_eq!(options.tile_mode, TileMode::Independent);
        assert_eq!((options.tile_size, options.tile_overlap, options.context_margin), (None, None, None));
        // SAFETY: NULL is allowed.
        let runtime = unsafe { runtime_options(std::ptr::null()) }.unwrap();
        assert_eq!(runtime.execution_provider, ExecutionProvider::Cpu);
    }

    #[test]
    fn sizes_other_than_known_ones_are_refused() {
        let mut options = dpir_restore_options::defaults();
        for size in [0, 8, std::mem::size_of::<dpir_restore_options>() + 8] {
            options.size = size;
            // SAFETY: a live struct; the size is checked before anything past it is read.
            let failure = unsafe { restore_options(&options) }.unwrap_err();
            assert_eq!(failure.status, dpir_status::InvalidArgument, "{size}");
        }
    }

    #[test]
    fn the_callback_sees_each_report_and_can_cancel() {
        unsafe extern "C" fn stop_at_sample(progress: *const dpir_progress, user_data: *mut c_void) -> c_int {
            // SAFETY: dpir passes a live report and our counter.
            let (progress, seen) = unsafe { (&*progress, &mut *user_data.cast::<u32>()) };
            *seen += 1;
            (progress.stage == dpir_stage::Sample) as c_int
        }
        let mut seen = 0u32;
        let options = dpir_restore_options {
            progress: Some(stop_at_sample),
            progress_user_data: (&mut seen as *mut u32).cast(),
            ..dpir_restore_options::defaults()
        };
        // SAFETY: a live struct.
        let rust = unsafe { restore_options(&options) }.unwrap();
        let callback = rust.progress.unwrap();
        let report = |stage| Progress::per_tile(stage, 0, 4, 1, 1);
        assert!(callback(&report(Stage::Encode)));
        assert!(!callback(&report(Stage::Sample)));
        assert_eq!(seen, 2);
    }
}
