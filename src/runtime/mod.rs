//! ONNX Runtime behind a small, dpir-shaped surface: load the library, build sessions on an execution
//! provider, run a graph on f32 arrays. `ort` types stay inside this module.

mod cuda;
mod ep;
mod library;
mod tensorrt;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use half::{bf16, f16, slice::HalfFloatSliceExt};
use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};
use ort::memory::AllocationDevice;
use ort::session::SessionInputValue;
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType, TensorRef, ValueType};
use parking_lot::Mutex;

pub use ep::ExecutionProvider;
pub use library::LIBRARY_NAMES as ONNXRUNTIME_LIBRARY_NAMES;
pub(crate) use tensorrt::{bundle_key, GraphHints, Profile, ProfileInput};

use crate::error::{Error, Result};

/// The most intra-op threads a session may be given, checked before ONNX Runtime sees the count: a huge one ends
/// the process inside its thread pool instead of returning an error.
pub const MAX_THREADS: usize = 256;

/// How sessions are created. Build them with the setters (`RuntimeOptions::new().threads(4)`) or set the
/// public fields of a [`RuntimeOptions::default`]; fields are only ever added.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Path of `libonnxruntime.so`; `None` searches (see the README's lookup order).
    pub onnxruntime_library: Option<PathBuf>,
    /// Where the graphs run. Default: CPU.
    pub execution_provider: ExecutionProvider,
    /// Intra-op threads per session, up to [`MAX_THREADS`]; 0 lets ONNX Runtime choose (one per core).
    pub threads: usize,
    /// On CUDA and TensorRT, the most device memory, in bytes, that each graph's memory arena may take (ONNX
    /// Runtime's `gpu_mem_limit`; the five graphs have an arena each, and cuDNN's workspaces come on top).
    /// More than 0; `None`: no limit. A run that needs more fails with ONNX Runtime's out-of-memory error.
    pub gpu_memory_limit: Option<usize>,
    /// The most memory, in bytes, a restore may take: device memory on CUDA and TensorRT (where it also caps
    /// each graph's arena unless `gpu_memory_limit` does), resident memory on the CPU. Within it the graphs a
    /// stage does not need are released when keeping them would not fit, and tiles are made smaller until the
    /// estimate fits; a restore that cannot fit is refused with [`Error::OutOfMemory`]. `None`: no limit.
    pub memory_budget: Option<u64>,
}

impl RuntimeOptions {
    /// The defaults: the library searched for, the CPU, one thread per core, no memory limit.
    pub fn new() -> RuntimeOptions {
        RuntimeOptions::default()
    }

    /// Sets the `onnxruntime_library` field (see there).
    pub fn onnxruntime_library(mut self, path: impl Into<PathBuf>) -> RuntimeOptions {
        self.onnxruntime_library = Some(path.into());
        self
    }

    /// Sets the `execution_provider` field (see there).
    pub fn execution_provider(mut self, provider: ExecutionProvider) -> RuntimeOptions {
        self.execution_provider = provider;
        self
    }

    /// Sets the `threads` field (see there).
    pub fn threads(mut self, threads: usize) -> RuntimeOptions {
        self.threads = threads;
        self
    }

    /// Sets the `gpu_memory_limit` field (see there), in bytes.
    pub fn gpu_memory_limit(mut self, bytes: usize) -> RuntimeOptions {
        self.gpu_memory_limit = Some(bytes);
        self
    }

    /// Sets the `memory_budget` field (see there), in bytes.
    pub fn memory_budget(mut self, bytes: u64) -> RuntimeOptions {
        self.memory_budget = Some(bytes);
        self
    }
}

/// One input or output as the graph declares it. Dynamic axes are `None`.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name in the graph.
    pub name: String,
    /// Element type: float32, float16, bfloat16, int64, ...
    pub element: String,
    /// Size of each axis; `None` where the axis is dynamic.
    pub shape: Vec<Option<i64>>,
}

/// One loaded ONNX graph. Runs are serialised per graph (ONNX Runtime parallelises inside each run).
pub(crate) struct Graph {
    file: PathBuf,
    /// The CUDA device the graph runs on, for GPU providers: where resident inputs are kept.
    device: Option<i32>,
    session: Mutex<Session>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// Runs since loading, from every thread.
    runs: AtomicU64,
}

/// Loads the library (once per process) and chooses the provider: the first of `options`' attempts that registers.
pub(crate) struct Runtime {
    pub(crate) library: PathBuf,
    pub(crate) provider: ExecutionProvider,
    sessions: SessionSettings,
}

/// What every session of a runtime is built with, besides its provider and graph.
#[derive(Debug, Clone, Copy)]
struct SessionSettings {
    threads: usize,
    gpu_memory_limit: Option<usize>,
}

impl Runtime {
    /// Loads ONNX Runtime and settles the execution provider by building a session for `probe_graph` with each
    /// candidate in turn. Returns the runtime and that first session.
    pub(crate) fn new(options: &RuntimeOptions, probe_graph: &Path, hints: &GraphHints) -> Result<(Runtime, Graph)> {
        if options.threads > MAX_THREADS {
            return Err(Error::InvalidOptions(format!(
                "threads must be at most {MAX_THREADS} (0: one per core), got {}",
                options.threads
            )));
        }
        if options.gpu_memory_limit == Some(0) {
            return Err(Error::InvalidOptions("the GPU memory limit must be more than 0 bytes".into()));
        }
        if options.memory_budget == Some(0) {
            return Err(Error::InvalidOptions("the memory budget must be more than 0 bytes".into()));
        }
        let library = library::ensure_loaded(options.onnxruntime_library.as_deref())?.to_path_buf();
        let budget = options.memory_budget.map(|b| usize::try_from(b).unwrap_or(usize::MAX));
        let gpu_memory_limit = options.gpu_memory_limit.or(budget);
        let sessions = SessionSettings { threads: options.threads, gpu_memory_limit };
        let mut last_error = None;
        for provider in options.execution_provider.attempts() {
            let loaded =
                if provider.is_gpu() { cuda::ensure_loaded().map_err(RegisterError::Provider) } else { Ok(()) };
            match loaded.and_then(|()| Graph::load(probe_graph, &provider, sessions, hints)) {
                Ok(graph) => {
                    let runtime = Runtime { library, provider, sessions };
                    return Ok((runtime, graph));
                }
                Err(RegisterError::Provider(reason)) => {
                    last_error = Some(Error::ExecutionProvider {
                        provider: provider.to_string(),
                        reason: match provider.library() {
                            Some(needs) => format!("{reason} (needs {needs})"),
                            None => reason,
                        },
                    })
                }
                Err(RegisterError::Other(error)) => return Err(error),
            }
        }
        Err(last_error.expect("CPU is the last attempt of every choice and reports other errors"))
    }

    pub(crate) fn load(&self, file: &Path, hints: &GraphHints) -> Result<Graph> {
        Graph::load(file, &self.provider, self.sessions, hints).map_err(|e| match e {
            RegisterError::Provider(reason) => Error::ExecutionProvider { provider: self.provider.to_string(), reason },
            RegisterError::Other(error) => error,
        })
    }
}

enum RegisterError {
    Provider(String),
    Other(Error),
}

fn build_session(
    file: &Path,
    provider: &ExecutionProvider,
    settings: SessionSettings,
    hints: &GraphHints,
) -> ort::Result<Session> {
    let mut builder =
        Session::builder(library::environment())?.with_optimization_level(GraphOptimizationLevel::Level3)?;
    if settings.threads > 0 {
        builder = builder.with_intra_threads(settings.threads)?;
    }
    // Memory patterns plan one arena block per input shape; with the dynamic spatial axes of every graph here
    // they only hold memory: a 512x512 restore with the full-size transformer peaked at 14.5 GiB with them and
    // 12.5 GiB without, in the same time.
    builder = builder.with_memory_pattern(false)?;
    if provider.is_gpu() {
        // On a GPU the CPU thread pool only runs shape arithmetic; its threads would otherwise spin between runs
        // on the cores that do dpir's own work between steps and around the model (conversions, colour fix).
        let providers = provider.dispatch(hints, settings.gpu_memory_limit);
        builder = builder.with_intra_op_spinning(false)?.with_execution_providers(providers)?;
    }
    builder.commit_from_file(file)
}

impl Graph {
    fn load(
        file: &Path,
        provider: &ExecutionProvider,
        settings: SessionSettings,
        hints: &GraphHints,
    ) -> Result<Graph, RegisterError> {
        if !file.is_file() {
            return Err(RegisterError::Other(Error::bundle(file, "file is missing")));
        }
        let session = build_session(file, provider, settings, hints).map_err(|e| {
            let message = e.to_string();
            // Registration failures name the provider; anything else is about the graph itself.
            if provider.is_gpu() && mentions_provider(&message) {
                RegisterError::Provider(message)
            } else {
                RegisterError::Other(Error::Onnx { graph: file.display().to_string(), message })
            }
        })?;
        let inputs = session.inputs().iter().map(|o| describe(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| describe(o.name(), o.dtype())).collect();
        let device = provider.device();
        Ok(Graph {
            file: file.to_path_buf(),
            device,
            session: Mutex::new(session),
            inputs,
            outputs,
            runs: AtomicU64::new(0),
        })
    }

    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    pub(crate) fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    pub(crate) fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// Runs since loading.
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs the graph on f32 inputs, converting to and from the graph's own float type, and returns the named
    /// outputs in order. Time spent inside ONNX Runtime is added to `timer`.
    pub(crate) fn run(
        &self,
        inputs: &[(&str, ArrayViewD<'_, f32>)],
        outputs: &[&str],
        timer: &SessionTimer,
    ) -> Result<Vec<ArrayD<f32>>> {
        self.run_resident(inputs, &[], outputs, timer)
    }

    /// Like [`Graph::run`], with some inputs already [`Resident`].
    pub(crate) fn run_resident(
        &self,
        inputs: &[(&str, ArrayViewD<'_, f32>)],
        resident: &[(&str, &Resident)],
        outputs: &[&str],
        timer: &SessionTimer,
    ) -> Result<Vec<ArrayD<f32>>> {
        self.run_values(inputs, resident, outputs, timer, |views| {
            Ok(views.iter().map(|v| v.clone().into_owned()).collect())
        })
    }

    /// Converts an input that many runs share (the prompts and the LQ latent across a tile's denoising steps) to
    /// the graph's element type once and, on a GPU provider, copies it into device memory once, so that no run
    /// converts or uploads it again. The copy counts as time inside ONNX Runtime.
    pub(crate) fn resident(&self, name: &str, array: ArrayViewD<'_, f32>, timer: &SessionTimer) -> Result<Resident> {
        let fail = |message: String| Error::Onnx { graph: self.file.display().to_string(), message };
        let info = self.input(name).map_err(fail)?;
        let array = array.as_standard_layout();
        let data = array.as_slice().expect("standard layout");
        let on_host = owned_tensor(array.shape(), data, &info.element).map_err(|e| fail(e.to_string()))?;
        let Some(device) = self.device else { return Ok(Resident(on_host)) };
        let started = Instant::now();
        let on_device = on_host.to(AllocationDevice::CUDA, device).map_err(|e| fail(format!("input `{name}`: {e}")));
        timer.add(started.elapsed());
        Ok(Resident(on_device?))
    }

    /// The error of a failed run: [`Error::OutOfMemory`] when ONNX Runtime could not allocate, which a restore
    /// answers with a smaller tile.
    fn run_failed(&self, error: ort::Error) -> Error {
        let message = error.to_string();
        let graph = self.file.display().to_string();
        if is_out_of_memory(&message) {
            Error::OutOfMemory(format!("ONNX Runtime could not allocate memory in {graph}: {message}"))
        } else {
            Error::Onnx { graph, message }
        }
    }

    fn input(&self, name: &str) -> std::result::Result<&TensorInfo, String> {
        self.inputs.iter().find(|i| i.name == name).ok_or_else(|| format!("graph has no input `{name}`"))
    }

    /// Like [`Graph::run`], but hands `read` the outputs where ONNX Runtime left them (f32 graphs), so a
    /// caller that transforms them anyway makes no copy first.
    pub(crate) fn run_with<R>(
        &self,
        inputs: &[(&str, ArrayViewD<'_, f32>)],
        outputs: &[&str],
        timer: &SessionTimer,
        read: impl FnOnce(&[CowArray<'_, f32, IxDyn>]) -> Result<R>,
    ) -> Result<R> {
        self.run_values(inputs, &[], outputs, timer, read)
    }

    fn run_values<R>(
        &self,
        inputs: &[(&str, ArrayViewD<'_, f32>)],
        resident: &[(&str, &Resident)],
        outputs: &[&str],
        timer: &SessionTimer,
        read: impl FnOnce(&[CowArray<'_, f32, IxDyn>]) -> Result<R>,
    ) -> Result<R> {
        let fail = |message: String| Error::Onnx { graph: self.file.display().to_string(), message };
        // f32 inputs are handed over in place; other element types are converted.
        let contiguous: Vec<_> = inputs.iter().map(|(_, array)| array.as_standard_layout()).collect();
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len() + resident.len());
        for ((name, _), array) in inputs.iter().zip(&contiguous) {
            let info = self.input(name).map_err(fail)?;
            let data = array.as_slice().expect("standard layout");
            let value = to_value(array.shape(), data, &info.element).map_err(|e| fail(e.to_string()))?;
            values.push((name.to_string(), value));
        }
        for (name, value) in resident {
            self.input(name).map_err(fail)?;
            values.push((name.to_string(), SessionInputValue::from(&value.0)));
        }
        let mut session = self.session.lock();
        self.runs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = session.run(values).map_err(|e| self.run_failed(e))?;
        timer.add(started.elapsed());
        let views = outputs
            .iter()
            .map(|name| {
                let value = result.get(*name).ok_or_else(|| fail(format!("graph has no output `{name}`")))?;
                from_value(value).map_err(|e| fail(format!("output `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        read(&views)
    }
}

impl Graph {
    /// Runs a graph whose one input is int64 token ids of `shape` and returns the named f32 output.
    pub(crate) fn run_ids(
        &self,
        input: &str,
        ids: Vec<i64>,
        shape: &[usize],
        output: &str,
        timer: &SessionTimer,
    ) -> Result<ArrayD<f32>> {
        let fail = |message: String| Error::Onnx { graph: self.file.display().to_string(), message };
        let value = Tensor::from_array((shape.to_vec(), ids)).map_err(|e| fail(e.to_string()))?;
        let mut session = self.session.lock();
        self.runs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = session
            .run(vec![(input.to_string(), SessionInputValue::from(value.into_dyn()))])
            .map_err(|e| self.run_failed(e))?;
        timer.add(started.elapsed());
        let value = result.get(output).ok_or_else(|| fail(format!("graph has no output `{output}`")))?;
        Ok(from_value(value).map_err(|e| fail(format!("output `{output}`: {e}")))?.into_owned())
    }
}

/// An input prepared once for many runs of one graph ([`Graph::resident`]): in the graph's element type, and in
/// device memory on a GPU provider.
pub(crate) struct Resident(DynTensor);

/// Accumulates wall time spent inside session runs, for the overhead figures of the benchmark.
#[derive(Debug, Default)]
pub struct SessionTimer(std::sync::atomic::AtomicU64);

impl SessionTimer {
    fn add(&self, elapsed: Duration) {
        self.0.fetch_add(elapsed.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Total time inside ONNX Runtime runs so far.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Whether ONNX Runtime's message is an allocation failure: its arena's on CPU and GPU ("Failed to allocate
/// memory", "Available memory of N is smaller than requested bytes of M"), the CPU allocator's (`bad_alloc`), or
/// CUDA's.
fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["failed to allocate memory", "bad_alloc", "bad allocation", "out of memory", "is smaller than requested bytes"]
        .iter()
        .any(|words| lower.contains(words))
}

fn mentions_provider(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["provider", "cuda", "tensorrt", "libnvinfer", "cudnn"].iter().any(|word| lower.contains(word))
}

fn describe(name: &str, dtype: &ValueType) -> TensorInfo {
    let element = dtype.tensor_type().map_or_else(|| "non-tensor".to_string(), |t| element_name(t).to_string());
    let shape =
        dtype.tensor_shape().map(|shape| shape.iter().map(|&d| (d >= 0).then_some(d)).collect()).unwrap_or_default();
    TensorInfo { name: name.to_string(), element, shape }
}

fn element_name(element: TensorElementType) -> &'static str {
    match element {
        TensorElementType::Float32 => "float32",
        TensorElementType::Float16 => "float16",
        TensorElementType::Bfloat16 => "bfloat16",
        TensorElementType::Float64 => "float64",
        TensorElementType::Int64 => "int64",
        TensorElementType::Int32 => "int32",
        _ => "other",
    }
}

fn to_value<'a>(shape: &[usize], data: &'a [f32], element: &str) -> ort::Result<SessionInputValue<'a>> {
    Ok(match element {
        "float16" | "bfloat16" => owned_tensor(shape, data, element)?.into(),
        _ => TensorRef::from_array_view((shape.to_vec(), data))?.into(),
    })
}

/// A tensor of its own holding `data` in the graph's element type.
fn owned_tensor(shape: &[usize], data: &[f32], element: &str) -> ort::Result<DynTensor> {
    let shape = shape.to_vec();
    Ok(match element {
        "float16" => Tensor::from_array((shape, to_f16(data)))?.upcast(),
        "bfloat16" => Tensor::from_array((shape, to_bf16(data)))?.upcast(),
        _ => Tensor::from_array((shape, data.to_vec()))?.upcast(),
    })
}

// Whole-slice conversions: `half` converts them with the CPU's vector instructions where it has them (F16C),
// several times faster than one value at a time.
fn to_f16(data: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; data.len()];
    out.convert_from_f32_slice(data);
    out
}

fn to_bf16(data: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; data.len()];
    out.convert_from_f32_slice(data);
    out
}

fn from_value(value: &DynValue) -> ort::Result<CowArray<'_, f32, IxDyn>> {
    let converted = |shape: &ort::value::Shape, data: Vec<f32>| {
        CowArray::from(ArrayD::from_shape_vec(IxDyn(&dims(shape)), data).expect("ONNX Runtime's shape fits its data"))
    };
    Ok(match value.dtype().tensor_type() {
        Some(TensorElementType::Float16) => {
            let (shape, data) = value.try_extract_tensor::<f16>()?;
            converted(shape, data.to_f32_vec())
        }
        Some(TensorElementType::Bfloat16) => {
            let (shape, data) = value.try_extract_tensor::<bf16>()?;
            converted(shape, data.to_f32_vec())
        }
        _ => CowArray::from(value.try_extract_array::<f32>()?),
    })
}

fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}
