//! Peak memory of a large restore grows with the caller's buffers, not with the image times steps or tiles:
//! restoring an 8192x8192 RGBA image with the oracle bundle stays under (input + output bytes) + 1 GiB.

mod common;

use std::path::Path;

use common::{bundle, cli, run};
use dpir::{PixelLayout, SampleType};

const SIDE: usize = 8192;

/// The largest resident set of any child this process waited for, in bytes.
fn children_peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

fn pattern(x: usize, y: usize, c: usize) -> u8 {
    if c == 3 {
        (128 + (x ^ y) % 128) as u8
    } else {
        ((x * (c + 1) + y * 3) / 32 % 256) as u8
    }
}

#[test]
fn an_8192_square_rgba_restore_stays_within_its_buffers_plus_one_gib() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("large.png"), dir.path().join("restored.png"));
    let layout = PixelLayout::packed(SIDE, SIDE, 4, SampleType::U8);
    let pixels: Vec<u8> = (0..SIDE * SIDE * 4).map(|i| pattern(i / 4 % SIDE, i / 4 / SIDE, i % 4)).collect();
    dpir::imagefile::write(&input, &layout, &pixels).unwrap();
    drop(pixels);

    let out = run(cli()
        .arg("restore")
        .arg(&input)
        .arg(&output)
        .args(["--quiet", "--steps", "2", "--model"])
        .arg(bundle("oracle")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let peak = children_peak_rss();
    let buffers = 2 * (SIDE * SIDE * 4) as u64;
    eprintln!(
        "peak RSS {:.0} MiB for {:.0} MiB of input and output buffers",
        peak as f64 / 1048576.0,
        buffers as f64 / 1048576.0
    );
    assert!(peak < buffers + (1 << 30), "peak RSS {peak} exceeds the buffers ({buffers}) + 1 GiB");

    // The oracle returns its input: spot-check rows across the frame, alpha included.
    let (restored_layout, restored) = dpir::imagefile::read(Path::new(&output)).unwrap();
    assert_eq!(restored_layout, layout);
    for y in [0, 1, 255, 256, 4095, 4096, 8000, SIDE - 1] {
        for x in (0..SIDE).step_by(97).chain([SIDE - 1]) {
            for c in 0..4 {
                let got = restored[(y * SIDE + x) * 4 + c] as i32;
                assert!((got - pattern(x, y, c) as i32).abs() <= 1, "({x}, {y}) channel {c}: {got}");
            }
        }
    }
}
