//! [`SamplerName`]: the sampler names of the CLI and A1111, each a diffusers class plus the config
//! keys it implies, and [`SamplerChoice`], the one place a run's sampler is chosen.

use crate::class::SchedulerClass;
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::scheduler::{Scheduler, StepOptions};

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

/// The sampler of a run as the user chooses it (`--scheduler`, `--karras`): the one place that
/// turns that choice and a model's `scheduler_config.json` into a scheduler, for `kiln generate`,
/// `kiln schedule` and the library alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplerChoice {
    /// `None`: the class the config's `_class_name` names.
    pub sampler: Option<SamplerName>,
    /// Karras sigmas (`use_karras_sigmas = true`): only for the classes that have them
    /// ([`SchedulerClass::supports_karras`]); refused for the others, which would ignore the key.
    pub karras: bool,
}

impl SamplerChoice {
    /// The class to build and the config to build it from: the sampler's class with the keys
    /// its name implies on top of `config` (else `config`'s own `_class_name`), plus
    /// `use_karras_sigmas` where asked. Errors name the class and the choice.
    pub fn resolve(&self, config: &SchedulerConfig) -> Result<(SchedulerClass, SchedulerConfig)> {
        let flow_model = config
            .class_name
            .as_deref()
            .and_then(|name| SchedulerClass::from_class_name(name).ok())
            .is_some_and(SchedulerClass::is_flow_match);
        let (class, config) = match self.sampler {
            // a flow-matching model (SD 3, FLUX) samples with the flow-matching Euler and Heun
            Some(SamplerName::Euler) if flow_model => (SchedulerClass::FlowMatchEuler, config.clone()),
            Some(SamplerName::Heun) if flow_model => (SchedulerClass::FlowMatchHeun, config.clone()),
            Some(sampler) if flow_model => {
                let class = config.class_name.clone().unwrap_or_default();
                return Err(SchedulerError::NotFlowSampler { sampler: sampler.to_string(), class });
            }
            Some(sampler) => (sampler.class(), sampler.apply(config)),
            None => {
                let name = config.class_name.clone().ok_or_else(|| {
                    SchedulerError::Invalid("the scheduler config has no _class_name; choose a sampler by name".into())
                })?;
                (SchedulerClass::from_class_name(&name)?, config.clone())
            }
        };
        if !self.karras {
            return Ok((class, config));
        }
        if !class.supports_karras() {
            return Err(SchedulerError::NoKarras { class: class.class_name() });
        }
        Ok((class, config.with("use_karras_sigmas", true)))
    }

    /// [`SamplerChoice::resolve`], then the class built for `num_inference_steps`.
    pub fn build(&self, config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Box<dyn Scheduler>> {
        let (class, config) = self.resolve(config)?;
        class.build(&config, num_inference_steps, options)
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
