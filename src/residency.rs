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

    /// Whether the loaded session has run, so that its arena holds memory.
    fn has_run(&self) -> bool {
        self.graph.lock().as_ref().is_some_and(|g| g.runs() > 0)
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

    /// Makes room for `phase`: without a budget, nothing changes; within one, the graphs the phase does not
    /// need are released when keeping them beside the phase's own would exceed it. A group takes its `weights`,
    /// and once its sessions have run what they `hold` (ONNX Runtime's arenas keep a session's largest run);
    /// `buffers` is what the restore takes besides. The phase's graphs load when first run (a text encoder no
    /// restore asks for stays unloaded).
    pub(crate) fn enter(
        &self,
        phase: Phase,
        weights: impl Fn(Group) -> u64,
        hold: impl Fn(Group) -> u64,
        buffers: u64,
    ) {
        let Some(budget) = self.budget else { return };
        let groups = [Group::Vae, Group::Encoders, Group::Transformer];
        let in_group = |group: Group| self.slots.iter().filter(move |s| s.group == group);
        let kept = |group: Group| {
            let held = if in_group(group).any(Slot::has_run) { hold(group) } else { 0 };
            if in_group(group).any(Slot::is_loaded) {
                weights(group) + held
            } else {
                0
            }
        };
        let needed: u64 = groups.iter().filter(|&&g| phase.needs(g)).map(|&g| weights(g) + hold(g)).sum();
        let others: u64 = groups.iter().filter(|&&g| !phase.needs(g)).map(|&g| kept(g)).sum();
        if needed + others + buffers > budget {
            self.slots.iter().filter(|s| !phase.needs(s.group)).for_each(Slot::release);
            give_back_freed_memory();
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

/// Hands the heap memory that released graphs freed back to the system. Most of a graph's weights are tensors
/// under glibc's mmap threshold, so freeing them leaves the pages in the heap: resident, and not reused by the
/// large activation buffers that follow (those are mapped apart). Measured: releasing the CLIP towers of the
/// full-size bundle lowered the peak by 0.95 GiB of their 1.46 without this.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
