//! A look at a `.npy` file's header before it is read: the shape it declares must fit in the file, so that a
//! small file claiming a huge array is an error instead of an allocation the process cannot survive.

use std::io::Read;
use std::path::Path;

/// Checks that the array `path` declares fits in the file's bytes, and returns its shape; the error says why not.
pub(crate) fn checked_shape(path: &Path) -> Result<Vec<usize>, String> {
    let fail = |why: String| why;
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let length = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|_| fail("too short for a .npy file".into()))?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err(fail("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, header_start) = match prefix[6] {
        1 => {
            let mut len = [0u8; 2];
            file.read_exact(&mut len).map_err(|_| fail("truncated header".into()))?;
            (u16::from_le_bytes(len) as u64, 10)
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            file.read_exact(&mut len).map_err(|_| fail("truncated header".into()))?;
            (u32::from_le_bytes(len) as u64, 12)
        }
        version => return Err(fail(format!("unknown .npy version {version}"))),
    };
    if header_start + header_len > length || header_len > 1 << 16 {
        return Err(fail(format!("header of {header_len} bytes does not fit in the {length}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|_| fail("truncated header".into()))?;
    let header = String::from_utf8_lossy(&header);
    let element = descr_size(&header).ok_or_else(|| fail(format!("no element type in the header {header:?}")))?;
    let shape = shape(&header).ok_or_else(|| fail(format!("no shape in the header {header:?}")))?;
    let needed = shape.iter().try_fold(element, |n, &d| n.checked_mul(d as u64));
    let held = length - header_start - header_len;
    match needed {
        Some(needed) if needed <= held => Ok(shape),
        _ => Err(fail(format!("its header declares shape {shape:?}, more than the {held} bytes of data it holds"))),
    }
}

/// The element size of the header's `'descr': '<f4'`.
fn descr_size(header: &str) -> Option<u64> {
    let rest = &header[header.find("'descr'")? + 7..];
    let open = rest.find('\'')? + 1;
    let close = open + rest[open..].find('\'')?;
    let descr = &rest[open..close];
    descr.trim_start_matches(['<', '>', '|', '=']).get(1..)?.parse().ok()
}

/// The dimensions of the header's `'shape': (a, b, ...)`.
fn shape(header: &str) -> Option<Vec<usize>> {
    let rest = &header[header.find("'shape'")? + 7..];
    let open = rest.find('(')? + 1;
    let close = open + rest[open..].find(')')?;
    rest[open..close].split(',').map(str::trim).filter(|d| !d.is_empty()).map(|d| d.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: usize) -> tempfile::NamedTempFile {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0u8; data]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    #[test]
    fn a_declared_shape_must_fit_in_the_file() {
        let ok = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
        assert_eq!(checked_shape(ok.path()).unwrap(), vec![2, 3]);
        let bomb = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 3), }", 24);
        let error = checked_shape(bomb.path()).unwrap_err();
        assert!(error.contains("(100000, 100000, 3)") || error.contains("[100000, 100000, 3]"), "{error}");
        let overflow = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }", 24);
        assert!(checked_shape(overflow.path()).is_err());
        let scalar = npy("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", 8);
        assert_eq!(checked_shape(scalar.path()).unwrap(), Vec::<usize>::new());
    }
}
