//! What one `dpir restore` call restores: one file, every image of a folder, or the frames of a numbered
//! sequence (`frame_%04d.png` with `--frames 101-200`), each as a job with its input, output and frame number.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

/// One image to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub input: PathBuf,
    pub output: PathBuf,
    /// The frame number in a sequence.
    pub frame: Option<u64>,
}

/// What the command line asked to restore.
#[derive(Debug)]
pub enum Work {
    /// One file into another, replacing it as before.
    Single(Job),
    /// A folder or a sequence: existing outputs are skipped unless overwritten, failures do not stop the rest.
    Batch(Vec<Job>),
}

/// Image files a folder batch takes.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

/// The jobs of `input` to `output`: a sequence when `input` holds a frame-number pattern (`%d`, `%04d`), then
/// `frames` is required and `output` needs a pattern too; every image of a folder when `input` is a folder, into
/// the folder `output`; else one file.
pub fn plan(input: &Path, output: &Path, frames: Option<RangeInclusive<u64>>) -> Result<Work, String> {
    let text = |path: &Path| path.to_str().map(str::to_owned);
    if let Some(pattern) = text(input).and_then(|t| Pattern::parse(&t)) {
        let out = text(output).and_then(|t| Pattern::parse(&t)).ok_or_else(|| {
            format!("{} is a frame sequence: the output needs a frame number pattern too", input.display())
        })?;
        let frames = frames.ok_or("a frame sequence needs --frames FIRST-LAST")?;
        let jobs = frames.map(|n| Job { input: pattern.path(n), output: out.path(n), frame: Some(n) }).collect();
        return Ok(Work::Batch(jobs));
    }
    if frames.is_some() {
        return Err(format!("--frames needs a frame number pattern such as frame_%04d.png, not {}", input.display()));
    }
    if !input.is_dir() {
        return Ok(Work::Single(Job { input: input.to_path_buf(), output: output.to_path_buf(), frame: None }));
    }
    if output.exists() && !output.is_dir() {
        return Err(format!(
            "{} is a folder, so the output must be one: {} is a file",
            input.display(),
            output.display()
        ));
    }
    let entries = std::fs::read_dir(input).map_err(|e| format!("cannot list {}: {e}", input.display()))?;
    let mut names: Vec<_> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_file() && is_image(&entry.path()))
        .map(|entry| entry.file_name())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!("{} holds no image (.png, .jpg, .tif)", input.display()));
    }
    let jobs = names.into_iter().map(|name| Job { input: input.join(&name), output: output.join(&name), frame: None });
    Ok(Work::Batch(jobs.collect()))
}

fn is_image(path: &Path) -> bool {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    IMAGE_EXTENSIONS.contains(&extension.as_str())
}

/// Parses `--frames`: `FIRST-LAST` (inclusive) or one frame number.
pub fn parse_frames(text: &str) -> Result<RangeInclusive<u64>, String> {
    let number = |t: &str| t.trim().parse::<u64>().map_err(|_| format!("expected FIRST-LAST or N, got {text:?}"));
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (number(first)?, number(last)?),
        None => (number(text)?, number(text)?),
    };
    if first > last {
        return Err(format!("the first frame {first} comes after the last {last}"));
    }
    Ok(first..=last)
}

/// A path with one printf-style frame number: `%d`, or `%0Nd` for numbers zero-padded to N digits.
#[derive(Debug)]
struct Pattern {
    before: String,
    width: usize,
    after: String,
}

impl Pattern {
    fn parse(text: &str) -> Option<Pattern> {
        let start = text.find('%')?;
        let rest = &text[start + 1..];
        let digits = rest.find('d')?;
        let spec = &rest[..digits];
        if !(spec.is_empty() || (spec.starts_with('0') && spec.len() <= 3 && spec.parse::<u8>().is_ok())) {
            return None;
        }
        let width = spec.parse::<usize>().unwrap_or(0);
        Some(Pattern { before: text[..start].to_owned(), width, after: rest[digits + 1..].to_owned() })
    }

    fn path(&self, frame: u64) -> PathBuf {
        PathBuf::from(format!("{}{frame:0width$}{}", self.before, self.after, width = self.width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_number_frames() {
        let pattern = Pattern::parse("in/frame_%04d.png").unwrap();
        assert_eq!(pattern.path(7), PathBuf::from("in/frame_0007.png"));
        assert_eq!(pattern.path(123456), PathBuf::from("in/frame_123456.png"));
        assert_eq!(Pattern::parse("shot%d.tif").unwrap().path(42), PathBuf::from("shot42.tif"));
        assert!(Pattern::parse("in/100%.png").is_none());
        assert!(Pattern::parse("in/photo.png").is_none());
    }

    #[test]
    fn frame_ranges() {
        assert_eq!(parse_frames("101-200").unwrap(), 101..=200);
        assert_eq!(parse_frames("7").unwrap(), 7..=7);
        assert!(parse_frames("9-3").is_err());
        assert!(parse_frames("a-b").is_err());
    }

    #[test]
    fn sequences_need_frames_and_an_output_pattern() {
        let (input, output) = (Path::new("in/f_%03d.png"), Path::new("out/f_%03d.png"));
        let Ok(Work::Batch(jobs)) = plan(input, output, Some(9..=10)) else { panic!("a sequence") };
        assert_eq!(jobs[0], Job { input: "in/f_009.png".into(), output: "out/f_009.png".into(), frame: Some(9) });
        assert_eq!(jobs.len(), 2);
        assert!(plan(input, output, None).unwrap_err().contains("--frames"));
        assert!(plan(input, Path::new("out.png"), Some(1..=2)).unwrap_err().contains("pattern"));
        assert!(plan(Path::new("a.png"), output, Some(1..=2)).unwrap_err().contains("--frames needs"));
    }
}
