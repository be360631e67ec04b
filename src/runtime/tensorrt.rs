//! TensorRT: the options dpir passes to ONNX Runtime's TensorRT provider. Engines take minutes to build, so they
//! and TensorRT's timing cache persist in a per-user folder keyed by everything that invalidates them (bundle,
//! dtype, input shapes, GPU, TensorRT version), and each graph gets an optimisation profile covering the shapes
//! dpir feeds it, so that no new shape rebuilds an engine in the middle of a restore.
//!
//! TensorRT cannot be installed on the machines this project is built and tested on: these settings follow ONNX
//! Runtime's documented provider options and are covered by unit tests of what dpir passes.

use std::ffi::{c_char, c_int, CStr};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::cuda::DRIVER;

/// The shapes one graph's inputs take in dpir: for each input, its smallest, usual and largest dimensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    pub inputs: Vec<ProfileInput>,
}

/// One input of a [`Profile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProfileInput {
    pub name: String,
    pub min: Vec<usize>,
    pub opt: Vec<usize>,
    pub max: Vec<usize>,
}

impl Profile {
    /// `name:AxBxC,name:...` for one of the three shapes, as ONNX Runtime's `trt_profile_*_shapes` take them.
    fn shapes(&self, pick: impl Fn(&ProfileInput) -> &[usize]) -> String {
        let dims = |d: &[usize]| d.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
        self.inputs.iter().map(|i| format!("{}:{}", i.name, dims(pick(i)))).collect::<Vec<_>>().join(",")
    }

    /// A short stable digest of the shapes, for the cache folder's name.
    pub(crate) fn digest(&self) -> String {
        let text = [self.shapes(|i| &i.min), self.shapes(|i| &i.opt), self.shapes(|i| &i.max)].join(";");
        format!("{:08x}", fnv1a(text.as_bytes()) as u32)
    }
}

/// What a graph's TensorRT session needs beyond the provider: its profile, and the key of its bundle in the
/// engine cache (see [`bundle_key`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct GraphHints {
    pub profile: Profile,
    pub bundle_key: String,
}

/// The provider options for one graph, as ONNX Runtime names them, and the folder its engines are cached in.
pub(crate) fn options(
    device: i32,
    fp16: bool,
    cache_root: &Path,
    hints: &GraphHints,
    platform: &str,
) -> (Vec<(&'static str, String)>, PathBuf) {
    let folder = cache_root.join(&hints.bundle_key).join(platform).join(hints.profile.digest());
    let path = folder.display().to_string();
    let mut options = vec![
        ("device_id", device.to_string()),
        ("trt_fp16_enable", flag(fp16)),
        // Engines: built once per graph and profile, then loaded in seconds.
        ("trt_engine_cache_enable", flag(true)),
        ("trt_engine_cache_path", path.clone()),
        // Kernel timings: shared by engines of the same layers (a new profile builds faster).
        ("trt_timing_cache_enable", flag(true)),
        ("trt_timing_cache_path", path),
    ];
    if !hints.profile.inputs.is_empty() {
        options.extend([
            ("trt_profile_min_shapes", hints.profile.shapes(|i| &i.min)),
            ("trt_profile_opt_shapes", hints.profile.shapes(|i| &i.opt)),
            ("trt_profile_max_shapes", hints.profile.shapes(|i| &i.max)),
        ]);
    }
    (options, folder)
}

fn flag(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

/// The default root of the engine cache: `$XDG_CACHE_HOME/dpir/tensorrt`, else `~/.cache/dpir/tensorrt` (on
/// Windows `%LOCALAPPDATA%\dpir\tensorrt`), else a folder in the system's temporary directory.
pub(crate) fn default_cache_root() -> PathBuf {
    cache_root(|name| std::env::var_os(name))
}

fn cache_root(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let set = |name| var(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    #[cfg(windows)]
    let cache = set("LOCALAPPDATA").filter(|dir| dir.is_absolute());
    #[cfg(not(windows))]
    let cache = set("XDG_CACHE_HOME").filter(|dir| dir.is_absolute()).or_else(|| Some(set("HOME")?.join(".cache")));
    cache.unwrap_or_else(std::env::temp_dir).join("dpir").join("tensorrt")
}

/// A bundle's name in the engine cache: its manifest name and dtype, and a digest of what identifies its graphs
/// (the folder, and the size and modification time of each graph file), so that a converted-again bundle gets
/// new engines.
pub(crate) fn bundle_key(dir: &Path, name: &str, dtype: &str, files: &[PathBuf]) -> String {
    let mut identity = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string();
    for file in files {
        let meta = std::fs::metadata(file).ok();
        let modified = meta.as_ref().and_then(|m| m.modified().ok());
        let stamp = modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        identity.push_str(&format!("|{}:{}:{stamp}", file.display(), meta.map_or(0, |m| m.len())));
    }
    format!("{}-{dtype}-{:016x}", safe_name(name), fnv1a(identity.as_bytes()))
}

/// What [`platform`] says when libnvinfer cannot be asked: TensorRT is not installed.
pub(crate) const UNKNOWN_VERSION: &str = "trt-unknown";

/// The GPU and TensorRT in one folder name, e.g. `NVIDIA-H100-80GB-HBM3-trt10.9.0`, asked of the CUDA driver and
/// of libnvinfer once per process and device; parts that cannot be asked read `unknown-gpu` /
/// [`UNKNOWN_VERSION`].
pub(crate) fn platform(device: i32) -> String {
    static PLATFORMS: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());
    let mut known = PLATFORMS.lock();
    if let Some((_, name)) = known.iter().find(|(d, _)| *d == device) {
        return name.clone();
    }
    let gpu = gpu_name(device).map_or_else(|| "unknown-gpu".to_string(), |name| safe_name(&name));
    let trt = tensorrt_version().map_or_else(|| UNKNOWN_VERSION.to_string(), |v| format!("trt{v}"));
    known.push((device, format!("{gpu}-{trt}")));
    known.last().expect("just pushed").1.clone()
}

/// Whether `folder` already holds a built engine.
pub(crate) fn has_engine(folder: &Path) -> bool {
    std::fs::read_dir(folder)
        .map(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "engine")))
        .unwrap_or(false)
}

/// Letters, digits, '.', '_' and '-' kept; anything else becomes '-'.
fn safe_name(text: &str) -> String {
    let kept: String =
        text.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    if kept.is_empty() {
        "unnamed".to_string()
    } else {
        kept
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// TensorRT's library.
#[cfg(not(windows))]
const NVINFER: &str = "libnvinfer.so.10";
#[cfg(windows)]
const NVINFER: &str = "nvinfer_10.dll";

/// A system library held open while it is asked something; `None` when it is not installed.
fn open(name: &str) -> Option<libloading::Library> {
    // SAFETY: the NVIDIA libraries opened here run no initialisers that depend on the caller.
    unsafe { libloading::Library::new(name) }.ok()
}

/// The name the CUDA driver gives device `ordinal`.
fn gpu_name(ordinal: i32) -> Option<String> {
    let driver = open(DRIVER)?;
    // SAFETY: the driver API's documented signatures: CUresult cuInit(unsigned), cuDeviceGet(CUdevice*, int),
    // cuDeviceGetName(char*, int, CUdevice).
    let (init, get, name) = unsafe {
        (
            driver.get::<unsafe extern "C" fn(u32) -> c_int>(c"cuInit").ok()?,
            driver.get::<unsafe extern "C" fn(*mut c_int, c_int) -> c_int>(c"cuDeviceGet").ok()?,
            driver.get::<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int>(c"cuDeviceGetName").ok()?,
        )
    };
    let mut device: c_int = 0;
    let mut buffer = [0 as c_char; 256];
    // SAFETY: the functions as declared above; the buffer's length is passed with it.
    unsafe {
        if init(0) != 0 || get(&mut device, ordinal) != 0 || name(buffer.as_mut_ptr(), 256, device) != 0 {
            return None;
        }
        Some(CStr::from_ptr(buffer.as_ptr()).to_string_lossy().into_owned())
    }
}

/// TensorRT's version, `major.minor.patch`, from libnvinfer's `getInferLibVersion` (10.x encodes it as
/// major * 10000 + minor * 100 + patch).
fn tensorrt_version() -> Option<String> {
    let nvinfer = open(NVINFER)?;
    // SAFETY: a function of no arguments returning int32_t, as TensorRT's NvInferRuntimeBase.h declares it.
    let v = unsafe { nvinfer.get::<unsafe extern "C" fn() -> i32>(c"getInferLibVersion").ok()?() };
    Some(format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            inputs: vec![
                ProfileInput {
                    name: "hidden_states".into(),
                    min: vec![1, 4, 2, 2],
                    opt: vec![1, 4, 128, 128],
                    max: vec![2, 4, 128, 128],
                },
                ProfileInput { name: "timestep".into(), min: vec![1], opt: vec![1], max: vec![2] },
            ],
        }
    }

    #[test]
    fn options_cache_engines_per_bundle_platform_and_shapes() {
        let hints = GraphHints { profile: profile(), bundle_key: "tiny-float16-0123".into() };
        let (options, folder) = options(1, true, Path::new("/cache"), &hints, "GPU-trt10.9.0");
        let get = |key: &str| options.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        let digest = hints.profile.digest();
        assert_eq!(folder, Path::new("/cache/tiny-float16-0123/GPU-trt10.9.0").join(&digest));
        assert_eq!(get("device_id"), Some("1"));
        assert_eq!(get("trt_fp16_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_enable"), Some("1"));
        assert_eq!(get("trt_timing_cache_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_path"), folder.to_str());
        assert_eq!(get("trt_timing_cache_path"), folder.to_str());
        assert_eq!(get("trt_profile_min_shapes"), Some("hidden_states:1x4x2x2,timestep:1"));
        assert_eq!(get("trt_profile_opt_shapes"), Some("hidden_states:1x4x128x128,timestep:1"));
        assert_eq!(get("trt_profile_max_shapes"), Some("hidden_states:2x4x128x128,timestep:2"));
        // Other shapes, another folder: an engine is never loaded for shapes it was not built for.
        let mut wider = hints.clone();
        wider.profile.inputs[1].max = vec![4];
        assert_ne!(wider.profile.digest(), digest);
        // No profile (a graph without dynamic inputs): no profile options.
        let fixed = GraphHints { profile: Profile::default(), bundle_key: "b".into() };
        assert!(super::options(0, false, Path::new("/c"), &fixed, "p").0.iter().all(|(k, _)| !k.contains("profile")));
    }

    #[test]
    fn bundle_keys_change_with_the_graphs() {
        let dir = tempfile::tempdir().unwrap();
        let graph = dir.path().join("transformer.onnx");
        std::fs::write(&graph, b"one").unwrap();
        let key = bundle_key(dir.path(), "dpir sd3/medium", "float16", std::slice::from_ref(&graph));
        assert!(key.starts_with("dpir-sd3-medium-float16-"), "{key}");
        assert_eq!(key, bundle_key(dir.path(), "dpir sd3/medium", "float16", std::slice::from_ref(&graph)));
        std::fs::write(&graph, b"longer").unwrap();
        assert_ne!(key, bundle_key(dir.path(), "dpir sd3/medium", "float16", std::slice::from_ref(&graph)));
        assert_ne!(
            bundle_key(dir.path(), "dpir sd3/medium", "float16", std::slice::from_ref(&graph)),
            bundle_key(dir.path(), "dpir sd3/medium", "float32", &[graph])
        );
    }

    #[test]
    #[cfg(not(windows))]
    fn cache_root_follows_xdg() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| std::ffi::OsString::from(v))
        };
        const XDG: &[(&str, &str)] = &[("XDG_CACHE_HOME", "/xdg-cache"), ("HOME", "/home/someone")];
        assert_eq!(cache_root(env(XDG)), Path::new("/xdg-cache/dpir/tensorrt"));
        const RELATIVE: &[(&str, &str)] = &[("XDG_CACHE_HOME", "relative"), ("HOME", "/home/someone")];
        assert_eq!(cache_root(env(RELATIVE)), Path::new("/home/someone/.cache/dpir/tensorrt"));
        assert_eq!(cache_root(env(&[])), std::env::temp_dir().join("dpir/tensorrt"));
    }

    #[test]
    fn platform_names_what_it_cannot_ask() {
        // No NVIDIA driver or TensorRT on the test machines: both parts say so, and nothing fails.
        if open(DRIVER).is_none() {
            assert!(platform(0).starts_with("unknown-gpu-"), "{}", platform(0));
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(!has_engine(dir.path()));
        std::fs::write(dir.path().join("TensorrtExecutionProvider_x_sm90.engine"), b"").unwrap();
        assert!(has_engine(dir.path()));
    }
}
