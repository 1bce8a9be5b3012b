//! # kiln-scheduler
//!
//! The noise schedulers of diffusers, ported formula for formula: DDIM, DDPM, PNDM, LMS, Euler,
//! Euler ancestral, Heun, KDPM2 (+ ancestral), DPM-Solver++ multistep and singlestep, UniPC, DEIS,
//! LCM and TCD. Schedules (betas, ᾱ, timesteps, sigmas) are plain f64 vectors computed on the host
//! exactly as diffusers computes them; tensors appear only in [`Scheduler::step`],
//! [`Scheduler::scale_model_input`] and [`Scheduler::add_noise`]. No model code, no GPU code.
//!
//! ```no_run
//! use kiln_scheduler::{SchedulerConfig, SamplerName, StepOptions};
//! let config = SchedulerConfig::from_model_dir("models/sd15")?;
//! let sampler: SamplerName = "euler-a".parse()?;
//! let scheduler = sampler.build(&config, 25, &StepOptions::default())?;
//! println!("{:?}", scheduler.timesteps());
//! # Ok::<(), kiln_scheduler::SchedulerError>(())
//! ```

pub use burn;

pub mod config;
pub mod error;
pub mod schedule;
mod tensor;

pub mod ddim;
pub mod ddpm;
pub mod deis;
pub mod dpmsolver_multistep;
pub mod dpmsolver_singlestep;
pub mod euler;
pub mod lcm;
pub mod pndm;
pub mod tcd;
pub mod unipc;
pub mod euler_ancestral;
pub mod heun;
pub mod kdpm2;
pub mod lms;

pub use config::SchedulerConfig;
pub use error::{Result, SchedulerError};
pub use tensor::{noise_like, threshold_sample};

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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOptions {
    /// The pipeline's `eta`, which diffusers passes to every `step` that takes one: DDIM's η
    /// (0 is deterministic DDIM, 1 is DDPM-like) and TCD's γ (0 deterministic, 0.3 the paper's).
    pub eta: f64,
    /// Euler's churn (`s_churn`, `s_tmin`, `s_tmax`, `s_noise` of `EulerDiscreteScheduler.step`).
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl Default for StepOptions {
    fn default() -> Self {
        Self { eta: 0.0, s_churn: 0.0, s_tmin: 0.0, s_tmax: f64::INFINITY, s_noise: 1.0 }
    }
}

/// A scheduler built for a number of inference steps.
///
/// The denoising loop runs `for i in begin..timesteps().len()`: feed
/// `scale_model_input(sample, i)` and `timesteps()[i]` to the model, then
/// `sample = step(model_output, i, sample, noise)`. Samplers of `order` 2 (Heun, KDPM2) have
/// 2n − 1 timesteps and call the model at each.
pub trait Scheduler: Send {
    /// The diffusers class this scheduler reproduces, e.g. `EulerDiscreteScheduler`.
    fn class(&self) -> SchedulerClass;
    /// The timesteps fed to the model, one per model call (`scheduler.timesteps`).
    fn timesteps(&self) -> &[f64];
    /// The noise levels (`scheduler.sigmas`), for the samplers that have them.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }
    /// The standard deviation of the initial noise (`scheduler.init_noise_sigma`).
    fn init_noise_sigma(&self) -> f64;
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

macro_rules! classes {
    ($($variant:ident => $class:literal),* $(,)?) => {
        /// The diffusers scheduler classes kiln implements.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum SchedulerClass { $($variant),* }

        impl SchedulerClass {
            pub const ALL: &'static [SchedulerClass] = &[$(SchedulerClass::$variant),*];

            /// The diffusers class name (`_class_name` in `scheduler_config.json`).
            pub fn class_name(self) -> &'static str {
                match self { $(SchedulerClass::$variant => $class),* }
            }

            /// Looks a class up by its diffusers name.
            pub fn from_class_name(name: &str) -> Result<Self> {
                match name {
                    $($class => Ok(SchedulerClass::$variant),)*
                    _ => Err(SchedulerError::UnknownScheduler {
                        name: name.to_string(),
                        known: [$($class),*].join(", "),
                    }),
                }
            }
        }
    };
}

classes! {
    Ddim => "DDIMScheduler",
    Ddpm => "DDPMScheduler",
    Pndm => "PNDMScheduler",
    Lms => "LMSDiscreteScheduler",
    Euler => "EulerDiscreteScheduler",
    EulerAncestral => "EulerAncestralDiscreteScheduler",
    Heun => "HeunDiscreteScheduler",
    KDpm2 => "KDPM2DiscreteScheduler",
    KDpm2Ancestral => "KDPM2AncestralDiscreteScheduler",
    DpmSolverMultistep => "DPMSolverMultistepScheduler",
    DpmSolverSinglestep => "DPMSolverSinglestepScheduler",
    UniPc => "UniPCMultistepScheduler",
    Deis => "DEISMultistepScheduler",
    Lcm => "LCMScheduler",
    Tcd => "TCDScheduler",
}

impl SchedulerClass {
    /// Whether the class has `use_karras_sigmas` (diffusers' Karras-capable samplers).
    pub fn supports_karras(self) -> bool {
        use SchedulerClass as C;
        matches!(
            self,
            C::Lms | C::Euler | C::Heun | C::KDpm2 | C::KDpm2Ancestral | C::DpmSolverMultistep
                | C::DpmSolverSinglestep | C::UniPc | C::Deis
        )
    }

    /// Builds this class from `config` (the file's keys; absent keys take this class's defaults)
    /// for `num_inference_steps` steps, like `Class.from_config(config)` + `set_timesteps(n)`.
    pub fn build(
        self,
        config: &SchedulerConfig,
        num_inference_steps: usize,
        options: &StepOptions,
    ) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SchedulerClass::Ddim => Box::new(ddim::DdimScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::Euler => Box::new(euler::EulerScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::Ddpm => Box::new(ddpm::DdpmScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::Pndm => Box::new(pndm::PndmScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::Lcm => Box::new(lcm::LcmScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::Tcd => Box::new(tcd::TcdScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::DpmSolverMultistep => Box::new(dpmsolver_multistep::DpmSolverMultistepScheduler::new(
                config,
                num_inference_steps,
                options,
            )?),
            SchedulerClass::DpmSolverSinglestep => Box::new(dpmsolver_singlestep::DpmSolverSinglestepScheduler::new(
                config,
                num_inference_steps,
                options,
            )?),
            SchedulerClass::Lms => Box::new(lms::LmsScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::UniPc => Box::new(unipc::UniPcScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::Deis => Box::new(deis::DeisScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::EulerAncestral => {
                Box::new(euler_ancestral::EulerAncestralScheduler::new(config, num_inference_steps, options)?)
            }
            SchedulerClass::Heun => Box::new(heun::HeunScheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::KDpm2 => Box::new(kdpm2::KDpm2Scheduler::new(config, num_inference_steps, options)?),
            SchedulerClass::KDpm2Ancestral => {
                Box::new(kdpm2::KDpm2Scheduler::new_ancestral(config, num_inference_steps, options)?)
            }
        })
    }
}

/// The sampler names of the CLI (`--scheduler`), each a diffusers class plus the config keys it
/// implies (e.g. `dpm++2m-sde` = DPMSolverMultistep with `algorithm_type = "sde-dpmsolver++"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerName {
    Ddim,
    Ddpm,
    Pndm,
    Lms,
    Euler,
    EulerA,
    Heun,
    Dpm2,
    Dpm2A,
    Dpmpp2m,
    Dpmpp2mSde,
    Dpmpp2s,
    UniPc,
    Deis,
    Lcm,
    Tcd,
}

impl SamplerName {
    pub const ALL: &'static [(&'static str, SamplerName)] = &[
        ("ddim", SamplerName::Ddim),
        ("ddpm", SamplerName::Ddpm),
        ("pndm", SamplerName::Pndm),
        ("lms", SamplerName::Lms),
        ("euler", SamplerName::Euler),
        ("euler-a", SamplerName::EulerA),
        ("heun", SamplerName::Heun),
        ("dpm2", SamplerName::Dpm2),
        ("dpm2-a", SamplerName::Dpm2A),
        ("dpm++2m", SamplerName::Dpmpp2m),
        ("dpm++2m-sde", SamplerName::Dpmpp2mSde),
        ("dpm++2s", SamplerName::Dpmpp2s),
        ("unipc", SamplerName::UniPc),
        ("deis", SamplerName::Deis),
        ("lcm", SamplerName::Lcm),
        ("tcd", SamplerName::Tcd),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, s)| *s == self).map(|(n, _)| *n).expect("every name is listed")
    }

    /// The diffusers class behind this name.
    pub fn class(self) -> SchedulerClass {
        use SchedulerClass as C;
        match self {
            Self::Ddim => C::Ddim,
            Self::Ddpm => C::Ddpm,
            Self::Pndm => C::Pndm,
            Self::Lms => C::Lms,
            Self::Euler => C::Euler,
            Self::EulerA => C::EulerAncestral,
            Self::Heun => C::Heun,
            Self::Dpm2 => C::KDpm2,
            Self::Dpm2A => C::KDpm2Ancestral,
            Self::Dpmpp2m | Self::Dpmpp2mSde => C::DpmSolverMultistep,
            Self::Dpmpp2s => C::DpmSolverSinglestep,
            Self::UniPc => C::UniPc,
            Self::Deis => C::Deis,
            Self::Lcm => C::Lcm,
            Self::Tcd => C::Tcd,
        }
    }

    /// The config this name implies on top of a model's `scheduler_config.json`.
    pub fn apply(self, config: &SchedulerConfig) -> SchedulerConfig {
        let config = config.clone();
        match self {
            Self::Dpmpp2m | Self::Dpmpp2s => config.with("algorithm_type", "dpmsolver++"),
            Self::Dpmpp2mSde => config.with("algorithm_type", "sde-dpmsolver++"),
            _ => config,
        }
    }

    /// Builds the sampler from a model's scheduler config, as
    /// `Class.from_config(pipe.scheduler.config, **implied_keys)` + `set_timesteps(n)` would.
    pub fn build(
        self,
        config: &SchedulerConfig,
        num_inference_steps: usize,
        options: &StepOptions,
    ) -> Result<Box<dyn Scheduler>> {
        self.class().build(&self.apply(config), num_inference_steps, options)
    }
}

impl std::str::FromStr for SamplerName {
    type Err = SchedulerError;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        Self::ALL.iter().find(|(n, _)| *n == lower).map(|(_, v)| *v).ok_or_else(|| {
            SchedulerError::UnknownScheduler {
                name: s.to_string(),
                known: Self::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }
        })
    }
}

impl std::fmt::Display for SamplerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
