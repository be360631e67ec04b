//! Following a running restore: progress reports with an overall fraction, cancellation, and where the time went.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::runtime::SessionTimer;

/// What the restorer is doing, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Upsampling and encoding the input.
    Encode,
    /// Computing the CLIP prompts.
    Prompt,
    /// Denoising; `step` counts the steps done.
    Sample,
    /// Decoding the latent and fixing colour.
    Decode,
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// What is running.
    pub stage: Stage,
    /// Steps done so far in [`Stage::Sample`] (0 before, `steps` in [`Stage::Decode`]).
    pub step: usize,
    /// Steps of this restore.
    pub steps: usize,
    /// Tile being processed, from 1.
    pub tile: usize,
    /// Tiles of this restore.
    pub tiles: usize,
    /// How much of the whole call is done, 0 to 1, never decreasing within a call: what a progress bar shows.
    pub fraction: f32,
}

impl Progress {
    /// A report of tile `tile` (from 1) of `tiles`, each sampled on its own: the tiles share the bar equally, and
    /// sampling fills a tile's share.
    pub(crate) fn per_tile(stage: Stage, step: usize, steps: usize, tile: usize, tiles: usize) -> Progress {
        let within = match stage {
            Stage::Encode | Stage::Prompt => 0.0,
            Stage::Sample => step as f32 / steps.max(1) as f32,
            _ => 1.0,
        };
        let fraction = (tile.saturating_sub(1) as f32 + within) / tiles.max(1) as f32;
        Progress { stage, step, steps, tile, tiles, fraction: fraction.clamp(0.0, 1.0) }
    }

    /// A report of the prompt stage at tile `tile` (from 1) of `tiles`: it comes before any tile is sampled, so
    /// the bar has not moved yet.
    pub(crate) fn prompt(steps: usize, tile: usize, tiles: usize) -> Progress {
        Progress { stage: Stage::Prompt, step: 0, steps, tile, tiles, fraction: 0.0 }
    }

    /// A report of tiles sampled together, every step visiting each tile: sampling fills the bar step by step.
    pub(crate) fn joint(stage: Stage, step: usize, steps: usize, tile: usize, tiles: usize) -> Progress {
        let fraction = match stage {
            Stage::Encode | Stage::Prompt => 0.0,
            Stage::Sample => (step as f32 + tile.saturating_sub(1) as f32 / tiles.max(1) as f32) / steps.max(1) as f32,
            _ => 1.0,
        };
        Progress { stage, step, steps, tile, tiles, fraction: fraction.clamp(0.0, 1.0) }
    }
}

/// Whether `DPIR_TRACE` (set, not empty or 0) asks for a line on stderr at the costly steps whose count a host's
/// developer may want to check, such as a frame's global prompt.
pub(crate) fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("DPIR_TRACE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Called with each progress report; returning `false` cancels the restore.
pub type ProgressFn = dyn Fn(&Progress) -> bool + Send + Sync;

/// A flag another thread sets to cancel a restore; it takes effect before the next model call.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// A token that is cancelled when `flag` is set, by this token or by anything else holding the flag (a
    /// signal handler, for example).
    pub fn from_flag(flag: Arc<AtomicBool>) -> CancelToken {
        CancelToken(flag)
    }

    /// Requests cancellation. Safe from any thread, any number of times.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a caller follows and stops one call: progress reports, and cancellation from another thread.
#[derive(Clone, Default)]
pub struct Control {
    pub(crate) progress: Option<Arc<ProgressFn>>,
    pub(crate) cancel: Option<CancelToken>,
}

impl Control {
    /// Neither reports nor cancellation.
    pub fn new() -> Control {
        Control::default()
    }

    /// Reports progress to `callback`; its returning false cancels.
    pub fn with_progress(mut self, callback: Arc<ProgressFn>) -> Control {
        self.progress = Some(callback);
        self
    }

    /// Cancels when `token` is cancelled.
    pub fn with_cancel(mut self, token: CancelToken) -> Control {
        self.cancel = Some(token);
        self
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("progress", &self.progress.is_some()).field("cancel", &self.cancel).finish()
    }
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Wall time of the whole call.
    pub total: Duration,
    /// Time inside ONNX Runtime session runs.
    pub in_session: Duration,
    /// Graph runs made.
    pub model_calls: usize,
    /// Time inside transformer runs, the part that grows with the step count.
    pub in_transformer: Duration,
    /// Transformer runs made (one per step and tile batch; guidance doubles the batch, not the runs).
    pub transformer_runs: usize,
    /// Sampling tiles rendered.
    pub tiles: usize,
    /// The tile side (pixels) of a retry after ONNX Runtime ran out of memory with the planned one, if any.
    pub retried_with_tile: Option<usize>,
}

/// The state of one call: its control, and the counters behind its [`Stats`].
pub(crate) struct Call<'a> {
    control: &'a Control,
    started: Instant,
    timer: SessionTimer,
    calls: Cell<usize>,
    transformer: Cell<(Duration, usize)>,
    tiles: Cell<usize>,
    retried_with_tile: Cell<Option<usize>>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(control: &'a Control) -> Call<'a> {
        Call {
            control,
            started: Instant::now(),
            timer: SessionTimer::default(),
            calls: Default::default(),
            transformer: Default::default(),
            tiles: Default::default(),
            retried_with_tile: Default::default(),
        }
    }

    /// Reports progress; an error when the caller cancelled.
    pub(crate) fn report(&self, progress: Progress) -> Result<()> {
        if self.control.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        if let Some(callback) = &self.control.progress {
            if !callback(&progress) {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    }

    /// The timer of one more graph run.
    pub(crate) fn counted(&self) -> &SessionTimer {
        self.calls.set(self.calls.get() + 1);
        &self.timer
    }

    /// Time inside ONNX Runtime so far.
    pub(crate) fn in_session(&self) -> Duration {
        self.timer.total()
    }

    /// Records a transformer run that took `time` inside ONNX Runtime.
    pub(crate) fn transformer_ran(&self, time: Duration) {
        let (total, runs) = self.transformer.get();
        self.transformer.set((total + time, runs + 1));
    }

    pub(crate) fn tile_done(&self) {
        self.tiles.set(self.tiles.get() + 1);
    }

    pub(crate) fn retried_with_tile(&self, pixels: usize) {
        self.retried_with_tile.set(Some(pixels));
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            total: self.started.elapsed(),
            in_session: self.timer.total(),
            model_calls: self.calls.get(),
            in_transformer: self.transformer.get().0,
            transformer_runs: self.transformer.get().1,
            tiles: self.tiles.get(),
            retried_with_tile: self.retried_with_tile.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_rise_through_a_call() {
        let (steps, tiles) = (4, 3);
        let mut per_tile = Vec::new();
        let mut joint = Vec::new();
        for tile in 1..=tiles {
            per_tile.push(Progress::per_tile(Stage::Encode, 0, steps, tile, tiles).fraction);
            per_tile.extend((0..steps).map(|s| Progress::per_tile(Stage::Sample, s, steps, tile, tiles).fraction));
            per_tile.push(Progress::per_tile(Stage::Decode, steps, steps, tile, tiles).fraction);
            joint.push(Progress::joint(Stage::Encode, 0, steps, tile, tiles).fraction);
        }
        for step in 0..steps {
            joint.extend((1..=tiles).map(|t| Progress::joint(Stage::Sample, step, steps, t, tiles).fraction));
        }
        joint.extend((1..=tiles).map(|t| Progress::joint(Stage::Decode, steps, steps, t, tiles).fraction));
        for fractions in [&per_tile, &joint] {
            assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
            assert_eq!((fractions[0], *fractions.last().unwrap()), (0.0, 1.0));
        }
        assert_eq!(Progress::per_tile(Stage::Sample, 2, 4, 2, 2).fraction, 0.75);
    }
}
