//! The C ABI (`include/dpir.h`, generated from this module by cbindgen): a thin layer over the public Rust API.
//!
//! Every exported function has one shape: check the arguments, run the body under [`call`] (which catches
//! panics and keeps the message for `dpir_last_error_message`), call the Rust API, map its error with
//! [`status_of`]. What keeps the header a promise C programs can rely on:
//!
//! - Status and enum values carry explicit numbers and are only ever appended.
//! - Structs a caller fills begin with `size_t size` and only grow by appending fields ([`Versioned`]). They
//!   hold only integers, floats, raw pointers and nullable function pointers, for which every bit pattern is
//!   valid, so a caller's bytes are copied in as they are; C integers become Rust enums through `TryFrom`.
//! - Nothing is read through a caller's pointer before the descriptor that covers it has been validated.
//! - Memory is freed by the side that allocated it; every free function accepts NULL.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types)]

mod options;
mod pixels;
mod restorer;
// The newer ones last, in the order they came, so that their declarations follow the older ones in dpir.h (blank
// lines keep rustfmt from sorting them).
mod frame;

mod bundle;

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use crate::{Error, ErrorKind};

/// Major version of the dpir.h a program was compiled with (`dpir_version()` gives the library's).
pub const DPIR_VERSION_MAJOR: u32 = 0;
/// Minor version of the dpir.h a program was compiled with.
pub const DPIR_VERSION_MINOR: u32 = 5;
/// Patch version of the dpir.h a program was compiled with.
pub const DPIR_VERSION_PATCH: u32 = 0;
/// ABI version of the dpir.h a program was compiled with; compare it with `dpir_abi_version()` at start-up.
///
/// The shared library's SONAME is `libdpir.so.<ABI version>`. Within one ABI version functions, enum values and
/// struct fields (at the end of structs that begin with `size`) are only ever added, never changed or removed.
pub const DPIR_ABI_VERSION: u32 = 0;

/// The status every fallible function returns. Values are fixed forever; new ones are only appended.
///
/// `dpir_status_string()` gives a fixed text for each; `dpir_last_error_message()` the details of the last
/// failure on the calling thread.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dpir_status {
    /// Success.
    Ok = 0,
    /// A required pointer is NULL, or a struct's `size` field is not one this library knows.
    InvalidArgument = 1,
    /// A pixel descriptor is inconsistent (NULL data, zero or too large a size, a stride smaller than a row,
    /// a size that overflows, an unknown sample type, premultiplied alpha without an alpha channel, ...), a
    /// destination has the wrong size, or buffers that must not overlap do.
    InvalidImage = 2,
    /// An option is out of range, unknown, or names something the bundle does not have.
    InvalidOptions = 3,
    /// The ONNX Runtime library is missing, not a library, too old, or another one is already loaded.
    OnnxRuntime = 4,
    /// An execution provider asked for explicitly cannot be used (never a silent fall back to the CPU).
    ExecutionProvider = 5,
    /// The model bundle is missing, malformed, or does not match its manifest.
    Bundle = 6,
    /// ONNX Runtime failed while creating a session or running a graph.
    Inference = 7,
    /// The image is larger than the model or the library can take.
    TooLarge = 8,
    /// A file could not be read, decoded, encoded or written.
    Io = 9,
    /// The model produced NaN, infinity, or black from an input that is not black.
    BadOutput = 10,
    /// The restore was cancelled (progress callback or `dpir_cancel_request()`); nothing was written.
    Cancelled = 11,
    /// A bug in dpir (an internal panic was caught at the boundary). Please report it with the message.
    Internal = 12,
    /// The restore does not fit the memory budget (`memory_budget` of `dpir_load_options`), or ONNX Runtime ran
    /// out of memory again after one retry with a smaller tile; the message names the memory it needed.
    OutOfMemory = 13,
}

impl dpir_status {
    const ALL: [dpir_status; 14] = [
        dpir_status::Ok,
        dpir_status::InvalidArgument,
        dpir_status::InvalidImage,
        dpir_status::InvalidOptions,
        dpir_status::OnnxRuntime,
        dpir_status::ExecutionProvider,
        dpir_status::Bundle,
        dpir_status::Inference,
        dpir_status::TooLarge,
        dpir_status::Io,
        dpir_status::BadOutput,
        dpir_status::Cancelled,
        dpir_status::Internal,
        dpir_status::OutOfMemory,
    ];

    fn text(self) -> &'static CStr {
        match self {
            dpir_status::Ok => c"success",
            dpir_status::InvalidArgument => c"invalid argument",
            dpir_status::InvalidImage => c"invalid image",
            dpir_status::InvalidOptions => c"invalid option",
            dpir_status::OnnxRuntime => c"ONNX Runtime library unavailable",
            dpir_status::ExecutionProvider => c"execution provider unavailable",
            dpir_status::Bundle => c"invalid model bundle",
            dpir_status::Inference => c"ONNX Runtime failed",
            dpir_status::TooLarge => c"image too large",
            dpir_status::Io => c"file error",
            dpir_status::BadOutput => c"the model produced an unusable result",
            dpir_status::Cancelled => c"cancelled",
            dpir_status::Internal => c"internal error",
            dpir_status::OutOfMemory => c"out of memory",
        }
    }
}

impl TryFrom<i32> for dpir_status {
    type Error = i32;

    fn try_from(value: i32) -> Result<Self, i32> {
        dpir_status::ALL.into_iter().find(|s| *s as i32 == value).ok_or(value)
    }
}

/// The one place Rust errors become C statuses.
fn status_of(kind: ErrorKind) -> dpir_status {
    match kind {
        ErrorKind::OnnxRuntime => dpir_status::OnnxRuntime,
        ErrorKind::ExecutionProvider => dpir_status::ExecutionProvider,
        ErrorKind::Bundle => dpir_status::Bundle,
        ErrorKind::Inference => dpir_status::Inference,
        ErrorKind::InvalidImage => dpir_status::InvalidImage,
        ErrorKind::InvalidOptions => dpir_status::InvalidOptions,
        ErrorKind::TooLarge => dpir_status::TooLarge,
        ErrorKind::Io => dpir_status::Io,
        ErrorKind::BadOutput => dpir_status::BadOutput,
        ErrorKind::Cancelled => dpir_status::Cancelled,
        ErrorKind::OutOfMemory => dpir_status::OutOfMemory,
    }
}

/// Implements `TryFrom<u32>` for a C enum from the list of its variants.
macro_rules! c_enum_from_u32 {
    ($name:ident: $($variant:ident),+ $(,)?) => {
        impl TryFrom<u32> for $name {
            type Error = u32;

            fn try_from(value: u32) -> Result<Self, u32> {
                [$($name::$variant),+].into_iter().find(|v| *v as u32 == value).ok_or(value)
            }
        }
    };
}
pub(crate) use c_enum_from_u32;

/// Why a call failed: the status and the message kept for `dpir_last_error_message`.
#[derive(Debug)]
pub(crate) struct Failure {
    status: dpir_status,
    message: String,
}

/// The result of an exported function's body.
pub(crate) type Outcome<T = ()> = Result<T, Failure>;

impl Failure {
    pub(crate) fn new(status: dpir_status, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }

    pub(crate) fn argument(message: impl Into<String>) -> Failure {
        Failure::new(dpir_status::InvalidArgument, message)
    }

    pub(crate) fn image(message: impl Into<String>) -> Failure {
        Failure::new(dpir_status::InvalidImage, message)
    }

    pub(crate) fn options(message: impl Into<String>) -> Failure {
        Failure::new(dpir_status::InvalidOptions, message)
    }

    /// A Rust error with `context` (what the caller passed) in front of its message.
    pub(crate) fn about(context: &str) -> impl Fn(Error) -> Failure + '_ {
        move |error| Failure::new(status_of(error.kind()), format!("{context}: {error}"))
    }

    fn panic(payload: Box<dyn Any + Send>) -> Failure {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Failure::new(dpir_status::Internal, format!("internal error (a bug in dpir, please report it): {what}"))
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::new(status_of(error.kind()), error.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(message: Option<&str>) {
    let message = message.map(|m| CString::new(m.replace('\0', "\\0")).unwrap_or_default());
    // During thread teardown the slot may be gone; there is nobody left to read the message then.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = message);
}

/// Runs the body of an exported function that returns a status: clears the thread's message, catches panics,
/// and records the message of a failure.
pub(crate) fn call(body: impl FnOnce() -> Outcome) -> dpir_status {
    set_last_error(None);
    let outcome = panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(Failure::panic(payload)));
    match outcome {
        Ok(()) => dpir_status::Ok,
        Err(failure) => {
            set_last_error(Some(&failure.message));
            failure.status
        }
    }
}

/// Runs the body of an exported function that returns no status (frees, queries): a panic returns `fallback`
/// and leaves its message for `dpir_last_error_message`.
pub(crate) fn call_quietly<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        set_last_error(Some(&Failure::panic(payload).message));
        fallback
    })
}

/// `ptr` as a reference, or `DPIR_STATUS_INVALID_ARGUMENT` naming `what`.
///
/// # Safety
/// A non-NULL `ptr` must point to a live `T` for `'a`.
pub(crate) unsafe fn non_null<'a, T>(ptr: *const T, what: &str) -> Outcome<&'a T> {
    // SAFETY: the caller's contract; NULL is handled.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::argument(format!("{what} is NULL")))
}

/// Stores `value` through an out-pointer, or fails naming `what` when it is NULL.
///
/// # Safety
/// A non-NULL `ptr` must be valid for writing a `T`.
pub(crate) unsafe fn put<T>(ptr: *mut T, value: T, what: &str) -> Outcome {
    if ptr.is_null() {
        return Err(Failure::argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and, by the caller's contract, writable; `write` does not read the old value.
    unsafe { ptr.write(value) };
    Ok(())
}

/// A C string of `text` (UTF-8 or a path's bytes), without the NULs C cannot carry.
pub(crate) fn c_string(text: impl Into<Vec<u8>>) -> CString {
    let mut bytes = text.into();
    bytes.retain(|&b| b != 0);
    CString::new(bytes).unwrap_or_default()
}

/// A NUL-terminated path from C: any bytes but NUL on Unix, as Linux allows; UTF-8 on Windows, whose file names
/// are UTF-16 (Rust's file functions convert, so a folder named in any script works).
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn path<'a>(ptr: *const c_char, what: &str) -> Outcome<&'a Path> {
    if ptr.is_null() {
        return Err(Failure::argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    #[cfg(unix)]
    let path = Ok(Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes)));
    #[cfg(not(unix))]
    let path = std::str::from_utf8(bytes).map(Path::new).map_err(|e| {
        let at = e.valid_up_to();
        Failure::argument(format!(
            "{what} is not UTF-8 (invalid at byte {at}): on Windows dpir takes paths as UTF-8 (WideCharToMultiByte \
             with CP_UTF8 converts a wide path)"
        ))
    });
    path
}

/// A path as C is given it: its bytes on Unix, UTF-8 on Windows (a name that is not valid UTF-16, which Windows
/// tolerates, has its stray halves replaced).
pub(crate) fn path_bytes(path: &Path) -> Vec<u8> {
    #[cfg(unix)]
    let bytes = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    bytes
}

/// A struct the caller allocates and the library reads or fills: it begins with `size_t size` (the caller's
/// `sizeof`) and only grows by appending fields, so programs built against an older dpir.h keep working.
///
/// `_init` (and the functions that fill output structs) write the defaults of every field within the caller's
/// size, padding included, so a field later appended into what was padding still reads as its default.
/// Appending a field: add the old `size_of::<Self>()` (as a number, when it changes) to `SIZES`.
pub(crate) trait Versioned: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    /// `sizeof` of every version of the struct this library accepts, oldest first.
    const SIZES: &'static [usize];
    /// What `_init` writes, and what fields past an older caller's size take.
    fn defaults() -> Self;
}

fn check_size<T: Versioned>(size: usize, what: &str) -> Outcome {
    if T::SIZES.contains(&size) {
        return Ok(());
    }
    Err(Failure::argument(format!(
        "{what}: size is {size}, but this library knows {} only of size {:?}; set it with the `_init` function \
         and sizeof (a larger size means the program was built against a newer dpir.h)",
        T::NAME,
        T::SIZES
    )))
}

/// Writes `T`'s defaults into a caller's struct of `size` bytes and sets its `size` field.
///
/// # Safety
/// A non-NULL `ptr` must be valid for writing `size` bytes.
pub(crate) unsafe fn init_struct<T: Versioned>(ptr: *mut T, size: usize) -> Outcome {
    // SAFETY: forwarded from the caller.
    unsafe { write_struct(ptr, size, T::defaults(), &format!("the {} to initialise", T::NAME)) }
}

/// Copies a caller's struct: its first `size` bytes as they are, later fields from the defaults.
///
/// # Safety
/// A non-NULL `ptr` must point to a struct that begins with a `size_t` giving its readable size.
pub(crate) unsafe fn read_struct<T: Versioned>(ptr: *const T, what: &str) -> Outcome<T> {
    if ptr.is_null() {
        return Err(Failure::argument(format!("{what} is NULL")));
    }
    // SAFETY: the struct begins with its size.
    let size = unsafe { ptr.cast::<usize>().read_unaligned() };
    check_size::<T>(size, what)?;
    let mut value = T::defaults();
    // SAFETY: `size <= size_of::<T>()`, the caller's struct has `size` readable bytes, and every field type of a
    // `Versioned` struct accepts any bit pattern.
    unsafe { std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&mut value as *mut T).cast::<u8>(), size) };
    Ok(value)
}

/// Fills a caller's output struct of `size` bytes (the caller's `sizeof`) and sets its `size` field.
///
/// # Safety
/// A non-NULL `ptr` must be valid for writing `size` bytes.
pub(crate) unsafe fn write_struct<T: Versioned>(ptr: *mut T, size: usize, value: T, what: &str) -> Outcome {
    if ptr.is_null() {
        return Err(Failure::argument(format!("{what} is NULL")));
    }
    check_size::<T>(size, what)?;
    // SAFETY: `size <= size_of::<T>()` bytes of `value`, into the caller's `size` writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), ptr.cast::<u8>(), size);
        ptr.cast::<usize>().write_unaligned(size);
    }
    Ok(())
}

/// The library's version, `"MAJOR.MINOR.PATCH"`, as a static string.
///
/// Compare with `DPIR_VERSION_MAJOR` and friends to see which dpir.h a program was built with. Thread-safe.
#[no_mangle]
pub extern "C" fn dpir_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(version) => version,
        Err(_) => panic!("the crate version has no NUL"),
    };
    VERSION.as_ptr()
}

/// The library's ABI version (`DPIR_ABI_VERSION` of the dpir.h it was built with). Thread-safe.
///
/// A program can refuse to run when `dpir_abi_version() != DPIR_ABI_VERSION`; the dynamic loader already refuses
/// a library whose SONAME carries another ABI version.
#[no_mangle]
pub extern "C" fn dpir_abi_version() -> u32 {
    DPIR_ABI_VERSION
}

/// A fixed English text for a status, e.g. "invalid image"; "unknown status" for a value this library does not
/// know. Static storage: never free it. Thread-safe.
#[no_mangle]
pub extern "C" fn dpir_status_string(status: i32) -> *const c_char {
    call_quietly(c"internal error".as_ptr(), || match dpir_status::try_from(status) {
        Ok(status) => status.text().as_ptr(),
        Err(_) => c"unknown status".as_ptr(),
    })
}

/// The model bundle folder to use when none is named: `$DPIR_MODEL` when set, else `$XDG_DATA_HOME/dpir/model`
/// (by default `~/.local/share/dpir/model`; on Windows `%LOCALAPPDATA%\dpir\model`) when that folder exists.
/// Host plug-ins call this so that every dpir program finds the same model.
///
/// Returns the path's length in bytes (without the NUL), 0 when there is none. The path is written, NUL-terminated,
/// into `path` only when it fits (`capacity` > length); otherwise `path` gets "" (when `capacity` > 0) and the
/// caller can retry with length + 1 bytes. Thread-safe.
///
/// # Safety
/// `path` must be NULL or point to `capacity` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dpir_default_model_dir(path: *mut c_char, capacity: usize) -> usize {
    call_quietly(0, || {
        let found = crate::default_model_dir().map(|dir| path_bytes(&dir)).unwrap_or_default();
        if !path.is_null() && capacity > 0 {
            let written = if found.len() < capacity { found.len() } else { 0 };
            // SAFETY: the caller provides `capacity` writable bytes at `path`; at most written + 1 <= capacity.
            unsafe {
                std::ptr::copy_nonoverlapping(found.as_ptr().cast::<c_char>(), path, written);
                path.add(written).write(0);
            }
        }
        found.len()
    })
}

/// The detailed message of the last failed dpir call on the calling thread, e.g. "source: invalid image: row
/// stride 11 is smaller than a row of 12 bytes"; "" when the last call succeeded.
///
/// Every dpir function that returns a status clears it on entry and sets it on failure. Messages are per thread:
/// calls on other threads never change it. The string belongs to dpir: never free it; it stays valid until the
/// next dpir call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn dpir_last_error_message() -> *const c_char {
    call_quietly(c"".as_ptr(), || {
        LAST_ERROR
            .try_with(|slot| slot.borrow().as_ref().map_or(c"".as_ptr(), |message| message.as_ptr()))
            .unwrap_or(c"".as_ptr())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: dpir_last_error_message never returns NULL and the string lives until the next call.
        unsafe { CStr::from_ptr(dpir_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn versions_match_the_crate() {
        assert_eq!(DPIR_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
        assert_eq!(DPIR_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
        assert_eq!(DPIR_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
        // SAFETY: a static NUL-terminated string.
        assert_eq!(unsafe { CStr::from_ptr(dpir_version()) }.to_str().unwrap(), crate::VERSION);
        assert_eq!(dpir_abi_version(), DPIR_ABI_VERSION);
    }

    #[test]
    fn every_status_has_a_number_and_a_text() {
        for (number, status) in dpir_status::ALL.into_iter().enumerate() {
            assert_eq!(status as i32, number as i32, "statuses are numbered in order, without gaps");
            assert_eq!(dpir_status::try_from(number as i32), Ok(status));
            // SAFETY: static strings.
            let text = unsafe { CStr::from_ptr(dpir_status_string(status as i32)) };
            assert!(!text.to_bytes().is_empty());
        }
        // SAFETY: a static string.
        assert_eq!(unsafe { CStr::from_ptr(dpir_status_string(99)) }, c"unknown status");
    }

    #[test]
    fn a_panic_becomes_the_internal_status_with_its_message() {
        let status = call(|| panic!("boom at the boundary"));
        assert_eq!(status, dpir_status::Internal);
        assert!(last_error().contains("boom at the boundary"), "{}", last_error());
        assert_eq!(call_quietly(7, || panic!("quiet boom")), 7);
        assert!(last_error().contains("quiet boom"));
        assert_eq!(call(|| Ok(())), dpir_status::Ok);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn messages_are_kept_per_thread() {
        assert_eq!(call(|| Err(Failure::options("main thread"))), dpir_status::InvalidOptions);
        std::thread::spawn(|| {
            assert_eq!(last_error(), "");
            assert_eq!(call(|| Err(Failure::image("other thread"))), dpir_status::InvalidImage);
            assert_eq!(last_error(), "other thread");
        })
        .join()
        .unwrap();
        assert_eq!(last_error(), "main thread");
        let nul = call(|| Err(Failure::image("a\0b")));
        assert_eq!(nul, dpir_status::InvalidImage);
        assert_eq!(last_error(), "a\\0b");
    }
}
