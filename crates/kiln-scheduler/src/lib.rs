//! # kiln-scheduler
//!
//! The noise schedulers of diffusers, ported formula for formula: DDIM, DDPM, PNDM, LMS, Euler,
//! Euler ancestral, Heun, KDPM2 (+ ancestral), DPM-Solver++ multistep and singlestep, UniPC, DEIS,
//! LCM and TCD, and the flow-matching samplers of SD 3/3.5 and FLUX.1 (FlowMatchEuler, FlowMatchHeun). Schedules (betas, ᾱ, timesteps, sigmas) are plain f64 vectors computed on the host
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

mod class;
pub mod common;
pub mod config;
mod dpmsolver;
pub mod error;
pub mod float;
mod sampler;
pub mod schedule;
mod scheduler;
mod build;

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
mod flow;
pub mod flow_match_euler;
pub mod flow_match_heun;

pub use config::SchedulerConfig;
pub use error::{Result, SchedulerError};
pub use class::SchedulerClass;
pub use common::{noise_like, threshold_sample, PredictionType, TimestepSpacing, MAX_SOLVER_ORDER};
pub use sampler::{SamplerChoice, SamplerName};
pub use flow::{flow_img2img_begin_index, MAX_FLOW_STEPS};
pub use scheduler::{img2img_begin_index, NoiseSource, Schedule, Scheduler, StepOptions};
