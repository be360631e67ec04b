//! A frame (`dpir_frame`): what every region of one frame shares, computed once, for hosts that render a frame
//! as many tiles.

use std::ffi::{c_int, c_void};

use super::options::{control, dpir_cancel, dpir_progress, dpir_restore_options, restore_options};
use super::pixels::Described;
use super::restorer::{dpir_rect, dpir_region, dpir_restorer};
use super::{call, call_quietly, dpir_status, non_null, put, read_struct, Failure};
use crate::Frame;

/// One frame being restored: its settings, tile plan and global prompt, made by `dpir_frame_new()`. Thread-safe:
/// several threads may restore regions of one frame at once. It keeps its model loaded while it lives, so it may
/// outlive the restorer it came from. Free it with `dpir_frame_free()`.
pub struct dpir_frame {
    frame: Frame,
}

/// Prepares a frame of `frame_width` x `frame_height` input pixels for `dpir_frame_restore_region()` calls and
/// stores it in `*frame` (NULL on failure). `context` is the whole frame, at any resolution (a proxy will do), for
/// the global prompt; each region then equals, bit for bit, what `dpir_restore_region()` gives with the same
/// context (see `dpir_region` for when that is the whole-frame restore). `options` (NULL: the defaults) are the
/// restore's, for every region of the frame; its progress callback and cancel handle serve this call only.
///
/// This runs the global prompt (CLIP over the context's global tiles: seconds on a GPU, minutes on a CPU for the
/// real model), which `dpir_restore_region()` would otherwise repeat for every region. Thread-safe.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` (NULL argument, unknown `size`), `DPIR_STATUS_INVALID_IMAGE` (bad
/// context descriptor, an empty frame), `DPIR_STATUS_INVALID_OPTIONS`, `DPIR_STATUS_TOO_LARGE`, and the statuses
/// of a model call (`DPIR_STATUS_CANCELLED`, `DPIR_STATUS_INFERENCE`, `DPIR_STATUS_BAD_OUTPUT`).
///
/// # Safety
/// `restorer` must be NULL or live; `context` NULL or describing readable memory; `options` NULL or initialised;
/// `frame` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_frame_new(
    restorer: *const dpir_restorer,
    frame_width: u32,
    frame_height: u32,
    context: *const super::pixels::dpir_pixels,
    options: *const dpir_restore_options,
    frame: *mut *mut dpir_frame,
) -> dpir_status {
    call(|| {
        if frame.is_null() {
            return Err(Failure::argument("frame is NULL"));
        }
        // SAFETY: checked writable above; cleared first so that a failure leaves NULL.
        unsafe { frame.write(std::ptr::null_mut()) };
        // SAFETY: forwarded from the caller.
        let (handle, options) = unsafe { (non_null(restorer, "restorer")?, restore_options(options)?) };
        // SAFETY: forwarded from the caller.
        let context = unsafe { Described::new(context, "context")? };
        // SAFETY: validated and readable by the caller's contract.
        let pixels = unsafe { context.pixels()? };
        let size = (frame_width as usize, frame_height as usize);
        let made = handle.restorer().frame(size, pixels, &options)?;
        let boxed = Box::into_raw(Box::new(dpir_frame { frame: made }));
        // SAFETY: checked writable above.
        unsafe { put(frame, boxed, "frame") }
    })
}

/// Stores in `*roi` the input pixels (frame coordinates) that restoring `rect` (output-frame pixels) of `frame`
/// reads: what a host must hand over as the region's crop. The same as `dpir_region_of_interest()` with the
/// frame's size and options. Thread-safe.
///
/// Returns `DPIR_STATUS_INVALID_ARGUMENT` (NULL argument) or `DPIR_STATUS_INVALID_OPTIONS` (a rectangle outside
/// the output frame).
///
/// # Safety
/// `frame` must be NULL or live; `rect` NULL or readable; `roi` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpir_frame_region_of_interest(
    frame: *const dpir_frame,
    rect: *const dpir_rect,
    roi: *mut dpir_rect,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (handle, rect) = unsafe { (non_null(frame, "frame")?, non_null(rect, "rect")?) };
        if roi.is_null() {
            return Err(Failure::argument("roi is NULL"));
        }
        let area = handle.frame.region_of_interest((*rect).into())?;
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { put(roi, area.into(), "roi") }
    })
}

/// Restores `region->rect` of `frame` from the crop `region->source` into `destination` (measuring `rect.width`
/// x `rect.height`, any format and stride), with the frame's options and global prompt. `region->frame_width`
/// and `frame_height` must be the frame's (or both 0), and `region->context` NULL: the frame has its context.
/// `progress` (with `progress_user_data`) and `cancel` follow and stop this call; either may be NULL. Blocks until
/// done; thread-safe.
///
/// Returns the statuses of `dpir_restore_region()`. The destination is written only when the restore succeeds.
///
/// # Safety
/// As for `dpir_restore_region()`; `frame` must be NULL or live, `cancel` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn dpir_frame_restore_region(
    frame: *const dpir_frame,
    region: *const dpir_region,
    destination: *const super::pixels::dpir_pixels,
    progress: Option<unsafe extern "C" fn(progress: *const dpir_progress, user_data: *mut c_void) -> c_int>,
    progress_user_data: *mut c_void,
    cancel: *const dpir_cancel,
) -> dpir_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (handle, region) = unsafe { (non_null(frame, "frame")?, read_struct(region, "region")?) };
        let size = (region.frame_width as usize, region.frame_height as usize);
        if size != (0, 0) && size != handle.frame.input_size() {
            let (w, h) = handle.frame.input_size();
            return Err(Failure::argument(format!(
                "region frame_width x frame_height is {}x{}, the frame's {w}x{h}",
                size.0, size.1
            )));
        }
        if !region.context.is_null() {
            return Err(Failure::argument("region context must be NULL: the frame has its context"));
        }
        // SAFETY: forwarded from the caller.
        let source = unsafe { Described::new(region.source, "region source")? };
        // SAFETY: forwarded from the caller.
        let destination = unsafe { Described::new(destination, "destination")? };
        source.check_apart(&destination)?;
        // SAFETY: validated; readable, and writable apart from the source, by the caller's contract.
        let (pixels, mut dest) = unsafe { (source.pixels()?, destination.pixels_mut()?) };
        // SAFETY: forwarded from the caller.
        let control = unsafe { control(progress, progress_user_data, cancel) };
        let origin = (region.origin_x as usize, region.origin_y as usize);
        handle.frame.restore_region(&pixels, origin, region.rect.into(), &mut dest, &control)?;
        Ok(())
    })
}

/// Frees a frame. NULL does nothing. Only once no other call (on any thread) uses it.
///
/// # Safety
/// `frame` must be NULL or a frame from `dpir_frame_new()` not yet freed and not in use.
#[no_mangle]
pub unsafe extern "C" fn dpir_frame_free(frame: *mut dpir_frame) {
    call_quietly((), || {
        if !frame.is_null() {
            // SAFETY: made by Box::into_raw in dpir_frame_new, freed once by the caller's contract.
            drop(unsafe { Box::from_raw(frame) });
        }
    })
}
