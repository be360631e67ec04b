//! `dpir._dpir`: the native half of the `dpir` Python package, a thin layer over the Rust API. NumPy arrays of
//! (H, W) or (H, W, C) pixels come in without a copy where their layout allows and go out as new arrays; restores
//! run with the GIL released, report progress to a Python callable, and stop on Ctrl-C.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::{dtype, PyArray2, PyArray3, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use dpir::imagefile;
use dpir::{
    CancelToken, ClipInput, ColorFix, ErrorKind, ExecutionProvider, PixelLayout, Pixels, PixelsMut, Progress, Rect,
    Region, RestoreOptions, RuntimeOptions, SampleType, Stage, TileMode,
};

create_exception!(_dpir, Error, PyException, "A failed restore or load; `kind` names the class of failure.");

/// The Python exception of a dpir error: `dpir.Error` with `kind` ("bundle", "invalid_options", ...).
fn error(py: Python<'_>, e: dpir::Error) -> PyErr {
    let kind = match e.kind() {
        ErrorKind::OnnxRuntime => "onnxruntime",
        ErrorKind::ExecutionProvider => "execution_provider",
        ErrorKind::Bundle => "bundle",
        ErrorKind::Inference => "inference",
        ErrorKind::InvalidImage => "invalid_image",
        ErrorKind::InvalidOptions => "invalid_options",
        ErrorKind::TooLarge => "too_large",
        ErrorKind::OutOfMemory => "out_of_memory",
        ErrorKind::Io => "io",
        ErrorKind::BadOutput => "bad_output",
        ErrorKind::Cancelled => "cancelled",
        _ => "other",
    };
    let err = Error::new_err(e.to_string());
    if let Err(failed) = err.value(py).setattr("kind", kind) {
        return failed;
    }
    err
}

/// A loaded model bundle. Shareable between threads: restores release the GIL and may run at once.
#[pyclass(frozen, module = "dpir._dpir")]
struct Restorer {
    inner: Arc<dpir::Restorer>,
}

#[pymethods]
impl Restorer {
    #[new]
    #[pyo3(signature = (model, provider, threads, onnxruntime, gpu_memory_limit, max_memory))]
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        provider: &str,
        threads: usize,
        onnxruntime: Option<PathBuf>,
        gpu_memory_limit: Option<usize>,
        max_memory: Option<u64>,
    ) -> PyResult<Restorer> {
        let provider = ExecutionProvider::parse(provider).ok_or_else(|| {
            PyValueError::new_err(format!("unknown provider {provider:?}; use cpu, cuda[:N], tensorrt[:N] or auto"))
        })?;
        let mut options = RuntimeOptions::new().execution_provider(provider).threads(threads);
        options.onnxruntime_library = onnxruntime;
        options.gpu_memory_limit = gpu_memory_limit;
        options.memory_budget = max_memory;
        let load = || {
            // No model named: dpir's default, or the crate's error naming where it looked.
            let model = match model {
                Some(model) => model,
                None => dpir::BundleInfo::find(None)?.dir,
            };
            dpir::Restorer::load(&model, &options)
        };
        let loaded = py.detach(load).map_err(|e| error(py, e))?;
        Ok(Restorer { inner: Arc::new(loaded) })
    }

    /// The bundle's manifest as JSON text.
    fn manifest_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.manifest()).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// What a restore uses when an option is not given.
    fn defaults<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.manifest();
        let dict = PyDict::new(py);
        dict.set_item("steps", m.scheduler.steps)?;
        dict.set_item("seed", m.defaults.seed)?;
        dict.set_item("guidance", m.defaults.guidance)?;
        dict.set_item("tile_size", m.default_tile())?;
        dict.set_item("tile_overlap", m.defaults.latent_overlap)?;
        dict.set_item("pixels_per_latent", m.latent.downscale)?;
        dict.set_item("prompt", &m.text.default)?;
        let clip_input = if m.clip.input == ClipInput::Lq { "lq" } else { "initial-restoration" };
        dict.set_item("clip_input", clip_input)?;
        dict.set_item("color_fix", if m.defaults.color_fix == ColorFix::None { "none" } else { "wavelet" })?;
        Ok(dict)
    }

    fn bundle(&self) -> PathBuf {
        self.inner.bundle_dir().to_path_buf()
    }

    fn execution_provider(&self) -> String {
        self.inner.execution_provider().to_string()
    }

    fn onnxruntime_library(&self) -> PathBuf {
        self.inner.onnxruntime_library().to_path_buf()
    }

    fn has_text_encoder(&self) -> bool {
        self.inner.has_text_encoder()
    }

    fn output_size(&self, py: Python<'_>, width: usize, height: usize, scale: f32) -> PyResult<(usize, usize)> {
        self.inner.output_size(width, height, scale).map_err(|e| error(py, e))
    }

    /// What a restore of `width x height` needs: a dict of the pixel multiple, the largest pass, the output size,
    /// the tiles and their size, the estimated peak memory and its weights, and whether the stages take turns.
    fn requirements<'py>(
        &self,
        py: Python<'py>,
        width: usize,
        height: usize,
        options: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let options = restore_options(options)?;
        let r = self.inner.requirements(width, height, &options).map_err(|e| error(py, e))?;
        let dict = PyDict::new(py);
        dict.set_item("pixel_multiple", r.pixel_multiple)?;
        dict.set_item("max_pass_size", r.max_pass_size)?;
        dict.set_item("output_size", r.output_size)?;
        dict.set_item("tiles", r.tiles)?;
        dict.set_item("tile_size", r.tile_size)?;
        dict.set_item("estimated_bytes", r.estimated_bytes)?;
        dict.set_item("weights_bytes", r.weights_bytes)?;
        dict.set_item("releases_graphs", r.releases_graphs)?;
        Ok(dict)
    }

    /// Restores a whole image into a new array of the same dtype and channels, sized by the scale.
    fn restore<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyUntypedArray>,
        options: &Bound<'py, PyDict>,
        progress: Option<Py<PyAny>>,
        cancel: Option<&Bound<'py, CancelFlag>>,
    ) -> PyResult<Bound<'py, PyUntypedArray>> {
        let source = source_layout(image)?;
        let mut options = restore_options(options)?;
        let (width, height) =
            self.inner.output_size_for(source.width, source.height, &options).map_err(|e| error(py, e))?;
        let failure = watch(&mut options, progress, cancel);
        let (out, mut dest) = new_array(py, &source, width, height)?;
        // SAFETY: the caller holds the array for the whole call, and the layout spans its memory.
        let bytes = unsafe { source_bytes(image, &source) };
        let restorer = self.inner.clone();
        let result = py.detach(|| {
            let source = Pixels::new(source, bytes)?;
            restorer.restore_pixels(&source, &mut PixelsMut::new(dest.layout, dest.bytes())?, &options)
        });
        finish(py, result, &failure)?;
        Ok(out)
    }

    /// Restores the image file `input` into `output` as `dpir restore` does (the same formats and bytes, the file
    /// written whole or not at all); returns the output's (width, height).
    fn restore_file<'py>(
        &self,
        py: Python<'py>,
        input: PathBuf,
        output: PathBuf,
        options: &Bound<'py, PyDict>,
        progress: Option<Py<PyAny>>,
        cancel: Option<&Bound<'py, CancelFlag>>,
    ) -> PyResult<(usize, usize)> {
        let mut options = restore_options(options)?;
        let failure = watch(&mut options, progress, cancel);
        let restorer = self.inner.clone();
        let result = py.detach(|| {
            let restored = imagefile::restore(&restorer, &input, &output, &options)?;
            restored.write(&output)?;
            Ok((restored.layout.width, restored.layout.height))
        });
        finish(py, result, &failure)
    }

    /// Restores `rect` (x, y, width, height in output pixels) of a frame of `frame` (width, height) input
    /// pixels, from `image`, a crop of the frame whose top-left pixel sits at `origin`, with `context` (the whole
    /// frame at any resolution) for the global prompt.
    #[allow(clippy::too_many_arguments)]
    fn restore_region<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyUntypedArray>,
        rect: (usize, usize, usize, usize),
        origin: (usize, usize),
        frame: (usize, usize),
        context: Option<&Bound<'py, PyUntypedArray>>,
        options: &Bound<'py, PyDict>,
        progress: Option<Py<PyAny>>,
        cancel: Option<&Bound<'py, CancelFlag>>,
    ) -> PyResult<Bound<'py, PyUntypedArray>> {
        let source = source_layout(image)?;
        let context_layout = context.map(source_layout).transpose()?;
        let mut options = restore_options(options)?;
        let failure = watch(&mut options, progress, cancel);
        let (out, mut dest) = new_array(py, &source, rect.2, rect.3)?;
        // SAFETY: the caller holds the arrays for the whole call, and each layout spans its array's memory.
        let bytes = unsafe { source_bytes(image, &source) };
        let context_bytes = match (context, &context_layout) {
            // SAFETY: as above.
            (Some(array), Some(layout)) => Some((*layout, unsafe { source_bytes(array, layout) })),
            _ => None,
        };
        let restorer = self.inner.clone();
        let result = py.detach(|| {
            let rect = Rect::new(rect.0, rect.1, rect.2, rect.3);
            let mut region = Region::new(Pixels::new(source, bytes)?, origin, frame, rect);
            if let Some((layout, bytes)) = context_bytes {
                region = region.with_context(Pixels::new(layout, bytes)?);
            }
            restorer.restore_region(&region, &mut PixelsMut::new(dest.layout, dest.bytes())?, &options)
        });
        finish(py, result, &failure)?;
        Ok(out)
    }
}

/// Cancels the restores it is given to, from any thread, before their next model call.
#[pyclass(frozen, module = "dpir._dpir")]
struct CancelFlag {
    token: CancelToken,
}

#[pymethods]
impl CancelFlag {
    #[new]
    fn new() -> CancelFlag {
        CancelFlag { token: CancelToken::new() }
    }

    fn cancel(&self) {
        self.token.cancel();
    }

    fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// The description of an array's pixels, when dpir can read them where they are: (H, W) or (H, W, C) of
/// uint8, uint16, float16 or float32, with 1, 3 or 4 channels, pixels packed within a row, rows at a positive
/// stride (a crop of a larger array qualifies). Anything else is a TypeError (the Python layer copies first).
fn source_layout(array: &Bound<'_, PyUntypedArray>) -> PyResult<PixelLayout> {
    let py = array.py();
    let element = array.dtype();
    let sample = if element.is_equiv_to(&dtype::<u8>(py)) {
        SampleType::U8
    } else if element.is_equiv_to(&dtype::<u16>(py)) {
        SampleType::U16
    } else if element.is_equiv_to(&dtype::<half::f16>(py)) {
        SampleType::F16
    } else if element.is_equiv_to(&dtype::<f32>(py)) {
        SampleType::F32
    } else {
        return Err(PyTypeError::new_err(format!("pixels of {element}; use uint8, uint16, float16 or float32")));
    };
    let (shape, strides) = (array.shape(), array.strides());
    let channels = match shape.len() {
        2 => 1,
        3 => shape[2],
        n => return Err(PyTypeError::new_err(format!("an array of {n} dimensions; use (H, W) or (H, W, C)"))),
    };
    let size = sample.size() as isize;
    let packed = strides.get(2).is_none_or(|&s| s == size) && strides[1] == channels as isize * size;
    if !packed || strides[0] <= 0 {
        return Err(PyTypeError::new_err("pixels must be packed within rows, rows at a positive stride"));
    }
    let layout = PixelLayout::packed(shape[1], shape[0], channels, sample).with_stride(strides[0]);
    layout.validate().map_err(|e| error(py, e))?;
    Ok(layout)
}

/// The memory `layout` spans from the array's first pixel.
///
/// # Safety
/// `layout` must come from [`source_layout`] of `array`, which must outlive the returned slice unchanged.
unsafe fn source_bytes<'a>(array: &Bound<'_, PyUntypedArray>, layout: &PixelLayout) -> &'a [u8] {
    let span = layout.validate().expect("validated");
    // SAFETY: the caller's contract; numpy's data pointer is the first pixel, and the rows follow at the stride.
    unsafe { std::slice::from_raw_parts((*array.as_array_ptr()).fields.data.cast::<u8>(), span) }
}

/// A fresh output array and where dpir writes into it.
struct Destination {
    layout: PixelLayout,
    data: *mut u8,
    len: usize,
}

// SAFETY: the array is new and referenced only by the caller, who keeps it alive for the call.
unsafe impl Send for Destination {}

impl Destination {
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `data` points to `len` bytes of a new array nobody else holds yet.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }
}

/// A new (H, W) or (H, W, C) array of the source's dtype and channels, zero-filled.
fn new_array<'py>(
    py: Python<'py>,
    source: &PixelLayout,
    width: usize,
    height: usize,
) -> PyResult<(Bound<'py, PyUntypedArray>, Destination)> {
    let c = source.channels;
    let array: Bound<'py, PyUntypedArray> = match (source.sample, c) {
        (SampleType::U8, 1) => PyArray2::<u8>::zeros(py, [height, width], false).into_any().cast_into()?,
        (SampleType::U8, _) => PyArray3::<u8>::zeros(py, [height, width, c], false).into_any().cast_into()?,
        (SampleType::U16, 1) => PyArray2::<u16>::zeros(py, [height, width], false).into_any().cast_into()?,
        (SampleType::U16, _) => PyArray3::<u16>::zeros(py, [height, width, c], false).into_any().cast_into()?,
        (SampleType::F16, 1) => PyArray2::<half::f16>::zeros(py, [height, width], false).into_any().cast_into()?,
        (SampleType::F16, _) => PyArray3::<half::f16>::zeros(py, [height, width, c], false).into_any().cast_into()?,
        (_, 1) => PyArray2::<f32>::zeros(py, [height, width], false).into_any().cast_into()?,
        _ => PyArray3::<f32>::zeros(py, [height, width, c], false).into_any().cast_into()?,
    };
    let layout = PixelLayout::packed(width, height, c, source.sample);
    let len = layout.validate().map_err(|e| error(py, e))?;
    // SAFETY: a new C-contiguous array of exactly `len` bytes.
    let data = unsafe { (*array.as_array_ptr()).fields.data.cast::<u8>() };
    Ok((array, Destination { layout, data, len }))
}

/// Connects a restore's progress reports to Python: Ctrl-C (a pending signal) and a callback that raises or
/// returns False cancel it, and the exception that did is kept to be raised when the restore returns.
fn watch(options: &mut RestoreOptions, progress: Option<Py<PyAny>>, cancel: Option<&Bound<'_, CancelFlag>>) -> Failure {
    let failure: Failure = Arc::new(Mutex::new(None));
    let kept = failure.clone();
    options.cancel = cancel.map(|flag| flag.get().token.clone());
    *options = options.clone().progress(move |report: &Progress| {
        Python::attach(|py| {
            let stop = |e: PyErr| {
                *kept.lock().expect("not poisoned") = Some(e);
                false
            };
            if let Err(interrupt) = py.check_signals() {
                return stop(interrupt);
            }
            let Some(callback) = &progress else { return true };
            let report = ProgressReport::from(report);
            match callback.call1(py, (report,)) {
                Ok(answer) => !answer.bind(py).is(&*pyo3::types::PyBool::new(py, false)),
                Err(e) => stop(e),
            }
        })
    });
    failure
}

/// The exception that stopped a restore from its progress reports, if any.
type Failure = Arc<Mutex<Option<PyErr>>>;

/// The restore's result as Python sees it: the exception a report raised (Ctrl-C's KeyboardInterrupt, the
/// callback's own), else dpir's error.
fn finish<T>(py: Python<'_>, result: dpir::Result<T>, failure: &Failure) -> PyResult<T> {
    if let Some(raised) = failure.lock().expect("not poisoned").take() {
        return Err(raised);
    }
    result.map_err(|e| error(py, e))
}

/// One progress report, as the callback receives it.
#[pyclass(frozen, get_all, module = "dpir._dpir", name = "Progress")]
struct ProgressReport {
    /// "encode", "prompt", "sample" or "decode".
    stage: &'static str,
    step: usize,
    steps: usize,
    tile: usize,
    tiles: usize,
    /// How much of the call is done, 0 to 1, never decreasing.
    fraction: f32,
}

impl From<&Progress> for ProgressReport {
    fn from(p: &Progress) -> ProgressReport {
        let stage = match p.stage {
            Stage::Encode => "encode",
            Stage::Prompt => "prompt",
            Stage::Sample => "sample",
            Stage::Decode => "decode",
            _ => "other",
        };
        ProgressReport { stage, step: p.step, steps: p.steps, tile: p.tile, tiles: p.tiles, fraction: p.fraction }
    }
}

#[pymethods]
impl ProgressReport {
    fn __repr__(&self) -> String {
        format!(
            "Progress(stage={:?}, step={}/{}, tile={}/{}, fraction={:.3})",
            self.stage, self.step, self.steps, self.tile, self.tiles, self.fraction
        )
    }
}

/// Restore options from keyword arguments; an unknown name or a value of the wrong type is a TypeError, a
/// value out of range dpir's own error when the restore checks it.
fn restore_options(given: &Bound<'_, PyDict>) -> PyResult<RestoreOptions> {
    let mut options = RestoreOptions::new();
    for (key, value) in given.iter() {
        let key = key.cast_into::<PyString>()?.to_string();
        if value.is_none() {
            continue;
        }
        match key.as_str() {
            "scale" => options.scale = Some(value.extract()?),
            "paper_size" => options.paper_size = value.extract()?,
            "steps" => options.steps = Some(value.extract()?),
            "seed" => options.seed = Some(value.extract()?),
            "guidance" => options.guidance = Some(value.extract()?),
            "prompt" => options.prompt = Some(value.extract()?),
            "prompt_text" => options.prompt_text = Some(value.extract()?),
            "sample_posterior" => options.sample_posterior = value.extract()?,
            "tile_size" => options.tile_size = Some(value.extract()?),
            "tile_overlap" => options.tile_overlap = Some(value.extract()?),
            "tile_batch" => options.tile_batch = Some(value.extract()?),
            "context_margin" => options.context_margin = Some(value.extract()?),
            "clip_input" => {
                options.clip_input = Some(match value.extract::<String>()?.as_str() {
                    "lq" => ClipInput::Lq,
                    "initial-restoration" | "initial_restoration" => ClipInput::InitialRestoration,
                    other => return Err(choice("clip_input", other, "'lq' or 'initial-restoration'")),
                })
            }
            "color_fix" => {
                options.color_fix = Some(match value.extract::<String>()?.as_str() {
                    "wavelet" => ColorFix::Wavelet,
                    "none" => ColorFix::None,
                    other => return Err(choice("color_fix", other, "'wavelet' or 'none'")),
                })
            }
            "tile_mode" => {
                options.tile_mode = match value.extract::<String>()?.as_str() {
                    "independent" => TileMode::Independent,
                    "joint" => TileMode::Joint,
                    other => return Err(choice("tile_mode", other, "'independent' or 'joint'")),
                }
            }
            other => return Err(PyTypeError::new_err(format!("unknown restore option {other:?}"))),
        }
    }
    Ok(options)
}

/// The output (width, height) the paper's test script restores a `width x height` input at: the long side 1024
/// pixels, each side a multiple of 8 ("the paper's setting"; the restore option `paper_size=True`).
#[pyfunction]
fn paper_size(width: usize, height: usize) -> (usize, usize) {
    dpir::paper_size(width, height)
}

/// The model bundle dpir uses when none is named (`dpir::default_model_dir`), if any.
#[pyfunction]
fn default_model() -> Option<PathBuf> {
    dpir::default_model_dir()
}

fn choice(name: &str, value: &str, expected: &str) -> PyErr {
    PyValueError::new_err(format!("{name} must be {expected}, got {value:?}"))
}

#[pymodule]
fn _dpir(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Restorer>()?;
    m.add_class::<CancelFlag>()?;
    m.add_class::<ProgressReport>()?;
    m.add_function(wrap_pyfunction!(paper_size, m)?)?;
    m.add_function(wrap_pyfunction!(default_model, m)?)?;
    m.add("ONNXRUNTIME_LIBRARY_NAMES", dpir::ONNXRUNTIME_LIBRARY_NAMES.to_vec())?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
