//! A model bundle read without loading it (`dpir_bundle`): which model a path or dpir's default names, and its
//! defaults in pixels, for the dialogs and parameter pages of hosts, which show them before anything runs.

use std::ffi::{c_char, CString};

use super::{c_string, call, call_quietly, dpir_status, non_null, put, write_struct, Versioned};
use crate::{BundleInfo, ModelSource};

/// How a bundle was found (the `source` field of `dpir_bundle_info`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_model_source {
    /// The path given to `dpir_bundle_open()`.
    Named = 0,
    /// The `DPIR_MODEL` environment variable.
    Environment = 1,
    /// The per-user place, `$XDG_DATA_HOME/dpir/model` (`~/.local/share/dpir/model`; on Windows
    /// `%LOCALAPPDATA%\dpir\model`).
    DefaultPlace = 2,
}

/// A model bundle whose manifest has been read and checked, without ONNX Runtime or any graph: cheap to open
/// whenever a dialog's model changes. Free it with `dpir_bundle_free()`. Since 0.5.
pub struct dpir_bundle {
    info: BundleInfo,
    path: CString,
    model_name: CString,
}

/// What a bundle is, filled by `dpir_bundle_get_info()`: the values `dpir_restore_options` fields left at their
/// defaults take, tile sizes in pixels. Strings belong to the bundle and stay valid until `dpir_bundle_free()`.
/// Fields are only ever appended.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dpir_bundle_info {
    /// `sizeof(dpir_bundle_info)` as passed to `dpir_bundle_get_info()`.
    pub size: usize,
    /// The bundle's folder (a `dpir.json` named in its place is resolved to its folder).
    pub path: *const c_char,
    /// The bundle's model name (its manifest's `name`).
    pub model_name: *const c_char,
    /// A `dpir_model_source`: how the bundle was found.
    pub source: u32,
    /// Denoising steps when the options leave them at 0.
    pub default_steps: u32,
    /// Guidance scale when the options leave it at 0 (1: no guidance).
    pub default_guidance: f32,
    /// Seed when the options leave it at `DPIR_SEED_DEFAULT`.
    pub default_seed: u64,
    /// Pixels per latent sample along each side: `tile_size` and `tile_overlap` of `dpir_restore_options` are
    /// pixels divided by this.
    pub pixels_per_latent: u32,
    /// Tile side in pixels when the options leave it at 0.
    pub default_tile_pixels: u32,
    /// Tile overlap in pixels when the options leave it at -1.
    pub default_overlap_pixels: u32,
    /// Tile sides are multiples of this many pixels.
    pub tile_step_pixels: u32,
    /// The largest tile side, in pixels: one model pass.
    pub max_tile_pixels: u32,
}

impl Versioned for dpir_bundle_info {
    const NAME: &'static str = "dpir_bundle_info";
    const SIZES: &'static [usize] = &[std::mem::size_of::<dpir_bundle_info>()];

    fn defaults() -> dpir_bundle_info {
        dpir_bundle_info {
            size: std::mem::size_of::<dpir_bundle_info>(),
            path: std::ptr::null(),
            model_name: std::ptr::null(),
            source: dpir_model_source::Named as u32,
            default_steps: 0,
            default_guidance: 0.0,
            default_seed: 0,
            pixels_per_latent: 0,
            default_tile_pixels: 0,
            default_overlap_pixels: 0,
            tile_step_pixels: 0,
            max_tile_pixels: 0,
        }
    }
}

fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Finds the model bundle `path` names (its folder or its `dpir.json`) or, when `path` is NULL or "", dpir's
/// default (`DPIR_MODEL`, else the per-user place, as `dpir_default_model_dir()` says), reads and
/// checks its manifest, and stores it in `*bundle`. Loads neither ONNX Runtime nor a graph: graphs are checked
/// by `dpir_restorer_load()`.
///
/// On failure `*bundle` is set to NULL: `DPIR_STATUS_INVALID_ARGUMENT` (NULL `bundle`), `DPIR_STATUS_BUNDLE`
/// (no model found, not a bundle, an invalid manifest; for a folder that holds bundles, the message names
/// them), `DPIR_STATUS_IO`. Thread-safe.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated path; `bundle` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_bundle_open(path: *const c_char, bundle: *mut *mut dpir_bundle) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        unsafe { put(bundle, std::ptr::null_mut(), "bundle")? };
        // SAFETY: forwarded from the caller.
        let named = if path.is_null() { None } else { Some(unsafe { super::path(path, "path")? }) };
        let info = BundleInfo::find(named)?;
        let handle = Box::new(dpir_bundle {
            path: c_string(super::path_bytes(&info.dir)),
            model_name: c_string(info.manifest.name.clone()),
            info,
        });
        // SAFETY: checked writable above.
        unsafe { put(bundle, Box::into_raw(handle), "bundle") }
    })
}

/// Describes a bundle into `*info`, a struct of `size` bytes (pass `sizeof *info`). Thread-safe.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` for a NULL argument or an unknown `size`.
///
/// # Safety
/// `bundle` must be NULL or live; `info` NULL or valid for writing `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_bundle_get_info(
    bundle: *const dpir_bundle,
    info: *mut dpir_bundle_info,
    size: usize,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let handle = unsafe { non_null(bundle, "bundle")? };
        let found = &handle.info;
        let manifest = &found.manifest;
        let value = dpir_bundle_info {
            size,
            path: handle.path.as_ptr(),
            model_name: handle.model_name.as_ptr(),
            source: match found.source {
                ModelSource::Named => dpir_model_source::Named,
                ModelSource::Environment => dpir_model_source::Environment,
                ModelSource::DefaultPlace => dpir_model_source::DefaultPlace,
            } as u32,
            default_steps: to_u32(manifest.scheduler.steps),
            default_guidance: manifest.defaults.guidance,
            default_seed: manifest.defaults.seed,
            pixels_per_latent: to_u32(found.pixels_per_latent()),
            default_tile_pixels: to_u32(found.default_tile_pixels()),
            default_overlap_pixels: to_u32(found.default_overlap_pixels()),
            tile_step_pixels: to_u32(manifest.pixel_multiple()),
            max_tile_pixels: to_u32(manifest.max_pass_size()),
        };
        // SAFETY: forwarded from the caller.
        unsafe { write_struct(info, size, value, "info") }
    })
}

/// Frees a bundle. NULL does nothing.
///
/// # Safety
/// `bundle` must be NULL or a bundle from `dpir_bundle_open()` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn dpir_bundle_free(bundle: *mut dpir_bundle) {
    call_quietly((), || {
        if !bundle.is_null() {
            // SAFETY: made by Box::into_raw in dpir_bundle_open, freed once by the caller's contract.
            drop(unsafe { Box::from_raw(bundle) });
        }
    })
}
