//! Which of a model's graphs are loaded. Without a memory budget, all of them, for the model's life. Within a
//! budget, a restore enters its stages in turn (the prompts, then sampling), and each stage loads the graphs it
//! needs, releasing the others first only when keeping them would not fit: a batch of frames whose stages fit
//! together loads every graph once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;
use crate::runtime::{Graph, GraphHints, Runtime, TensorInfo};

/// Graphs that are loaded and released together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// The VAE's encoder and decoder: small, and needed by both stages.
    Vae,
    /// The CLIP towers and the text encoder: the prompt stage's.
    Encoders,
    /// The sampling stage's.
    Transformer,
}

/// The stages of a restore, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The global and local prompts (CLIP, the text encoder, and the VAE for an initial restoration).
    Prompt,
    /// Encoding, denoising and decoding the tiles.
    Sample,
}

impl Phase {
    fn needs(self, group: Group) -> bool {
        match self {
            Phase::Prompt => group != Group::Transformer,
            Phase::Sample => group != Group::Encoders,
        }
    }
}

/// One graph file, loaded or not.
pub(crate) struct Slot {
    pub name: &'static str,
    file: PathBuf,
    hints: GraphHints,
    pub group: Group,
    /// Bytes of its weights on disk (graph and external data).
    pub weights: u64,
    /// Declared inputs and outputs, from the first load.
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    graph: Mutex<Option<Arc<Graph>>>,
    loads: AtomicU64,
    /// Runs of the sessions released so far.
    released_runs: AtomicU64,
}

impl Slot {
    /// A slot holding `graph`, just loaded from `file`.
    pub(crate) fn new(name: &'static str, group: Group, hints: GraphHints, graph: Graph) -> Slot {
        let file = graph.file().to_path_buf();
        Slot {
            name,
            weights: weights_on_disk(&file),
            file,
            hints,
            group,
            inputs: graph.inputs().to_vec(),
            outputs: graph.outputs().to_vec(),
            graph: Mutex::new(Some(Arc::new(graph))),
            loads: AtomicU64::new(1),
            released_runs: AtomicU64::new(0),
        }
    }

    fn is_loaded(&self) -> bool {
        self.graph.lock().is_some()
    }

    /// The graph, loaded again if it was released. A run holds its own reference, so a release while another
    /// thread runs the graph frees it when that run ends.
    fn get(&self, runtime: &Runtime) -> Result<Arc<Graph>> {
        let mut graph = self.graph.lock();
        if let Some(graph) = graph.as_ref() {
            return Ok(graph.clone());
        }
        let loaded = Arc::new(runtime.load(&self.file, &self.hints)?);
        self.loads.fetch_add(1, Ordering::Relaxed);
        *graph = Some(loaded.clone());
        Ok(loaded)
    }

    fn release(&self) {
        if let Some(graph) = self.graph.lock().take() {
            self.released_runs.fetch_add(graph.runs(), Ordering::Relaxed);
        }
    }

    /// Runs of this graph since the model was loaded, across releases.
    pub(crate) fn runs(&self) -> u64 {
        let current = self.graph.lock().as_ref().map_or(0, |g| g.runs());
        self.released_runs.load(Ordering::Relaxed) + current
    }

    /// Times the graph was loaded.
    pub(crate) fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

/// A model's graphs and its budget.
pub(crate) struct Residency {
    slots: Vec<Slot>,
    budget: Option<u64>,
}

impl Residency {
    pub(crate) fn new(budget: Option<u64>) -> Residency {
        Residency { slots: Vec::new(), budget }
    }

    pub(crate) fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// Adds a just loaded graph. Within a budget, a graph whose weights do not fit beside those already loaded is
    /// released again at once: it was loaded to check it, and the stage that needs it loads it.
    pub(crate) fn add(&mut self, slot: Slot) -> usize {
        let over = self.budget.is_some_and(|budget| self.loaded_weights() + slot.weights > budget);
        if over {
            slot.release();
        }
        self.slots.push(slot);
        self.slots.len() - 1
    }

    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The graph in slot `index`, loaded if it was released.
    pub(crate) fn graph(&self, index: usize, runtime: &Runtime) -> Result<Arc<Graph>> {
        self.slots[index].get(runtime)
    }

    /// Bytes of the weights of `group`'s graphs.
    pub(crate) fn weights(&self, group: Group) -> u64 {
        self.slots.iter().filter(|s| s.group == group).map(|s| s.weights).sum()
    }

    fn loaded_weights(&self) -> u64 {
        self.slots.iter().filter(|s| s.is_loaded()).map(|s| s.weights).sum()
    }

    /// Makes room for `phase`, which will need `working` bytes beside the weights (its activations, dpir's
    /// buffers and the runtime's own): without a budget, nothing changes; within one, the graphs the phase does
    /// not need are released when keeping them beside the phase's own would exceed it. The phase's graphs load
    /// when first run (a text encoder no restore asks for stays unloaded).
    pub(crate) fn enter(&self, phase: Phase, working: u64) {
        let Some(budget) = self.budget else { return };
        let needed: u64 = self.slots.iter().filter(|s| phase.needs(s.group)).map(|s| s.weights).sum();
        let kept: u64 = self.slots.iter().filter(|s| !phase.needs(s.group) && s.is_loaded()).map(|s| s.weights).sum();
        if needed + kept + working > budget {
            self.slots.iter().filter(|s| !phase.needs(s.group)).for_each(Slot::release);
        }
    }
}

/// Bytes of a graph file and of its external data (`NAME.data`, where the converter puts weights over 2 GB).
fn weights_on_disk(file: &Path) -> u64 {
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let mut data = file.as_os_str().to_owned();
    data.push(".data");
    size(file) + size(Path::new(&data))
}
