//! `dpir`: restore images with a DPIR model bundle, inspect bundles, measure the runtime.

mod batch;

use std::io::IsTerminal;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use batch::{Job, Work};
use clap::{Parser, Subcommand, ValueEnum};
use dpir::imagefile::{self, RestoredFile};
use dpir::{
    CancelToken, ClipInput, ColorFix, ExecutionProvider, Image, Progress, RestoreOptions, Restorer, RuntimeOptions,
    Stage, TileMode,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::Array3;
use signal_hook::consts::{SIGINT, SIGTERM};

#[derive(Parser)]
#[command(name = "dpir", version, about = "Diffusion-based image restoration (DPIR) on ONNX Runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a model is found when none is named (see [`dpir::default_model_dir`]).
#[cfg(not(windows))]
macro_rules! default_place {
    () => {
        "~/.local/share/dpir/model"
    };
}
#[cfg(windows)]
macro_rules! default_place {
    () => {
        r"%LOCALAPPDATA%\dpir\model"
    };
}

const MODEL_HELP: &str =
    concat!("Model bundle directory. Default: $DPIR_MODEL, else ", default_place!(), ", else the oracle test bundle.");

#[derive(clap::Args)]
struct ModelArgs {
    #[arg(long, short, help = MODEL_HELP)]
    model: Option<PathBuf>,
    /// Execution provider: cpu, cuda[:N], tensorrt[:N] or auto.
    #[arg(long, default_value = "cpu", value_parser = parse_provider)]
    ep: ExecutionProvider,
    /// Threads per graph (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Path of the ONNX Runtime library, libonnxruntime.so or onnxruntime.dll (default: search; see README).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// On CUDA and TensorRT, the most GPU memory each graph's arena may take, in GiB (default: no limit).
    #[arg(long, value_parser = parse_gib)]
    gpu_memory_limit: Option<usize>,
    /// The most memory a restore may take, in GiB (default: no limit): resident memory on the CPU, device memory
    /// on CUDA and TensorRT. Within it dpir releases the graphs a stage does not need and picks the largest tile
    /// that fits, or says how much it would need.
    #[arg(long, value_parser = parse_gib)]
    max_memory: Option<usize>,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum Command {
    /// Restore an image (PNG, JPEG, TIFF; 8 or 16 bit) into OUT (.png, .jpg, .tif, or .npy for float32); every
    /// image of a folder IN into the folder OUT; or the frames of a sequence (in/f_%04d.png out/f_%04d.png
    /// --frames 1-100). Batches load the model once, skip outputs that exist and go on past a failed file.
    Restore {
        input: PathBuf,
        output: PathBuf,
        /// Frames of a sequence whose IN and OUT hold a frame number pattern (%d, %04d): FIRST-LAST or N.
        #[arg(long, value_parser = batch::parse_frames)]
        frames: Option<RangeInclusive<u64>>,
        /// Batches: replace outputs that exist (by default they are skipped, so a re-run resumes).
        #[arg(long)]
        overwrite: bool,
        /// Batches: stop at the first file that fails (by default the rest go on).
        #[arg(long)]
        fail_fast: bool,
        /// Sequences: add the frame number to the seed, so every frame gets fresh noise (by default the noise is
        /// locked to pixel position, the same in every frame, so a still shot does not flicker).
        #[arg(long)]
        seed_per_frame: bool,
        #[command(flatten)]
        model: ModelArgs,
        /// Output size / input size.
        #[arg(long, default_value_t = 1.0)]
        scale: f32,
        /// Size the output as the paper's test script does, instead of --scale: the long side 1024 pixels, each
        /// side a multiple of 8.
        #[arg(long, conflicts_with = "scale")]
        paper_size: bool,
        /// Denoising steps (default: the bundle's).
        #[arg(long)]
        steps: Option<usize>,
        /// Seed of the starting noise (default: the bundle's).
        #[arg(long)]
        seed: Option<u64>,
        /// Guidance scale; 1 turns guidance off (default: the bundle's).
        #[arg(long)]
        guidance: Option<f32>,
        /// Precomputed text prompt of the bundle, or "zeros" (default: the bundle's).
        #[arg(long)]
        prompt: Option<String>,
        /// A caption for the bundle's text encoder (t5.onnx), replacing --prompt.
        #[arg(long)]
        prompt_text: Option<String>,
        /// Which image CLIP sees (default: the bundle's).
        #[arg(long, value_enum)]
        clip_input: Option<ClipInputArg>,
        /// Colour fix (default: the bundle's).
        #[arg(long, value_enum)]
        color_fix: Option<ColorFixArg>,
        /// Draw the input latent from the encoder's posterior instead of taking its mean.
        #[arg(long)]
        sample_posterior: bool,
        /// Starting noise as a float32 .npy of shape (1, C, h, w), instead of the seeded draw.
        #[arg(long)]
        noise: Option<PathBuf>,
        /// Write the starting noise that was used to this .npy file.
        #[arg(long)]
        save_noise: Option<PathBuf>,
        /// How images larger than one tile are sampled.
        #[arg(long, value_enum, default_value = "independent")]
        tile_mode: TileModeArg,
        /// Tile side in latent samples (default: the bundle's, capped at one pass).
        #[arg(long)]
        tile_size: Option<usize>,
        /// Tile overlap in latent samples (default: the bundle's).
        #[arg(long)]
        tile_overlap: Option<usize>,
        /// Tiles per transformer call in joint mode.
        #[arg(long)]
        tile_batch: Option<usize>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// Load the model and say what restoring IN would take (output size, tiles, the tile size, estimated peak
        /// memory) without restoring or writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a bundle's manifest and graph signatures.
    Info {
        /// Model bundle directory (default as for restore).
        dir: Option<PathBuf>,
        #[arg(long)]
        ort_lib: Option<PathBuf>,
    },
    /// Time restores of synthetic images: end to end, inside ONNX Runtime, and the overhead between them.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Square image sizes to time.
        #[arg(long = "size", default_values_t = [512usize, 1024])]
        sizes: Vec<usize>,
        /// Denoising steps (default: the bundle's, 28 for the real model).
        #[arg(long)]
        steps: Option<usize>,
        /// Timed runs per size (after one warm-up).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also time a tiled render with tiles of this many latent samples, against the single pass.
        #[arg(long)]
        tile_size: Option<usize>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ClipInputArg {
    Lq,
    InitialRestoration,
}

#[derive(Clone, Copy, ValueEnum)]
enum TileModeArg {
    Independent,
    Joint,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorFixArg {
    Wavelet,
    None,
}

fn parse_provider(text: &str) -> Result<ExecutionProvider, String> {
    ExecutionProvider::parse(text)
        .ok_or_else(|| format!("unknown execution provider {text:?}; use cpu, cuda[:N], tensorrt[:N] or auto"))
}

fn parse_gib(text: &str) -> Result<usize, String> {
    match text.parse::<f64>() {
        Ok(gib) if gib.is_finite() && gib > 0.0 && gib < 1e6 => Ok((gib * (1u64 << 30) as f64) as usize),
        _ => Err(format!("expected a positive number of GiB, got {text:?}")),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<Interrupted>() {
            // As shells expect of a process a signal stopped: 128 + the signal's number.
            Some(Interrupted(signal)) => {
                eprintln!("{error}");
                ExitCode::from(128 + *signal as u8)
            }
            None => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A restore stopped by SIGINT, SIGTERM or SIGHUP.
#[derive(Debug)]
struct Interrupted(i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by signal {}: the image being restored was not written", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The signals that stop a restore: Ctrl-C, a polite kill, and the terminal closing (Windows has no SIGHUP).
#[cfg(unix)]
const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, signal_hook::consts::SIGHUP];
#[cfg(not(unix))]
const STOP_SIGNALS: [i32; 2] = [SIGINT, SIGTERM];

/// SIGINT, SIGTERM and SIGHUP stop a restore at its next model call, so that the output (and its temporary file)
/// is never half written and an existing one stays as it was; a second signal ends the process at once.
struct Interrupt {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Interrupt {
    fn install() -> std::io::Result<Interrupt> {
        let (flag, signal) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        for number in STOP_SIGNALS {
            // First the default action for a signal that finds the flag already set, then the flag.
            signal_hook::flag::register_conditional_default(number, flag.clone())?;
            signal_hook::flag::register_usize(number, signal.clone(), number as usize)?;
            signal_hook::flag::register(number, flag.clone())?;
        }
        Ok(Interrupt { flag, signal })
    }

    fn token(&self) -> CancelToken {
        CancelToken::from_flag(self.flag.clone())
    }

    /// The signal received, as an error to stop with.
    fn check(&self) -> Result<(), Interrupted> {
        match self.flag.load(Ordering::SeqCst) {
            true => Err(Interrupted(self.signal.load(Ordering::SeqCst) as i32)),
            false => Ok(()),
        }
    }
}

/// The bundle to use: the argument, else [`dpir::default_model_dir`] ($DPIR_MODEL, the per-user place), else
/// the oracle test bundle (said out loud).
fn bundle_dir(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(dir) = explicit.or_else(dpir::default_model_dir) {
        return Ok(dir);
    }
    let Some(oracle) = checkout().map(|root| root.join("tests/fixtures/bundles/oracle")) else {
        return Err(concat!("no model: pass --model DIR, set DPIR_MODEL, or put a bundle in ", default_place!()).into());
    };
    eprintln!(
        "note: no --model given, using the oracle bundle ({}). It is a pass-through test bundle: the result equals \
         the (upsampled) input. Convert the real DPIR weights with tools/export (see README) and pass --model DIR.",
        oracle.display()
    );
    Ok(oracle)
}

/// The source checkout this executable runs from, `CHECKOUT/target/PROFILE/dpir` (a `Cargo.toml` two folders up),
/// found from where it runs rather than where it was built. The CLI's development conveniences need one: the
/// oracle bundle as the default model, and the ONNX Runtime that `tools/setup.sh` fetched. An installed `dpir` has
/// none, and the library never looks.
fn checkout() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?; // the real file: /proc/self/exe has its links resolved
    let root = exe.parent()?.parent()?.parent()?;
    root.join("Cargo.toml").is_file().then(|| root.to_path_buf())
}

/// The ONNX Runtime to load: `--ort-lib`, else, from a source checkout, the copy that `tools/setup.sh` fetched
/// when nothing takes precedence in libdpir's order (no `DPIR_ORT_LIB` or `ORT_DYLIB_PATH`, no library beside
/// the executable; it comes before Python packages), else `None`: libdpir's own lookup (README, "ONNX Runtime").
fn onnxruntime_library(explicit: Option<PathBuf>) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    if ["DPIR_ORT_LIB", "ORT_DYLIB_PATH"].iter().any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty())) {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    if dpir::ONNXRUNTIME_LIBRARY_NAMES.iter().any(|name| exe.with_file_name(name).is_file()) {
        return None;
    }
    let library = checkout()?.join("build/onnxruntime/lib/libonnxruntime.so");
    library.is_file().then_some(library)
}

fn load(args: ModelArgs) -> Result<Restorer, Box<dyn std::error::Error>> {
    let dir = bundle_dir(args.model)?;
    let mut options = RuntimeOptions::new().execution_provider(args.ep).threads(args.threads);
    options.onnxruntime_library = onnxruntime_library(args.ort_lib);
    options.gpu_memory_limit = args.gpu_memory_limit;
    options.memory_budget = args.max_memory.map(|bytes| bytes as u64);
    Ok(Restorer::load(dir, &options)?)
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Restore {
            input,
            output,
            frames,
            overwrite,
            fail_fast,
            seed_per_frame,
            model,
            scale,
            paper_size,
            steps,
            seed,
            guidance,
            prompt,
            prompt_text,
            clip_input,
            color_fix,
            sample_posterior,
            noise,
            save_noise,
            tile_mode,
            tile_size,
            tile_overlap,
            tile_batch,
            quiet,
            dry_run,
        } => {
            let work = batch::plan(&input, &output, frames)?;
            if matches!(work, Work::Batch(_)) && (noise.is_some() || save_noise.is_some()) {
                return Err("--noise and --save-noise take one image, not a batch".into());
            }
            let interrupt = Interrupt::install()?;
            let auto = model.ep == ExecutionProvider::Auto;
            let started = Instant::now();
            let restorer = load(model)?;
            if !quiet {
                let chosen = if auto { " (chosen by auto)" } else { "" };
                eprintln!(
                    "loaded {} in {:.2} s on {}{chosen}",
                    restorer.bundle_dir().display(),
                    started.elapsed().as_secs_f64(),
                    restorer.execution_provider()
                );
            }
            let noise = noise.map(|path| imagefile::read_noise(&path)).transpose()?;
            let mut options =
                RestoreOptions::new().scale(scale).paper_size(paper_size).sample_posterior(sample_posterior);
            options.tile_mode = match tile_mode {
                TileModeArg::Independent => TileMode::Independent,
                TileModeArg::Joint => TileMode::Joint,
            };
            options.clip_input = clip_input.map(|c| match c {
                ClipInputArg::Lq => ClipInput::Lq,
                ClipInputArg::InitialRestoration => ClipInput::InitialRestoration,
            });
            options.color_fix = color_fix.map(|c| match c {
                ColorFixArg::Wavelet => ColorFix::Wavelet,
                ColorFixArg::None => ColorFix::None,
            });
            (options.steps, options.seed, options.guidance) = (steps, seed, guidance);
            (options.prompt, options.prompt_text, options.noise) = (prompt, prompt_text, noise);
            (options.tile_size, options.tile_overlap, options.tile_batch) = (tile_size, tile_overlap, tile_batch);
            options.cancel = Some(interrupt.token());
            match work {
                Work::Single(job) if dry_run => dry_run_report(&restorer, &job.input, &options),
                Work::Batch(_) if dry_run => Err("--dry-run takes one image, not a batch".into()),
                Work::Single(job) => restore_single(&restorer, &job, options, save_noise, quiet, &interrupt),
                Work::Batch(jobs) => {
                    let flags = BatchFlags { overwrite, fail_fast, seed_per_frame, quiet };
                    restore_batch(&restorer, &jobs, &options, flags, &interrupt)
                }
            }
        }
        Command::Info { dir, ort_lib } => {
            let dir = bundle_dir(dir)?;
            let mut options = RuntimeOptions::new();
            options.onnxruntime_library = onnxruntime_library(ort_lib);
            let restorer = Restorer::load(&dir, &options)?;
            println!("bundle: {}", dir.display());
            println!("onnxruntime: {}", restorer.onnxruntime_library().display());
            println!("manifest:\n{}", serde_json::to_string_pretty(restorer.manifest())?);
            for (file, inputs, outputs) in restorer.signatures() {
                println!("{file}");
                for (arrow, tensors) in [("in ", inputs), ("out", outputs)] {
                    for t in tensors {
                        let dims: Vec<String> =
                            t.shape.iter().map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string())).collect();
                        println!("  {arrow} {} {} [{}]", t.name, t.element, dims.join(", "));
                    }
                }
            }
            Ok(())
        }
        Command::Bench { model, sizes, steps, runs, tile_size } => {
            let started = Instant::now();
            let restorer = load(model)?;
            println!("loaded in {:.2} s", started.elapsed().as_secs_f64());
            let steps = steps.unwrap_or(restorer.manifest().scheduler.steps);
            println!(
                "bundle {} on {}, {steps} steps, best of {runs} runs",
                restorer.bundle_dir().display(),
                restorer.execution_provider()
            );
            println!(
                "{:>6} {:>8} {:>6} {:>9} {:>9} {:>12} {:>9} {:>14} {:>6} {:>10}",
                "size",
                "tiling",
                "tiles",
                "first s",
                "total s",
                "in-session s",
                "overhead",
                "non-model MB/s",
                "calls",
                "ms/step"
            );
            for size in sizes {
                let image = synthetic(size);
                let single = RestoreOptions::new().steps(steps);
                let tiled = tile_size.map(|tile| single.clone().tile_size(tile));
                for (name, options) in [("single", Some(single)), ("tiled", tiled)] {
                    let Some(options) = options else { continue };
                    // The first run after loading pays for kernel selection and memory growth: shown apart.
                    let first = restorer.restore_detailed(&image, &options)?.stats.total.as_secs_f64();
                    let mut best: Option<dpir::Stats> = None;
                    for _ in 0..runs.max(1) {
                        let stats = restorer.restore_detailed(&image, &options)?.stats;
                        if best.is_none_or(|b| stats.total < b.total) {
                            best = Some(stats);
                        }
                    }
                    let s = best.expect("at least one run");
                    let (total, inside) = (s.total.as_secs_f64(), s.in_session.as_secs_f64());
                    // Megabytes of float RGB output per second of work outside the model.
                    let throughput = (size * size * 3 * 4) as f64 / 1e6 / (total - inside);
                    // Milliseconds per transformer run: one denoising step of one tile batch.
                    let per_step = s.in_transformer.as_secs_f64() * 1e3 / s.transformer_runs.max(1) as f64;
                    println!(
                        "{size:>6} {name:>8} {:>6} {first:>9.3} {total:>9.3} {inside:>12.3} {:>8.2}% {throughput:>14.0} {:>6} \
                         {per_step:>10.1}",
                        s.tiles,
                        (total / inside - 1.0) * 100.0,
                        s.model_calls
                    );
                }
            }
            Ok(())
        }
    }
}

/// Reads `input` and restores it into the layout `output`'s format stores. A signal during the restore is an
/// [`Interrupted`] error.
fn restore_file(
    restorer: &Restorer,
    input: &Path,
    output: &Path,
    options: &RestoreOptions,
    interrupt: &Interrupt,
) -> Result<RestoredFile, Box<dyn std::error::Error>> {
    let restored = imagefile::restore(restorer, input, output, options);
    interrupt.check()?;
    Ok(restored?)
}

/// One file into another, replacing it, with the starting noise saved on request.
/// What restoring `input` would take, on stdout.
fn dry_run_report(
    restorer: &Restorer,
    input: &Path,
    options: &RestoreOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let (layout, _) = imagefile::read(input)?;
    let (width, height) = (layout.width, layout.height);
    let needs = restorer.requirements(width, height, options)?;
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    println!("input: {width}x{height}");
    println!("output: {}x{}", needs.output_size.0, needs.output_size.1);
    println!("tiles: {} (tile size {} pixels)", needs.tiles, needs.tile_size);
    println!(
        "estimated peak memory: {:.2} GiB ({:.2} GiB of weights{})",
        gib(needs.estimated_bytes),
        gib(needs.weights_bytes),
        if needs.releases_graphs { "; the encoders and the transformer take turns" } else { "" }
    );
    Ok(())
}

fn restore_single(
    restorer: &Restorer,
    job: &Job,
    mut options: RestoreOptions,
    save_noise: Option<PathBuf>,
    quiet: bool,
    interrupt: &Interrupt,
) -> Result<(), Box<dyn std::error::Error>> {
    let bar = if quiet { ProgressBar::hidden() } else { file_bar() };
    options.progress = (!quiet).then(|| progress_bar(bar.clone()));
    let restored = restore_file(restorer, &job.input, &job.output, &options, interrupt);
    bar.finish_and_clear();
    let restored = restored?;
    if let Some(path) = save_noise {
        let (width, height) = restored.input_size;
        let noise = restorer.starting_noise(width, height, &options)?;
        let mut bytes = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&noise, &mut bytes)?;
        imagefile::write_atomically(&path, &bytes)?;
    }
    interrupt.check()?; // a signal during the noise file: the output is not written
    restored.write(&job.output)?;
    if !quiet {
        let (stats, layout) = (&restored.stats, &restored.layout);
        eprintln!(
            "wrote {} ({}x{}) in {:.2} s ({:.2} s in {} model calls, {} tiles)",
            job.output.display(),
            layout.width,
            layout.height,
            stats.total.as_secs_f64(),
            stats.in_session.as_secs_f64(),
            stats.model_calls,
            stats.tiles
        );
    }
    Ok(())
}

/// How a batch treats existing outputs, failures, seeds and the terminal.
struct BatchFlags {
    overwrite: bool,
    fail_fast: bool,
    seed_per_frame: bool,
    quiet: bool,
}

/// Restores every job with one loaded model: an existing output is skipped unless overwriting, a failed file is
/// reported and the rest go on (unless failing fast), and a summary closes the batch. On a terminal a bar shows
/// the files and another the current one; elsewhere (logs, farms) each file gets one line. A signal stops the
/// batch before its next model call, keeping the files already written.
fn restore_batch(
    restorer: &Restorer,
    jobs: &[Job],
    options: &RestoreOptions,
    flags: BatchFlags,
    interrupt: &Interrupt,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let bars = MultiProgress::with_draw_target(match flags.quiet || !std::io::stderr().is_terminal() {
        true => ProgressDrawTarget::hidden(),
        false => ProgressDrawTarget::stderr(),
    });
    let files = bars.add(ProgressBar::new(jobs.len() as u64)).with_style(
        ProgressStyle::with_template("files {pos}/{len} [{bar:28}] {elapsed} elapsed, {eta} left")
            .expect("a valid template")
            .progress_chars("#>-"),
    );
    let current = bars.add(file_bar());
    // Lines go above the bars on a terminal, straight to stderr elsewhere; quiet keeps only failures.
    let say = |line: String, failure: bool| match (bars.is_hidden(), flags.quiet && !failure) {
        (_, true) => {}
        (true, false) => eprintln!("{line}"),
        (false, false) => bars.println(line).unwrap_or(()),
    };
    let base_seed = options.seed.unwrap_or(restorer.manifest().defaults.seed);
    let (mut restored, mut skipped, mut failed) = (0, 0, 0);
    let mut stopped = None;
    for (index, job) in jobs.iter().enumerate() {
        if let Err(interrupted) = interrupt.check() {
            stopped = Some(interrupted.into());
            break;
        }
        let head = format!("[{}/{}] {}", index + 1, jobs.len(), job.input.display());
        if !flags.overwrite && job.output.exists() {
            skipped += 1;
            say(format!("{head}: skipped, {} exists (--overwrite replaces it)", job.output.display()), false);
            files.inc(1);
            continue;
        }
        let mut options = options.clone();
        if let (true, Some(frame)) = (flags.seed_per_frame, job.frame) {
            options.seed = Some(base_seed.wrapping_add(frame));
        }
        options.progress = Some(progress_bar(current.clone()));
        current.reset();
        let outcome = restore_file(restorer, &job.input, &job.output, &options, interrupt).and_then(|r| {
            if let Some(folder) = job.output.parent().filter(|f| !f.as_os_str().is_empty()) {
                std::fs::create_dir_all(folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
            }
            r.write(&job.output)?;
            Ok(r)
        });
        files.inc(1);
        match outcome {
            Ok(r) => {
                restored += 1;
                let (w, h, seconds) = (r.layout.width, r.layout.height, r.stats.total.as_secs_f64());
                say(format!("{head} -> {} ({w}x{h}) in {seconds:.2} s", job.output.display()), false);
            }
            Err(error) if error.is::<Interrupted>() => {
                stopped = Some(error);
                break;
            }
            Err(error) => {
                failed += 1;
                say(format!("{head}: failed: {error}"), true);
                if flags.fail_fast {
                    break;
                }
            }
        }
    }
    bars.clear().unwrap_or(());
    let left = jobs.len() - restored - skipped - failed;
    let not_done = if left > 0 { format!(", {left} not done") } else { String::new() };
    eprintln!(
        "restored {restored}, skipped {skipped}, failed {failed} of {} files{not_done} in {:.1} s",
        jobs.len(),
        started.elapsed().as_secs_f64()
    );
    match (stopped, failed) {
        (Some(interrupted), _) => Err(interrupted),
        (None, 0) => Ok(()),
        (None, failed) => Err(format!("{failed} of {} files failed", jobs.len()).into()),
    }
}

/// The bar of the file being restored: stage, step and tile, and the overall fraction.
fn file_bar() -> ProgressBar {
    ProgressBar::new(BAR_UNITS).with_style(
        ProgressStyle::with_template("{msg:<32} [{bar:28}] {percent:>3}% {elapsed}")
            .expect("a valid template")
            .progress_chars("#>-"),
    )
}

/// A smooth, detailed test picture for benchmarks.
fn synthetic(size: usize) -> Image {
    let rgb = Array3::from_shape_fn((3, size, size), |(c, y, x)| {
        let (u, v) = (x as f32 / size as f32, y as f32 / size as f32);
        let wave = ((u * 40.0 + c as f32).sin() * (v * 25.0).cos() + 1.0) / 4.0;
        (0.25 * (u + v) + wave).clamp(0.0, 1.0)
    });
    Image::from_planes(rgb, None).expect("valid planes")
}

/// Feeds a progress bar with the library's reports: the bar follows their overall fraction, the message says
/// which stage, step and tile run. indicatif draws it only when stderr is a terminal.
fn progress_bar(bar: ProgressBar) -> Arc<dpir::ProgressFn> {
    Arc::new(move |p: &Progress| {
        let stage = match p.stage {
            Stage::Encode => "encode",
            Stage::Prompt => "prompt",
            Stage::Sample => "sample",
            Stage::Decode => "decode",
            _ => "work",
        };
        bar.set_message(format!("{stage:<6} step {}/{} tile {}/{}", p.step, p.steps, p.tile, p.tiles));
        bar.set_position((p.fraction * BAR_UNITS as f32).round() as u64);
        true
    })
}

/// Positions of the progress bar: fine enough for a fraction.
const BAR_UNITS: u64 = 1000;
