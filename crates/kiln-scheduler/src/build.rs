//! [`SchedulerClass::build`]: each class's sampler, built from a config.

use crate::class::SchedulerClass;
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::scheduler::{Scheduler, StepOptions};
use crate::{
    ddim, ddpm, deis, dpmsolver_multistep, dpmsolver_singlestep, euler, euler_ancestral, flow_match_euler,
    flow_match_heun, heun, kdpm2, lcm, lms, pndm, tcd, unipc,
};

impl SchedulerClass {
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
            SchedulerClass::FlowMatchEuler => {
                Box::new(flow_match_euler::FlowMatchEulerScheduler::new(config, num_inference_steps, options)?)
            }
            SchedulerClass::FlowMatchHeun => {
                Box::new(flow_match_heun::FlowMatchHeunScheduler::new(config, num_inference_steps, options)?)
            }
        })
    }
}
