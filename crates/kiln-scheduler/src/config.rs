//! `scheduler_config.json` as diffusers reads it.
//!
//! diffusers' `ConfigMixin.from_config` (`configuration_utils.py::extract_init_dict`) hands a
//! scheduler class the keys of the file that its `__init__` accepts; keys the file does not
//! contain take the class's own defaults (`_use_default_values`), keys the class does not know are
//! ignored. [`SchedulerConfig`] keeps the file's keys as they are and each sampler reads the ones
//! it knows through a `ConfigReader`, so switching sampler behaves exactly like
//! `NewScheduler.from_config(pipe.scheduler.config)`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Result, SchedulerError};

/// The raw contents of a `scheduler_config.json`: its `_class_name` and its keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerConfig {
    /// `_class_name` from the file (e.g. `PNDMScheduler`), if present.
    pub class_name: Option<String>,
    /// Every key of the file except the `_`-prefixed bookkeeping keys.
    pub values: Map<String, Value>,
}

impl SchedulerConfig {
    /// Parses a config from JSON text. `origin` names the source in error messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| SchedulerError::Json {
            path: origin.to_string(),
            source,
        })?;
        let Value::Object(map) = value else {
            return Err(SchedulerError::Invalid(format!(
                "{origin}: expected a JSON object, found {}",
                json_kind(&value)
            )));
        };
        Self::from_map(map)
    }

    /// Builds a config from an already-parsed JSON object.
    pub fn from_map(map: Map<String, Value>) -> Result<Self> {
        let class_name = match map.get("_class_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(SchedulerError::BadType {
                    key: "_class_name".into(),
                    expected: "a string".into(),
                    value: other.to_string(),
                });
            }
        };
        let values = map.into_iter().filter(|(k, _)| !k.starts_with('_')).collect();
        Ok(Self { class_name, values })
    }

    /// Reads a `scheduler_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| SchedulerError::Io { path: path.display().to_string(), source };
        // a regular file of at most 16 MiB (published ones are < 1 KB): a FIFO would block
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() || meta.len() > 16 << 20 {
            let why = if meta.is_file() { format!("{} bytes; at most 16 MiB", meta.len()) } else { "not a regular file".into() };
            return Err(io(std::io::Error::other(why)));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Reads `<model_dir>/scheduler/scheduler_config.json` from a diffusers model folder.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("scheduler").join("scheduler_config.json"))
    }

    /// Sets (or overrides) a key, like passing a keyword to diffusers' `from_config(config, **kwargs)`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.values.insert(key.to_string(), value.into());
        self
    }

    pub(crate) fn reader(&self, class: &'static str) -> ConfigReader<'_> {
        ConfigReader { config: self, class, seen: BTreeSet::new() }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the keys one sampler knows, with that sampler's defaults, and logs the rest.
pub(crate) struct ConfigReader<'a> {
    config: &'a SchedulerConfig,
    class: &'static str,
    seen: BTreeSet<&'static str>,
}

impl ConfigReader<'_> {
    fn get(&mut self, key: &'static str) -> Option<&Value> {
        self.seen.insert(key);
        match self.config.values.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn bad(key: &str, expected: &str, v: &Value) -> SchedulerError {
        SchedulerError::BadType { key: key.into(), expected: expected.into(), value: v.to_string() }
    }

    pub fn f64(&mut self, key: &'static str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn opt_f64(&mut self, key: &'static str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Self::bad(key, "a number", v)),
        }
    }

    pub fn usize(&mut self, key: &'static str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(n as usize),
                // Configs in the wild sometimes hold integers written as floats (1000.0).
                None => match v.as_f64() {
                    Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as usize),
                    _ => Err(Self::bad(key, "a non-negative integer", v)),
                },
            },
        }
    }

    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| Self::bad(key, "true or false", v)),
        }
    }

    /// A string that must be one of `allowed`.
    pub fn choice(
        &mut self,
        key: &'static str,
        default: &'static str,
        allowed: &[&'static str],
    ) -> Result<String> {
        let value = match self.get(key) {
            None => return Ok(default.to_string()),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(Self::bad(key, "a string", v)),
        };
        if allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(SchedulerError::Unsupported { key: key.into(), value, allowed: allowed.join(", ") })
        }
    }

    /// A string key taken as is (no check against a list of choices).
    pub fn raw_string(&mut self, key: &'static str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Self::bad(key, "a string", v)),
        }
    }

    pub fn opt_f64_list(&mut self, key: &'static str) -> Result<Option<Vec<f64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_f64().ok_or_else(|| Self::bad(key, "a list of numbers", v)))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Self::bad(key, "a list of numbers", v)),
        }
    }

    pub fn usize_list(&mut self, key: &'static str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|n| n as usize).ok_or_else(|| Self::bad(key, "a list of integers", v))
                })
                .collect(),
            Some(v) => Err(Self::bad(key, "a list of integers", v)),
        }
    }

    /// Logs the keys of the file this sampler does not know (diffusers ignores them too).
    pub fn finish(self) {
        for key in self.config.values.keys() {
            if !self.seen.contains(key.as_str()) {
                log::debug!("{}: ignoring config key '{key}' it does not know", self.class);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_null_keys_take_the_default() {
        let c = SchedulerConfig::from_json_str(
            r#"{"_class_name": "PNDMScheduler", "trained_betas": null, "steps_offset": 1}"#,
            "test",
        )
        .unwrap();
        assert_eq!(c.class_name.as_deref(), Some("PNDMScheduler"));
        let mut r = c.reader("Test");
        assert_eq!(r.opt_f64_list("trained_betas").unwrap(), None);
        assert_eq!(r.usize("steps_offset", 0).unwrap(), 1);
        assert_eq!(r.choice("timestep_spacing", "linspace", &["linspace", "leading"]).unwrap(), "linspace");
    }

    #[test]
    fn unsupported_values_name_the_key_and_the_choices() {
        let c = SchedulerConfig::from_json_str(r#"{"beta_schedule": "cubic"}"#, "test").unwrap();
        let err = c.reader("T").choice("beta_schedule", "linear", &["linear", "scaled_linear"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("beta_schedule") && msg.contains("cubic") && msg.contains("scaled_linear"), "{msg}");
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(matches!(
            SchedulerConfig::from_json_str("{not json", "x.json"),
            Err(SchedulerError::Json { .. })
        ));
        assert!(matches!(SchedulerConfig::from_json_str("[1, 2]", "x.json"), Err(SchedulerError::Invalid(_))));
        assert!(matches!(
            SchedulerConfig::from_json_str(r#"{"steps_offset": "one"}"#, "x").unwrap().reader("T").usize("steps_offset", 0),
            Err(SchedulerError::BadType { .. })
        ));
    }
}
