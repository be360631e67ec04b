//! The flow-matching Euler schedule (diffusers' FlowMatchEulerDiscreteScheduler with a static shift).

use crate::bundle::SchedulerSpec;

/// `steps + 1` sigmas from 1 down to 0, shifted as diffusers does: the shift is applied to the end points of
/// the linear timestep grid and again to every point of it.
pub fn sigmas(spec: &SchedulerSpec, steps: usize) -> Vec<f32> {
    let shift = spec.shift;
    let train = spec.train_timesteps as f64;
    let shifted = |s: f64| shift * s / (1.0 + (shift - 1.0) * s);
    let start = shifted(1.0) * train;
    let end = shifted(1.0 / train) * train;
    let mut sigmas: Vec<f32> = (0..steps)
        .map(|i| {
            let t = if steps == 1 { start } else { start + (end - start) * i as f64 / (steps - 1) as f64 };
            shifted(t / train) as f32
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_28_step_schedule() {
        let spec = SchedulerSpec { kind: "flow_match_euler".into(), shift: 3.0, train_timesteps: 1000, steps: 28 };
        let expected = [
            1.0, 0.987381, 0.974108, 0.960129, 0.945387, 0.929818, 0.913349, 0.8959, 0.877382, 0.857692, 0.836717,
            0.814325, 0.790368, 0.764677, 0.737056, 0.707278, 0.675082, 0.64016, 0.602151, 0.560625, 0.515072,
            0.464876, 0.409289, 0.347393, 0.278049, 0.199827, 0.110906, 0.008929, 0.0,
        ];
        let got = sigmas(&spec, 28);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!((*g as f64 - e).abs() <= 1e-6, "{g} vs {e}");
        }
    }

    #[test]
    fn one_step_goes_straight_from_one_to_zero() {
        let spec = SchedulerSpec { kind: "flow_match_euler".into(), shift: 3.0, train_timesteps: 1000, steps: 1 };
        assert_eq!(sigmas(&spec, 1), vec![1.0, 0.0]);
    }
}
