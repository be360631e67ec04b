//! The crate's one error type, and the coarse kinds callers (and the C layer) branch on.

use std::path::PathBuf;

/// Everything that can go wrong while loading a bundle or restoring an image.
///
/// Messages say what failed and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No ONNX Runtime library was found in any of the places dpir looks.
    #[error(
        "ONNX Runtime 1.31 or newer was not found; looked for {}. Put {} beside the program, set \
         DPIR_ORT_LIB to its path, or install the onnxruntime Python package (in a dpir source checkout, \
         `python3 tools/fetch_onnxruntime.py` fetches one that the CLI takes; other programs name it with \
         DPIR_ORT_LIB)",
        display_paths(.searched),
        crate::ONNXRUNTIME_LIBRARY_NAMES[0]
    )]
    OnnxRuntimeNotFound {
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
    },

    /// A library was found but could not be used (not a library, wrong version, damaged).
    #[error("cannot use ONNX Runtime library {path}: {reason}")]
    OnnxRuntimeLoad {
        /// The library.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// An execution provider that was asked for explicitly could not be registered.
    #[error("execution provider `{provider}` is not available: {reason}")]
    ExecutionProvider {
        /// The provider asked for, e.g. `cuda:0`.
        provider: String,
        /// ONNX Runtime's reason and the library the provider needs.
        reason: String,
    },

    /// The bundle directory, its manifest or one of its files is missing or unreadable.
    #[error("model bundle {path}: {message}")]
    Bundle {
        /// The directory or file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A graph does not match what the manifest says about it.
    #[error("model bundle file {file}: {field}: expected {expected}, found {found}")]
    GraphMismatch {
        /// The graph (or prompt) file.
        file: PathBuf,
        /// The input, output or property that differs.
        field: String,
        /// What the manifest implies.
        expected: String,
        /// What the file declares.
        found: String,
    },

    /// ONNX Runtime failed while creating a session or running a graph.
    #[error("ONNX Runtime failed on {graph}: {message}")]
    Onnx {
        /// The graph file.
        graph: String,
        /// ONNX Runtime's message.
        message: String,
    },

    /// The image or pixel description cannot be processed.
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// An option is out of range or inconsistent.
    #[error("invalid option: {0}")]
    InvalidOptions(String),

    /// The image is larger than the model (or the configured limits) can take.
    #[error("image too large: {0}")]
    TooLarge(String),

    /// The restore does not fit the memory budget, or ONNX Runtime could not allocate memory for a run (after
    /// one retry with a smaller tile). The message names the memory it needed.
    #[error("out of memory: {0}")]
    OutOfMemory(String),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// An image file could not be decoded or encoded.
    #[error("{path}: {message}")]
    ImageFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The model produced an unusable result (NaN, infinity, a black frame from a non-black input).
    #[error("the model produced an unusable result: {0}")]
    BadOutput(String),

    /// The caller cancelled the restore.
    #[error("cancelled")]
    Cancelled,
}

/// The coarse class of an [`Error`], stable for callers to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The ONNX Runtime library is missing or unusable.
    OnnxRuntime,
    /// A requested execution provider cannot be registered.
    ExecutionProvider,
    /// The model bundle is missing, malformed or inconsistent.
    Bundle,
    /// ONNX Runtime failed while running a graph.
    Inference,
    /// The image or its pixel description is invalid.
    InvalidImage,
    /// An option is out of range.
    InvalidOptions,
    /// The image is too large.
    TooLarge,
    /// The restore needs more memory than the budget or the device has.
    OutOfMemory,
    /// A file could not be read or written.
    Io,
    /// The model produced NaN, infinity or black.
    BadOutput,
    /// The caller cancelled.
    Cancelled,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::OnnxRuntimeNotFound { .. } | Error::OnnxRuntimeLoad { .. } => ErrorKind::OnnxRuntime,
            Error::ExecutionProvider { .. } => ErrorKind::ExecutionProvider,
            Error::Bundle { .. } | Error::GraphMismatch { .. } => ErrorKind::Bundle,
            Error::Onnx { .. } => ErrorKind::Inference,
            Error::InvalidImage(_) => ErrorKind::InvalidImage,
            Error::InvalidOptions(_) => ErrorKind::InvalidOptions,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::OutOfMemory(_) => ErrorKind::OutOfMemory,
            Error::Io { .. } | Error::ImageFile { .. } => ErrorKind::Io,
            Error::BadOutput(_) => ErrorKind::BadOutput,
            Error::Cancelled => ErrorKind::Cancelled,
        }
    }

    pub(crate) fn bundle(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Bundle { path: path.into(), message: message.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(nowhere)".into();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
