//! The [`Scheduler`] trait every sampler implements, the [`Schedule`] it is built with, the noise
//! source of the stochastic samplers, and the step-count checks every sampler applies.

use crate::class::SchedulerClass;
use crate::error::{Result, SchedulerError};
use burn::tensor::Tensor;

/// A source of standard-normal noise for the stochastic samplers.
///
/// The pipeline passes a generator that reproduces `torch.randn(shape, generator=g)` with a CPU
/// generator; tests pass noise recorded from diffusers.
pub trait NoiseSource {
    /// `shape.iter().product()` standard-normal float32 values in row-major order.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32>;
}

/// Step-time knobs that diffusers takes as `step(...)` or pipeline arguments rather than config.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOptions {
    /// The pipeline's `eta`, which diffusers passes to every `step` that takes one: DDIM's η
    /// (0 is deterministic DDIM, 1 is DDPM-like) and TCD's γ (0 deterministic, 0.3 the paper's).
    pub eta: f64,
    /// Euler's churn (`s_churn`, `s_tmin`, `s_tmax`, `s_noise` of `EulerDiscreteScheduler.step`).
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
    /// `set_timesteps(mu=…)`: the flow samplers' dynamic shift (`use_dynamic_shifting`), which
    /// the SD3 and FLUX pipelines compute from the image size (`calculate_shift`).
    pub mu: Option<f64>,
    /// `set_timesteps(sigmas=…)`: custom sigmas, one per step, for the flow-matching Euler sampler
    /// (FLUX's pipeline passes `linspace(1, 1/n, n)`); the other samplers do not read it.
    pub sigmas: Option<Vec<f64>>,
}

impl Default for StepOptions {
    fn default() -> Self {
        Self { eta: 0.0, s_churn: 0.0, s_tmin: 0.0, s_tmax: f64::INFINITY, s_noise: 1.0, mu: None, sigmas: None }
    }
}

/// What every scheduler exposes of its schedule once built (`scheduler.timesteps`, `.sigmas`,
/// `.init_noise_sigma`), held by each sampler and read through [`Scheduler`]'s accessors.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub class: SchedulerClass,
    /// One per model call.
    pub timesteps: Vec<f64>,
    /// The noise levels, one per timestep plus the final one; empty for the samplers without.
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
}

/// A scheduler built for a number of inference steps.
///
/// The denoising loop runs `for i in begin..timesteps().len()`: feed
/// `scale_model_input(sample, i)` and `timesteps()[i]` to the model, then
/// `sample = step(model_output, i, sample, noise)`. Samplers of `order` 2 (Heun, KDPM2) have
/// 2n − 1 timesteps and call the model at each.
pub trait Scheduler: Send {
    /// What the scheduler was built with: its class, timesteps, sigmas and initial noise level.
    fn schedule(&self) -> &Schedule;
    /// The diffusers class this scheduler reproduces, e.g. `EulerDiscreteScheduler`.
    fn class(&self) -> SchedulerClass {
        self.schedule().class
    }
    /// The timesteps fed to the model, one per model call (`scheduler.timesteps`).
    fn timesteps(&self) -> &[f64] {
        &self.schedule().timesteps
    }
    /// The noise levels (`scheduler.sigmas`), for the samplers that have them.
    fn sigmas(&self) -> Option<&[f64]> {
        let sigmas = &self.schedule().sigmas;
        (!sigmas.is_empty()).then_some(sigmas.as_slice())
    }
    /// The standard deviation of the initial noise (`scheduler.init_noise_sigma`).
    fn init_noise_sigma(&self) -> f64 {
        self.schedule().init_noise_sigma
    }
    /// Model evaluations per step (`scheduler.order`), for img2img's start index.
    fn order(&self) -> usize {
        1
    }
    /// `scheduler.scale_model_input(sample, t)` for the `step_index`-th timestep.
    ///
    /// # Shapes
    /// - sample: `[batch, channels, height, width]`, returned unchanged in shape.
    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let _ = step_index;
        sample
    }
    /// One denoising step: `scheduler.step(model_output, timesteps[step_index], sample).prev_sample`.
    ///
    /// Steps must be taken in order starting at the loop's begin index; stochastic samplers draw
    /// their noise from `noise` in diffusers' order.
    ///
    /// # Shapes
    /// - model_output, sample: `[batch, channels, height, width]`; returns the same shape.
    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4>;
    /// `scheduler.add_noise(original, noise, timesteps[step_index])`, for img2img.
    ///
    /// # Shapes
    /// - original, noise: `[batch, channels, height, width]`; returns the same shape.
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4>;
}

/// The first step index of an img2img run (`pipeline_stable_diffusion_img2img.py::get_timesteps`):
/// `init_timestep = min(int(steps * strength), steps)`, `t_start = steps - init_timestep`, and the
/// loop begins at `t_start * order` (`set_begin_index`). `strength = 1` starts from pure noise.
pub fn img2img_begin_index(num_inference_steps: usize, strength: f64, order: usize) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) || strength.is_nan() {
        return Err(SchedulerError::Strength(strength));
    }
    let init_timestep = ((num_inference_steps as f64 * strength) as usize).min(num_inference_steps);
    if init_timestep == 0 {
        return Err(SchedulerError::Invalid(format!(
            "strength {strength} with {num_inference_steps} steps leaves no denoising step \
             (int(steps * strength) = 0); raise --strength or --steps"
        )));
    }
    let t_start = num_inference_steps - init_timestep;
    Ok(t_start * order)
}

/// Checks `num_inference_steps` against the training schedule length.
pub(crate) fn check_steps(steps: usize, num_train_timesteps: usize) -> Result<()> {
    if steps == 0 {
        return Err(SchedulerError::ZeroSteps(steps));
    }
    if steps > num_train_timesteps {
        return Err(SchedulerError::TooManySteps { steps, train: num_train_timesteps });
    }
    Ok(())
}
