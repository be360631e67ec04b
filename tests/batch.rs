//! `dpir restore` over folders and frame sequences: one model load, existing outputs skipped, failures reported
//! without stopping the rest, and frames that do not depend on the chunk they are restored in.

mod common;

use std::fs;
use std::path::Path;

use common::{bundle, cli, picture, run, signal_after, write_png};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Every image of a folder is restored into another, as the single-file command restores it; a file that fails
/// is reported and the rest go on; a re-run skips what exists, and `--overwrite` replaces it.
#[test]
fn a_folder_restores_each_image_and_goes_on_past_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    fs::create_dir(&input).unwrap();
    for (name, (h, w)) in [("a.png", (20, 28)), ("b.png", (17, 9)), ("c.png", (8, 8))] {
        write_png(&input.join(name), &picture(h, w));
    }
    fs::write(input.join("broken.png"), b"not a picture").unwrap();
    fs::write(input.join("notes.txt"), b"not an image file").unwrap();
    let restore = |extra: &[&str]| {
        let oracle = bundle("oracle");
        run(cli().arg("restore").arg(&input).arg(&output).args(["--steps", "2", "--model"]).arg(oracle).args(extra))
    };

    let first = restore(&[]);
    let log = stderr(&first);
    assert_eq!(first.status.code(), Some(1), "{log}");
    assert!(log.contains("[1/4]") && log.contains("broken.png: failed: "), "{log}");
    assert!(log.contains("restored 3, skipped 0, failed 1 of 4 files"), "{log}");
    let mut written: Vec<_> = fs::read_dir(&output).unwrap().map(|e| e.unwrap().file_name()).collect();
    written.sort();
    assert_eq!(written, ["a.png", "b.png", "c.png"]);
    for name in ["a.png", "b.png", "c.png"] {
        let single = dir.path().join(format!("single-{name}"));
        let out = run(cli().arg("restore").arg(input.join(name)).arg(&single).args(["--steps", "2", "--quiet"]));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(fs::read(&single).unwrap(), fs::read(output.join(name)).unwrap(), "{name}");
    }

    fs::remove_file(input.join("broken.png")).unwrap();
    let again = restore(&[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("restored 0, skipped 3, failed 0 of 3 files"), "{}", stderr(&again));
    let modified = fs::metadata(output.join("a.png")).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let replaced = restore(&["--overwrite", "--quiet"]);
    assert!(stderr(&replaced).contains("restored 3, skipped 0, failed 0"), "{}", stderr(&replaced));
    assert!(fs::metadata(output.join("a.png")).unwrap().modified().unwrap() > modified);
}

fn sequence(dir: &Path, frames: &str, extra: &[&str]) -> std::process::Output {
    let (input, output) = (dir.join("in/f_%03d.png"), dir.join("out/f_%03d.png"));
    let tiny = bundle("tiny");
    let mut command = cli();
    command.arg("restore").arg(input).arg(output).args(["--frames", frames, "--steps", "2", "--quiet", "--model"]);
    run(command.arg(tiny).args(extra))
}

/// Frames are independent: a range restored in two chunks equals the whole range, a missing frame fails alone,
/// and the noise is locked to position (the same in every frame) unless `--seed-per-frame` adds the frame number
/// to the seed, which equals restoring that frame alone with that seed.
#[test]
fn a_sequence_restores_the_same_frames_in_any_chunks() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("in")).unwrap();
    let still = picture(24, 32);
    for frame in [1, 2, 4] {
        write_png(&dir.path().join(format!("in/f_{frame:03}.png")), &still);
    }
    let frame = |n: u32| fs::read(dir.path().join(format!("out/f_{n:03}.png"))).unwrap();

    let whole = sequence(dir.path(), "1-4", &["--seed-per-frame"]);
    assert_eq!(whole.status.code(), Some(1), "{}", stderr(&whole));
    assert!(stderr(&whole).contains("f_003.png: failed"), "{}", stderr(&whole));
    assert!(stderr(&whole).contains("restored 3, skipped 0, failed 1 of 4 files"), "{}", stderr(&whole));
    let whole_frames = [frame(1), frame(2), frame(4)];
    assert_ne!(whole_frames[0], whole_frames[1], "each frame has its own seed");
    fs::remove_dir_all(dir.path().join("out")).unwrap();
    for chunk in ["1-2", "3-4"] {
        sequence(dir.path(), chunk, &["--seed-per-frame"]);
    }
    assert_eq!([frame(1), frame(2), frame(4)], whole_frames, "chunks give the same pixels as the whole range");

    // Frame 2 alone with seed 1234 (the tiny bundle's) + 2.
    let alone = dir.path().join("alone.png");
    let tiny = bundle("tiny");
    let out = run(cli()
        .arg("restore")
        .arg(dir.path().join("in/f_002.png"))
        .arg(&alone)
        .args(["--steps", "2", "--quiet", "--seed", "1236", "--model"])
        .arg(tiny));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&alone).unwrap(), whole_frames[1]);

    // Without --seed-per-frame a still shot restores identically in every frame.
    sequence(dir.path(), "1-2", &["--overwrite"]);
    assert_eq!(frame(1), frame(2));
}

/// A signal stops a batch at its next model call: the files already restored stay, the one being restored is not
/// written (nor any temporary file), the summary says what was not done, and the exit status is 128 + the signal.
#[test]
fn an_interrupted_batch_keeps_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    fs::create_dir(&input).unwrap();
    write_png(&input.join("a.png"), &picture(8, 8));
    write_png(&input.join("b.png"), &picture(256, 256)); // a thousand steps of this take many seconds
    let mut command = cli();
    command.arg("restore").arg(&input).arg(&output).args(["--steps", "1000", "--model"]).arg(bundle("tiny"));
    // "[1/2]" comes once the first file is written.
    let (exit, rest) = signal_after(&mut command, "[1/2]", libc::SIGINT);
    assert_eq!(exit, Some(130), "{rest}");
    assert!(rest.contains("restored 1, skipped 0, failed 0 of 2 files, 1 not done"), "{rest}");
    let written: Vec<_> = fs::read_dir(&output).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written, ["a.png"], "only the finished file, and no temporary one");
}

#[test]
fn batches_refuse_what_takes_one_image() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("in")).unwrap();
    let out = sequence(dir.path(), "1-2", &["--save-noise", "noise.npy"]);
    assert!(stderr(&out).contains("--noise and --save-noise take one image"), "{}", stderr(&out));
    let missing_frames = run(cli().arg("restore").arg("in/f_%03d.png").arg("out/f_%03d.png"));
    assert!(stderr(&missing_frames).contains("needs --frames"), "{}", stderr(&missing_frames));
    let no_pattern = run(cli().arg("restore").arg("in/f_%03d.png").arg("out.png").args(["--frames", "1-2"]));
    assert!(stderr(&no_pattern).contains("output needs a frame number pattern"), "{}", stderr(&no_pattern));
}
