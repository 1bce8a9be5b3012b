//! [`SchedulerClass`]: the diffusers scheduler classes kiln implements, by their
//! `scheduler_config.json` `_class_name`, and building one from a config.

use crate::error::{Result, SchedulerError};

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
    FlowMatchEuler => "FlowMatchEulerDiscreteScheduler",
    FlowMatchHeun => "FlowMatchHeunDiscreteScheduler",
}

impl SchedulerClass {
    /// Whether the class has `use_karras_sigmas` (diffusers' Karras-capable samplers).
    pub fn supports_karras(self) -> bool {
        use SchedulerClass as C;
        matches!(
            self,
            C::Lms | C::Euler | C::Heun | C::KDpm2 | C::KDpm2Ancestral | C::DpmSolverMultistep
                | C::DpmSolverSinglestep | C::UniPc | C::Deis | C::FlowMatchEuler
        )
    }

    /// Whether the class is a flow-matching sampler (SD 3/3.5, FLUX.1): σ from 1 to 0, the model
    /// predicts a velocity, img2img noises with `scale_noise` and starts at
    /// [`crate::flow_img2img_begin_index`].
    pub fn is_flow_match(self) -> bool {
        matches!(self, SchedulerClass::FlowMatchEuler | SchedulerClass::FlowMatchHeun)
    }
}
