//! Execution providers: what the caller may ask for, and how each is registered.

use std::fmt;
use std::path::PathBuf;

use ort::ep::{ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch, TensorRT, CUDA};

use super::tensorrt::{self, GraphHints};

/// Where the graphs run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider. Always available.
    #[default]
    Cpu,
    /// NVIDIA CUDA on the given device. Needs `libonnxruntime_providers_cuda.so` (Windows:
    /// `onnxruntime_providers_cuda.dll`; from `onnxruntime-gpu`) and the CUDA 13 / cuDNN 9 libraries.
    Cuda {
        /// CUDA device ordinal.
        device: i32,
    },
    /// NVIDIA TensorRT on the given device, optionally in fp16, with CUDA for what TensorRT cannot run. Engines
    /// and TensorRT's timing cache persist under `engine_cache` (default `$XDG_CACHE_HOME/dpir/tensorrt`, on Windows
    /// `%LOCALAPPDATA%\dpir\tensorrt`), in a folder per bundle, GPU, TensorRT version and input shapes. Needs
    /// `libonnxruntime_providers_tensorrt.so` (Windows: `onnxruntime_providers_tensorrt.dll`) and TensorRT 10
    /// (`libnvinfer`). Made with [`ExecutionProvider::tensorrt`].
    #[non_exhaustive]
    TensorRt {
        /// CUDA device ordinal.
        device: i32,
        /// Build fp16 engines.
        fp16: bool,
        /// Root folder of the engine cache; `None` for the per-user default.
        engine_cache: Option<PathBuf>,
    },
    /// The best provider that registers: TensorRT, then CUDA (device 0), then CPU.
    Auto,
}

impl ExecutionProvider {
    /// TensorRT on CUDA device `device`, building fp16 engines, with the per-user engine cache.
    pub fn tensorrt(device: i32) -> ExecutionProvider {
        ExecutionProvider::TensorRt { device, fp16: true, engine_cache: None }
    }

    /// TensorRT with the engine cache under `root` instead of the per-user folder; other providers unchanged.
    pub fn with_engine_cache(self, root: impl Into<PathBuf>) -> ExecutionProvider {
        match self {
            ExecutionProvider::TensorRt { device, fp16, .. } => {
                ExecutionProvider::TensorRt { device, fp16, engine_cache: Some(root.into()) }
            }
            other => other,
        }
    }

    /// Parses `cpu`, `cuda`, `cuda:N`, `tensorrt`, `tensorrt:N` or `auto`.
    pub fn parse(text: &str) -> Option<ExecutionProvider> {
        let (name, device) = match text.split_once(':') {
            Some((name, device)) => (name, device.parse().ok()?),
            None => (text, 0),
        };
        match name {
            "cpu" if !text.contains(':') => Some(ExecutionProvider::Cpu),
            "cuda" => Some(ExecutionProvider::Cuda { device }),
            "tensorrt" | "trt" => Some(ExecutionProvider::tensorrt(device)),
            "auto" if !text.contains(':') => Some(ExecutionProvider::Auto),
            _ => None,
        }
    }

    /// The providers to try in order; the first that registers is used.
    pub(crate) fn attempts(&self) -> Vec<ExecutionProvider> {
        match self {
            ExecutionProvider::Auto => {
                vec![ExecutionProvider::tensorrt(0), ExecutionProvider::Cuda { device: 0 }, ExecutionProvider::Cpu]
            }
            other => vec![other.clone()],
        }
    }

    /// The CUDA device the graphs run on; `None` for the CPU (and `auto` before it has chosen).
    pub(crate) fn device(&self) -> Option<i32> {
        match self {
            ExecutionProvider::Cuda { device } | ExecutionProvider::TensorRt { device, .. } => Some(*device),
            ExecutionProvider::Cpu | ExecutionProvider::Auto => None,
        }
    }

    /// Whether this provider runs the graphs on an NVIDIA GPU.
    pub(crate) fn is_gpu(&self) -> bool {
        self.device().is_some()
    }

    /// The ONNX Runtime providers to register for one graph, in order, each set to fail loudly (no silent CPU
    /// fallback); none for the CPU. TensorRT comes with CUDA behind it, which runs what TensorRT cannot.
    pub(crate) fn dispatch(&self, hints: &GraphHints, memory_limit: Option<usize>) -> Vec<ExecutionProviderDispatch> {
        match self {
            ExecutionProvider::Cpu | ExecutionProvider::Auto => vec![],
            ExecutionProvider::Cuda { device } => vec![cuda(*device, memory_limit)],
            ExecutionProvider::TensorRt { device, fp16, engine_cache } => {
                let root = engine_cache.clone().unwrap_or_else(tensorrt::default_cache_root);
                let platform = tensorrt::platform(*device);
                let (options, folder) = tensorrt::options(*device, *fp16, &root, hints, &platform);
                // Without TensorRT registration fails anyway (or `auto` moves on): no message, no folder.
                if !platform.ends_with(tensorrt::UNKNOWN_VERSION) {
                    if !tensorrt::has_engine(&folder) {
                        eprintln!(
                            "dpir: TensorRT is building an engine for this GPU into {}: several minutes for the \
                             transformer, once; later loads take seconds",
                            folder.display()
                        );
                    }
                    // ONNX Runtime reports a folder it cannot write; creating it here is only a convenience.
                    let _ = std::fs::create_dir_all(&folder);
                }
                let trt = options
                    .into_iter()
                    .fold(TensorRT::default(), |trt, (key, value)| trt.with_arbitrary_config(key, value));
                vec![trt.build().error_on_failure(), cuda(*device, memory_limit)]
            }
        }
    }

    /// The provider library ONNX Runtime must find for this provider, named in errors.
    pub(crate) fn library(&self) -> Option<&'static str> {
        #[cfg(not(windows))]
        const CUDA: &str = "libonnxruntime_providers_cuda.so (from onnxruntime-gpu) with CUDA 13 and cuDNN 9";
        #[cfg(not(windows))]
        const TENSORRT: &str =
            "libonnxruntime_providers_tensorrt.so (from onnxruntime-gpu) with TensorRT 10 (libnvinfer)";
        #[cfg(windows)]
        const CUDA: &str = "onnxruntime_providers_cuda.dll (from onnxruntime-gpu) with CUDA 13 and cuDNN 9";
        #[cfg(windows)]
        const TENSORRT: &str =
            "onnxruntime_providers_tensorrt.dll (from onnxruntime-gpu) with TensorRT 10 (nvinfer_10.dll)";
        match self {
            ExecutionProvider::Cuda { .. } => Some(CUDA),
            ExecutionProvider::TensorRt { .. } => Some(TENSORRT),
            _ => None,
        }
    }
}

fn cuda(device: i32, memory_limit: Option<usize>) -> ExecutionProviderDispatch {
    let cuda = cuda_options(device, memory_limit)
        .into_iter()
        .fold(CUDA::default(), |cuda, (key, value)| cuda.with_arbitrary_config(key, value));
    cuda.build().error_on_failure()
}

/// The CUDA provider's options, as ONNX Runtime names them, each chosen for how dpir runs its graphs.
fn cuda_options(device: i32, memory_limit: Option<usize>) -> Vec<(&'static str, String)> {
    let mut options = vec![
        ("device_id", device.to_string()),
        // cuDNN's heuristic instead of the exhaustive default: an exhaustive search runs every convolution algorithm
        // for each new input shape, which a plug-in pays at each new image or tile size, with workspaces that spike
        // memory. The convolutions (VAE, LQ branch, patch embedding) are a small part of a restore's time.
        ("cudnn_conv_algo_search", "HEURISTIC".to_string()),
        // Grow the memory arena by what is asked rather than to the next power of two: a 1.1 GiB activation then
        // takes 1.1 GiB, not 2, which decides whether a restore fits an 8 GB card.
        ("arena_extend_strategy", "kSameAsRequested".to_string()),
        // TF32 for the float32 arithmetic left in fp16 bundles (the VAE computes in float32): tensor cores, and
        // the same choice as PyTorch's cuDNN convolutions in the official pipeline. Its rounding (10-bit mantissa
        // products) is far below the fp16 bundle's own.
        ("use_tf32", "1".to_string()),
    ];
    if let Some(bytes) = memory_limit {
        options.push(("gpu_mem_limit", bytes.to_string()));
    }
    options
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Cpu => f.write_str("cpu"),
            ExecutionProvider::Cuda { device } => write!(f, "cuda:{device}"),
            ExecutionProvider::TensorRt { device, fp16, .. } => {
                write!(f, "tensorrt:{device}{}", if *fp16 { " (fp16)" } else { "" })
            }
            ExecutionProvider::Auto => f.write_str("auto"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_names() {
        assert_eq!(ExecutionProvider::parse("cpu"), Some(ExecutionProvider::Cpu));
        assert_eq!(ExecutionProvider::parse("cuda:1"), Some(ExecutionProvider::Cuda { device: 1 }));
        assert_eq!(ExecutionProvider::parse("auto"), Some(ExecutionProvider::Auto));
        assert!(matches!(ExecutionProvider::parse("tensorrt"), Some(ExecutionProvider::TensorRt { device: 0, .. })));
        assert_eq!(ExecutionProvider::parse("cpu:1"), None);
        assert_eq!(ExecutionProvider::parse("cuda:x"), None);
        assert_eq!(ExecutionProvider::parse("metal"), None);
    }

    #[test]
    fn cuda_options_are_chosen_on_purpose() {
        let options = cuda_options(1, None);
        let get = |key: &str| options.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("device_id"), Some("1"));
        assert_eq!(get("cudnn_conv_algo_search"), Some("HEURISTIC"));
        assert_eq!(get("arena_extend_strategy"), Some("kSameAsRequested"));
        assert_eq!(get("use_tf32"), Some("1"));
        assert_eq!(get("gpu_mem_limit"), None);
        let limited = cuda_options(0, Some(6 << 30));
        assert!(limited.contains(&("gpu_mem_limit", (6usize << 30).to_string())));
        assert_eq!(ExecutionProvider::Cuda { device: 1 }.dispatch(&GraphHints::default(), None).len(), 1);
        assert!(ExecutionProvider::Cpu.dispatch(&GraphHints::default(), None).is_empty());
    }
}
