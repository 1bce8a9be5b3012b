//! Sampler names as clients send them: AUTOMATIC1111's (`Euler a`, `DPM++ 2M`, with a
//! `scheduler` of `Automatic` or `Karras`, and the pre-1.9 names with ` Karras` appended) and
//! kiln's own (`euler-a`, `dpm++2m`, …, see `kiln schedule --help`).

use kiln::scheduler::SamplerName;

/// One A1111 sampler kiln runs: its display name, A1111's aliases, kiln's sampler, and whether
/// A1111's `Automatic` schedule means Karras sigmas for it.
pub struct A1111Sampler {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub sampler: SamplerName,
    pub karras_by_default: bool,
}

/// The A1111 samplers with a diffusers counterpart kiln has, in A1111's order
/// (`modules/sd_samplers_kdiffusion.py` `samplers_k_diffusion`, `modules/sd_samplers_timesteps.py`;
/// the defaults' `'scheduler': 'karras'` options as A1111 1.9+ sets them). diffusers' mapping
/// (docs "Schedulers" → "A1111/k-diffusion") pairs each with its scheduler class.
pub const A1111_SAMPLERS: &[A1111Sampler] = &[
    A1111Sampler { name: "DPM++ 2M", aliases: &["k_dpmpp_2m"], sampler: SamplerName::Dpmpp2m, karras_by_default: true },
    A1111Sampler { name: "DPM++ 2M SDE", aliases: &["k_dpmpp_2m_sde"], sampler: SamplerName::Dpmpp2mSde, karras_by_default: false },
    A1111Sampler { name: "Euler a", aliases: &["k_euler_a", "k_euler_ancestral"], sampler: SamplerName::EulerA, karras_by_default: false },
    A1111Sampler { name: "Euler", aliases: &["k_euler"], sampler: SamplerName::Euler, karras_by_default: false },
    A1111Sampler { name: "LMS", aliases: &["k_lms"], sampler: SamplerName::Lms, karras_by_default: false },
    A1111Sampler { name: "Heun", aliases: &["k_heun"], sampler: SamplerName::Heun, karras_by_default: false },
    A1111Sampler { name: "DPM2", aliases: &["k_dpm_2"], sampler: SamplerName::Dpm2, karras_by_default: true },
    A1111Sampler { name: "DPM2 a", aliases: &["k_dpm_2_a"], sampler: SamplerName::Dpm2A, karras_by_default: true },
    A1111Sampler { name: "DPM++ 2S", aliases: &["k_dpmpp_2s"], sampler: SamplerName::Dpmpp2s, karras_by_default: false },
    A1111Sampler { name: "DDIM", aliases: &["ddim"], sampler: SamplerName::Ddim, karras_by_default: false },
    A1111Sampler { name: "PLMS", aliases: &["plms"], sampler: SamplerName::Pndm, karras_by_default: false },
    A1111Sampler { name: "UniPC", aliases: &["unipc"], sampler: SamplerName::UniPc, karras_by_default: false },
    A1111Sampler { name: "LCM", aliases: &["k_lcm"], sampler: SamplerName::Lcm, karras_by_default: false },
    A1111Sampler { name: "DDPM", aliases: &["ddpm"], sampler: SamplerName::Ddpm, karras_by_default: false },
];

/// The schedule types (`scheduler`) kiln takes: A1111's `Automatic` (the sampler's default) and
/// `Karras`.
pub const A1111_SCHEDULERS: &[(&str, &str)] = &[("automatic", "Automatic"), ("karras", "Karras")];

/// A sampler as a client names it → kiln's sampler and Karras sigmas, or a message listing the
/// names kiln takes. `scheduler` is A1111's schedule type (`None` = `Automatic`).
pub fn resolve(name: &str, scheduler: Option<&str>) -> Result<(SamplerName, bool), String> {
    let karras = match scheduler.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("automatic") => None,
        Some("karras") => Some(true),
        Some(_) => return Err(format!("scheduler {:?} is not one kiln has; use Automatic or Karras", scheduler.unwrap_or_default())),
    };
    let trimmed = name.trim();
    let (base, suffix_karras) = match trimmed.strip_suffix(" Karras") {
        Some(base) => (base, true),
        None => (trimmed, false),
    };
    let found = A1111_SAMPLERS.iter().find(|s| s.name.eq_ignore_ascii_case(base) || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(base)));
    if let Some(s) = found {
        return Ok((s.sampler, suffix_karras || karras.unwrap_or(s.karras_by_default)));
    }
    if let Ok(sampler) = trimmed.parse::<SamplerName>() {
        return Ok((sampler, karras.unwrap_or(false)));
    }
    let names: Vec<&str> = A1111_SAMPLERS.iter().map(|s| s.name).collect();
    Err(format!("sampler {name:?} is not one kiln has; A1111 names: {}; kiln names: {}", names.join(", "), SamplerName::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_names_and_schedules() {
        assert_eq!(resolve("Euler a", None).unwrap(), (SamplerName::EulerA, false));
        assert_eq!(resolve("DPM++ 2M", Some("Automatic")).unwrap(), (SamplerName::Dpmpp2m, true));
        assert_eq!(resolve("DPM++ 2M Karras", None).unwrap(), (SamplerName::Dpmpp2m, true));
        assert_eq!(resolve("Euler", Some("Karras")).unwrap(), (SamplerName::Euler, true));
        assert_eq!(resolve("k_euler_a", None).unwrap(), (SamplerName::EulerA, false));
        assert_eq!(resolve("euler-a", None).unwrap(), (SamplerName::EulerA, false));
        assert!(resolve("Euler", Some("Exponential")).unwrap_err().contains("Exponential"));
        assert!(resolve("Restart", None).unwrap_err().contains("DPM++ 2M"));
    }
}
