use thiserror::Error;

/// Everything that can go wrong while building or stepping a scheduler.
///
/// Every variant names the offending value and what is allowed, so a CLI can print it as is.
#[derive(Debug, Error)]
pub enum SchedulerError {
    #[error("num_inference_steps must be at least 1, got {0}")]
    ZeroSteps(usize),
    #[error(
        "num_inference_steps ({steps}) cannot be larger than num_train_timesteps ({train}): the model was trained with at most {train} timesteps"
    )]
    TooManySteps { steps: usize, train: usize },
    #[error("strength must be within [0, 1], got {0}")]
    Strength(f64),
    #[error("unknown scheduler '{name}'; known schedulers: {known}")]
    UnknownScheduler { name: String, known: String },
    #[error("unsupported value for '{key}' in the scheduler config: {value} (allowed: {allowed})")]
    Unsupported { key: String, value: String, allowed: String },
    #[error("invalid type for '{key}' in the scheduler config: expected {expected}, got {value}")]
    BadType { key: String, expected: String, value: String },
    #[error("cannot read scheduler config {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("malformed scheduler config {path}: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("invalid scheduler config: {0}")]
    Invalid(String),
    #[error(
        "{class} has no Karras sigmas (use_karras_sigmas); the samplers that have them: lms, euler, heun, dpm2, \
         dpm2-a, dpm++2m, dpm++2m-sde, dpm++2s, unipc, deis"
    )]
    NoKarras { class: &'static str },
    #[error(
        "{sampler} samples noise-predicting models; this model's scheduler is {class} (flow matching: \
         SD 3, FLUX), which samples with euler or heun"
    )]
    NotFlowSampler { sampler: String, class: String },
    #[error("step index {index} is out of range: the schedule has {len} timesteps")]
    StepIndex { index: usize, len: usize },
}

pub type Result<T> = std::result::Result<T, SchedulerError>;
