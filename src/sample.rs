//! Sampling: the flow-matching Euler loop from the starting noise to the restored latent, for one tile on its own
//! or for a block of tiles whose velocities are blended at every step (the official tiled sampler).

use ndarray::{s, Array2, Array4, ArrayView4, Axis, Zip};

use crate::error::{Error, Result};
use crate::model::{Conditioning, Model};
use crate::options::Settings;
use crate::pixels::{zeroed_plane, zeroed_planes};
use crate::plan::{gaussian_weights, Rect};
use crate::progress::Call;
use crate::schedule;

/// Samples one tile from its starting noise `z`, with its LQ latent and conditioning. `report(step)` is called
/// before each step.
pub(crate) fn tile(
    model: &Model,
    mut z: Array4<f32>,
    z_lq: ArrayView4<'_, f32>,
    condition: &Conditioning,
    settings: &Settings,
    call: &Call,
    report: impl Fn(usize) -> Result<()>,
) -> Result<Array4<f32>> {
    let fixed = model.step_inputs(z_lq, &[condition], settings.guidance > 1.0, call)?;
    for (step, pair) in schedule::sigmas(&model.manifest().scheduler, settings.steps).windows(2).enumerate() {
        report(step)?;
        let v = model.velocity(z.view(), &fixed, pair[0], settings.guidance, call)?;
        euler_step(&mut z, &v, pair[1] - pair[0], step)?;
    }
    Ok(z)
}

/// Samples a block of tiles jointly from the block's starting noise `z` (1, C, h, w): at every step each tile's
/// velocity is computed on its window of the block (`tiles`, relative to the block, with one LQ latent window and
/// one conditioning each; `settings.batch` tiles per transformer call), the velocities are averaged with the
/// official Gaussian weights, and one Euler step is taken on the whole block. `report(step, tile)` is called
/// before each transformer call with the index of its first tile.
pub(crate) fn joint(
    model: &Model,
    mut z: Array4<f32>,
    z_lq: &Array4<f32>,
    tiles: &[Rect],
    conditions: &[Conditioning],
    settings: &Settings,
    call: &Call,
    report: impl Fn(usize, usize) -> Result<()>,
) -> Result<Array4<f32>> {
    let (_, _, height, width) = z.dim();
    let gauss: Vec<Array2<f32>> = tiles
        .iter()
        .map(|t| {
            let (gy, gx) = (gaussian_weights(t.height), gaussian_weights(t.width));
            Array2::from_shape_fn((gy.len(), gx.len()), |(y, x)| gy[y] * gx[x])
        })
        .collect();
    // The tiles of a transformer call, stacked along the batch axis.
    let stack = |array: &Array4<f32>, batch: &[Rect]| {
        let views: Vec<_> = batch.iter().map(|t| array.slice(s![.., .., t.y..t.bottom(), t.x..t.right()])).collect();
        ndarray::concatenate(Axis(0), &views).expect("tiles share one size")
    };
    let fixed = tiles
        .chunks(settings.batch)
        .zip(conditions.chunks(settings.batch))
        .map(|(batch, conditions)| {
            let conditions: Vec<&Conditioning> = conditions.iter().collect();
            model.step_inputs(stack(z_lq, batch).view(), &conditions, settings.guidance > 1.0, call)
        })
        .collect::<Result<Vec<_>>>()?;
    // The blending sums span the block: reserved once, fallibly.
    let mut v_sum = zeroed_planes(z.raw_dim())?;
    let mut w_sum = zeroed_plane(height, width)?;
    for (step, pair) in schedule::sigmas(&model.manifest().scheduler, settings.steps).windows(2).enumerate() {
        v_sum.fill(0.0);
        w_sum.fill(0.0);
        let mut single = None;
        for (batch_index, batch) in tiles.chunks(settings.batch).enumerate() {
            let first = batch_index * settings.batch;
            report(step, first)?;
            let v = model.velocity(stack(&z, batch).view(), &fixed[batch_index], pair[0], settings.guidance, call)?;
            if tiles.len() == 1 {
                // One tile is the whole block: its weights would divide out exactly.
                single = Some(v);
                continue;
            }
            for (k, tile) in batch.iter().enumerate() {
                let g = &gauss[first + k];
                let mut target = v_sum.slice_mut(s![0, .., tile.y..tile.bottom(), tile.x..tile.right()]);
                Zip::indexed(&mut target)
                    .and(&v.index_axis(Axis(0), k))
                    .for_each(|(_, y, x), t, &v| *t += g[[y, x]] * v);
                w_sum.slice_mut(s![tile.y..tile.bottom(), tile.x..tile.right()]).zip_mut_with(g, |t, &g| *t += g);
            }
        }
        match &single {
            Some(v) => euler_step(&mut z, v, pair[1] - pair[0], step)?,
            None => {
                Zip::indexed(&mut v_sum).for_each(|(_, _, y, x), v| *v /= w_sum[[y, x]]);
                euler_step(&mut z, &v_sum, pair[1] - pair[0], step)?;
            }
        }
    }
    Ok(z)
}

/// `z += dt * v`, refusing a latent that went NaN or infinite.
fn euler_step(z: &mut Array4<f32>, v: &Array4<f32>, dt: f32, step: usize) -> Result<()> {
    let mut finite = true;
    Zip::from(z).and(v).for_each(|z, &v| {
        *z += dt * v;
        finite &= z.is_finite();
    });
    if finite {
        Ok(())
    } else {
        Err(Error::BadOutput(format!("the latent became NaN or infinite at step {}", step + 1)))
    }
}
