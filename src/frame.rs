//! A frame being restored: what every region of it shares (settings, tile plan, global prompt, text block,
//! starting noise), computed once, so that a host rendering one frame as many tiles pays the global context once.

use std::sync::Arc;

use ndarray::Array4;

use crate::error::{Error, Result};
use crate::memory::Need;
use crate::model::Model;
use crate::options::{RestoreOptions, Settings};
use crate::pixels::{zeroed, PixelLayout, Pixels, PixelsMut};
use crate::plan::{check_region, Plan, Rect};
use crate::progress::{Call, Control, Progress, Stage, Stats};
use crate::prompt::FramePrompt;
use crate::residency::Phase;
use crate::source::{FrameSource, Sink, SourceData};
use crate::tiled::{self, Render};

/// One frame of a restore: made by [`Restorer::frame`](crate::Restorer::frame) from the frame's size, its
/// global context and the options, it restores any rectangle of the frame, from any thread, each as
/// `Restorer::restore_region` would with that context (in the default independent tile mode, the same rectangle
/// of a whole-frame restore when the context is the frame). It keeps the model loaded while it lives.
pub struct Frame {
    model: Arc<Model>,
    settings: Settings,
    /// The input frame's (width, height); the output's is the plan's.
    frame_in: (usize, usize),
    plan: Plan,
    need: Need,
    prompt: FramePrompt,
    noise: Option<Array4<f32>>,
}

impl Frame {
    /// Computes what the regions of a `frame_in` frame share: the global prompt from `context`, which is the
    /// frame being restored itself when `is_frame`, else another view of the whole frame read as its own frame.
    pub(crate) fn prepare(
        model: &Arc<Model>,
        settings: Settings,
        frame_in: (usize, usize),
        context: &FrameSource<'_>,
        is_frame: bool,
        options: &RestoreOptions,
        call: &Call,
    ) -> Result<Frame> {
        let plan = Plan::new(model.manifest(), settings.output, &settings)?;
        let need = Need::of(model.manifest(), &settings, &plan, model.execution_provider());
        model.enter(Phase::Prompt, &need);
        let text = model.text_block(options.prompt.as_deref(), options.prompt_text.as_deref(), call)?;
        call.report(Progress::per_tile(Stage::Prompt, 0, settings.steps, 1, plan.tiles.len()))?;
        let prompt = FramePrompt::new(model, context, is_frame, text, &settings, call)?;
        Ok(Frame { model: model.clone(), settings, frame_in, plan, need, prompt, noise: options.noise.clone() })
    }

    /// The input frame's (width, height).
    pub fn input_size(&self) -> (usize, usize) {
        self.frame_in
    }

    /// The output frame's (width, height): the input's times the scale.
    pub fn output_size(&self) -> (usize, usize) {
        self.plan.frame
    }

    /// The input pixels (frame coordinates) a restore of `rect` (output-frame pixels) reads: what a host asks for
    /// around each tile.
    pub fn region_of_interest(&self, rect: Rect) -> Result<Rect> {
        tiled::region_of_interest(&self.plan, self.frame_in, rect, &self.settings)
    }

    /// Restores `rect` (output-frame pixels) into `dest`, sized to it, from `source`, a crop of the frame's
    /// input pixels whose top-left pixel sits at `origin` and which covers [`Frame::region_of_interest`] of
    /// `rect`. On error or cancellation `dest` is left untouched.
    pub fn restore_region(
        &self,
        source: &Pixels<'_>,
        origin: (usize, usize),
        rect: Rect,
        dest: &mut PixelsMut<'_>,
        control: &Control,
    ) -> Result<Stats> {
        let call = Call::new(control);
        self.restore_into(source, origin, rect, dest, &call)?;
        Ok(call.stats())
    }

    /// [`Frame::restore_region`] within a call that may have begun before the frame was prepared.
    pub(crate) fn restore_into(
        &self,
        source: &Pixels<'_>,
        origin: (usize, usize),
        rect: Rect,
        dest: &mut PixelsMut<'_>,
        call: &Call,
    ) -> Result<()> {
        check_region_call(self.frame_in, self.plan.frame, source, origin, rect, dest)?;
        let layout = dest.layout();
        let source = FrameSource::new(SourceData::Pixels(*source), origin, self.frame_in, self.plan.frame);
        // Rows are finished tile by tile; they land in a scratch copy so that an error or a cancel leaves the
        // caller's buffer as it was.
        let staged_layout = PixelLayout { stride: layout.row_bytes().expect("validated") as isize, ..*layout };
        let mut staged = zeroed(staged_layout.validate()?)?;
        self.render(&source, rect, &mut PixelsMut::new(staged_layout, &mut staged)?, call)?;
        dest.copy_rows_from(&staged);
        Ok(())
    }

    /// Renders `rect` of the output frame from `source` into `sink`.
    pub(crate) fn render(&self, source: &FrameSource<'_>, rect: Rect, sink: &mut dyn Sink, call: &Call) -> Result<()> {
        Render {
            model: &self.model,
            settings: &self.settings,
            plan: &self.plan,
            prompt: &self.prompt,
            need: &self.need,
            noise: self.noise.as_ref(),
            source,
            rect,
            call,
        }
        .run(sink)
    }
}

/// Refuses a region call whose rectangle is not inside the output frame `frame_out`, whose destination is not
/// the rectangle's size, or whose source crop at `origin` extends past the input frame `frame_in`.
pub(crate) fn check_region_call(
    frame_in: (usize, usize),
    frame_out: (usize, usize),
    source: &Pixels<'_>,
    origin: (usize, usize),
    rect: Rect,
    dest: &PixelsMut<'_>,
) -> Result<()> {
    check_region(rect, frame_out)?;
    let layout = dest.layout();
    if (layout.width, layout.height) != (rect.width, rect.height) {
        return Err(Error::InvalidImage(format!(
            "destination is {}x{}, the region {}x{}",
            layout.width, layout.height, rect.width, rect.height
        )));
    }
    let crop = source.layout();
    if origin.0 + crop.width > frame_in.0 || origin.1 + crop.height > frame_in.1 {
        return Err(Error::InvalidImage("the source crop extends past the frame".into()));
    }
    Ok(())
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("input_size", &self.frame_in)
            .field("output_size", &self.plan.frame)
            .field("tiles", &self.plan.tiles.len())
            .finish_non_exhaustive()
    }
}
