//! dpir: DPIR ("Dual Prompting Image Restoration with Diffusion Transformers") inference on ONNX Runtime.
//!
//! Load a model bundle once with [`Restorer::load`], then restore [`Image`]s from any thread:
//!
//! ```no_run
//! use dpir::{Image, PixelLayout, RestoreOptions, Restorer, RuntimeOptions, SampleType};
//! # fn main() -> dpir::Result<()> {
//! let restorer = Restorer::load("tests/fixtures/bundles/oracle", &RuntimeOptions::default())?;
//! let pixels = vec![128u8; 64 * 48 * 3];
//! let layout = PixelLayout::packed(64, 48, 3, SampleType::U8);
//! let image = Image::from_pixels(&layout, &pixels)?;
//! let restored = restorer.restore(&image, &RestoreOptions::new().steps(4))?;
//! assert_eq!((restored.width(), restored.height()), (64, 48));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod bundle;
mod colour;
mod error;
#[cfg(feature = "capi")]
pub mod ffi;
mod frame;
#[cfg(feature = "image-io")]
pub mod imagefile;
mod memory;
mod model;
mod noise;
mod npy;
mod options;
pub mod pixels;
pub mod plan;
mod progress;
mod prompt;
mod rect;
mod resample;
mod residency;
mod restore;
mod runtime;
mod sample;
mod schedule;
mod source;
mod tiled;

pub use bundle::{default_model_dir, BundleInfo, ClipInput, ColorFix, Manifest, ModelSource};
pub use error::{Error, ErrorKind, Result};
pub use frame::Frame;
pub use options::{paper_size, RestoreOptions, TileMode};
pub use pixels::{AlphaMode, Image, PixelLayout, Pixels, PixelsMut, SampleType, Transfer};
pub use progress::{CancelToken, Control, Progress, ProgressFn, Stage, Stats};
pub use prompt::clip_pixels;
pub use rect::Rect;
pub use restore::{Region, Requirements, Restoration, Restorer};
pub use runtime::{ExecutionProvider, RuntimeOptions, TensorInfo, MAX_THREADS, ONNXRUNTIME_LIBRARY_NAMES};

/// The crate version, as `major.minor.patch`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
