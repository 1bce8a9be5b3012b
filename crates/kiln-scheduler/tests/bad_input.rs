//! Bad input gives a typed error naming the value and what is allowed — never a panic.

use kiln_scheduler::{img2img_begin_index, SamplerName, SchedulerClass, SchedulerConfig, SchedulerError, StepOptions};

fn sd15() -> SchedulerConfig {
    SchedulerConfig::from_json_str(
        r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
            "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#,
        "sd15",
    )
    .unwrap()
}

#[test]
fn zero_steps_is_an_error_for_every_sampler() {
    for (name, sampler) in SamplerName::ALL {
        match sampler.build(&sd15(), 0, &StepOptions::default()) {
            Err(SchedulerError::ZeroSteps(0)) => {}
            other => panic!("{name}: expected ZeroSteps, got {:?}", other.map(|s| s.timesteps().to_vec())),
        }
    }
}

#[test]
fn more_steps_than_training_timesteps_is_an_error() {
    for (name, sampler) in SamplerName::ALL {
        match sampler.build(&sd15(), 1001, &StepOptions::default()) {
            Err(e @ SchedulerError::TooManySteps { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("1001") && msg.contains("1000"), "{name}: {msg}");
            }
            other => panic!("{name}: expected TooManySteps, got {:?}", other.map(|s| s.timesteps().len())),
        }
    }
}

#[test]
fn strength_outside_unit_interval_is_an_error() {
    for s in [-0.1, 1.5, f64::NAN] {
        let err = img2img_begin_index(20, s, 1).unwrap_err();
        assert!(matches!(err, SchedulerError::Strength(_)), "{s}: {err}");
        assert!(err.to_string().contains("[0, 1]"));
    }
    // strength so small that int(steps * strength) == 0 leaves no step to run
    let err = img2img_begin_index(10, 0.05, 1).unwrap_err();
    assert!(err.to_string().contains("0.05"), "{err}");
    // diffusers' get_timesteps: t_start = steps - int(steps * strength), times order
    assert_eq!(img2img_begin_index(10, 0.5, 1).unwrap(), 5);
    assert_eq!(img2img_begin_index(25, 0.75, 2).unwrap(), 14);
    assert_eq!(img2img_begin_index(10, 1.0, 1).unwrap(), 0);
}

#[test]
fn unknown_sampler_names_list_the_known_ones() {
    let err = "dpm++3m".parse::<SamplerName>().unwrap_err().to_string();
    assert!(err.contains("dpm++3m") && err.contains("dpm++2m-sde") && err.contains("euler-a"), "{err}");
    let err = SchedulerClass::from_class_name("FlowMatchLCMScheduler").unwrap_err().to_string();
    assert!(err.contains("FlowMatchLCMScheduler") && err.contains("FlowMatchEulerDiscreteScheduler"), "{err}");
    // names are case-insensitive like diffusers users type them
    assert_eq!("Euler-A".parse::<SamplerName>().unwrap(), SamplerName::EulerA);
}

#[test]
fn unsupported_config_values_are_named() {
    for (json, needles) in [
        (r#"{"beta_schedule": "cubic"}"#, vec!["beta_schedule", "cubic"]),
        (r#"{"prediction_type": "flow_prediction"}"#, vec!["prediction_type", "flow_prediction", "v_prediction"]),
        (r#"{"timestep_spacing": "middle"}"#, vec!["timestep_spacing", "middle", "trailing"]),
        (r#"{"num_train_timesteps": -5}"#, vec!["num_train_timesteps", "-5"]),
        (r#"{"steps_offset": "one"}"#, vec!["steps_offset", "one"]),
        (r#"{"num_train_timesteps": 100, "trained_betas": [0.1, 0.2]}"#, vec!["trained_betas", "2", "100"]),
    ] {
        let config = SchedulerConfig::from_json_str(json, "test").unwrap();
        for class in [SchedulerClass::Ddim, SchedulerClass::Euler] {
            let err = class.build(&config, 10, &StepOptions::default()).err().expect("an error").to_string();
            for n in &needles {
                assert!(err.contains(n), "{} with {json}: {err:?} should mention {n:?}", class.class_name());
            }
        }
    }
}

#[test]
fn malformed_and_missing_configs_are_errors() {
    let err = SchedulerConfig::from_file("/nonexistent/scheduler_config.json").unwrap_err();
    assert!(matches!(err, SchedulerError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/scheduler_config.json"));
    let err = SchedulerConfig::from_model_dir("/nonexistent/model").unwrap_err();
    assert!(err.to_string().contains("scheduler_config.json"), "{err}");
    assert!(matches!(SchedulerConfig::from_json_str("{\"a\": ", "x"), Err(SchedulerError::Json { .. })));
    assert!(SchedulerConfig::from_json_str(r#"{"_class_name": 5}"#, "x").is_err());
}

/// Found by kiln-fuzz (scheduler_config): `"solver_order": 2147483647` made the multistep
/// samplers allocate that many history slots up front (an allocation abort). Orders are refused
/// past MAX_SOLVER_ORDER, naming the range; the highest allowed order still builds.
#[test]
fn solver_orders_past_the_limit_are_refused() {
    use kiln_scheduler::MAX_SOLVER_ORDER;
    for class in [SchedulerClass::DpmSolverMultistep, SchedulerClass::Deis, SchedulerClass::UniPc, SchedulerClass::DpmSolverSinglestep] {
        for order in [0, MAX_SOLVER_ORDER + 1, 2147483647] {
            let config = SchedulerConfig::from_json_str(&format!(r#"{{"solver_order": {order}}}"#), "test").unwrap();
            let err = class.build(&config, 12, &StepOptions::default()).err().expect("an error").to_string();
            assert!(err.contains("solver_order") && err.contains(&order.to_string()) && err.contains(&format!("[1, {MAX_SOLVER_ORDER}]")), "{}: {err}", class.class_name());
        }
    }
    for class in [SchedulerClass::DpmSolverMultistep, SchedulerClass::Deis, SchedulerClass::UniPc] {
        let config = SchedulerConfig::from_json_str(&format!(r#"{{"solver_order": {MAX_SOLVER_ORDER}}}"#), "test").unwrap();
        assert!(class.build(&config, 12, &StepOptions::default()).is_ok(), "{}", class.class_name());
    }
}

/// The flow-matching samplers: what the pipeline must pass (mu under dynamic shifting, one custom
/// sigma per step) and the config numbers that would divide by zero are refused by name; on a
/// flow model only euler and heun are samplers.
#[test]
fn flow_matching_inputs_are_checked() {
    use kiln_scheduler::{SamplerChoice, MAX_FLOW_STEPS};
    let euler = SchedulerClass::FlowMatchEuler;
    let dev = SchedulerConfig::from_json_str(
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": true}"#,
        "flux-dev",
    )
    .unwrap();
    let err = euler.build(&dev, 10, &StepOptions::default()).err().expect("mu is required").to_string();
    assert!(err.contains("mu") && err.contains("use_dynamic_shifting"), "{err}");
    let nan_mu = StepOptions { mu: Some(f64::NAN), ..StepOptions::default() };
    assert!(euler.build(&dev, 10, &nan_mu).err().expect("NaN mu").to_string().contains("mu"));
    let with_mu = StepOptions { mu: Some(1.15), ..StepOptions::default() };
    assert_eq!(euler.build(&dev, 10, &with_mu).unwrap().timesteps().len(), 10);

    let three = StepOptions { sigmas: Some(vec![1.0, 0.6, 0.3]), ..StepOptions::default() };
    let err = euler.build(&dev.clone().with("use_dynamic_shifting", false), 4, &three).err().expect("count").to_string();
    assert!(err.contains("3 custom sigmas for 4 steps"), "{err}");
    let bad = StepOptions { sigmas: Some(vec![1.0, 0.0]), ..StepOptions::default() };
    assert!(euler.build(&SchedulerConfig::default(), 2, &bad).err().expect("σ = 0").to_string().contains("(0, 1]"));

    for (key, value) in [("shift", 0.0), ("shift", -3.0), ("shift_terminal", 1.0), ("shift_terminal", 2.5)] {
        let config = SchedulerConfig::default().with(key, value);
        let err = euler.build(&config, 10, &StepOptions::default()).err().expect("an error").to_string();
        assert!(err.contains(key) && err.contains(&value.to_string()), "{key} = {value}: {err}");
    }
    let err = SchedulerClass::FlowMatchHeun
        .build(&SchedulerConfig::default().with("shift", 0.0), 10, &StepOptions::default())
        .err()
        .expect("shift 0")
        .to_string();
    assert!(err.contains("shift"), "{err}");
    for class in [euler, SchedulerClass::FlowMatchHeun] {
        let err = class.build(&SchedulerConfig::default(), MAX_FLOW_STEPS + 1, &StepOptions::default()).err().unwrap();
        assert!(err.to_string().contains(&MAX_FLOW_STEPS.to_string()), "{err}");
        assert!(matches!(class.build(&SchedulerConfig::default(), 0, &StepOptions::default()), Err(SchedulerError::ZeroSteps(0))));
    }

    // on a flow model, euler and heun are the flow samplers; the others are refused by name
    let sd3 = SchedulerConfig::from_json_str(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}"#, "sd3")
        .unwrap();
    let pick = |name: &str| SamplerChoice { sampler: Some(name.parse().unwrap()), karras: false }.resolve(&sd3);
    assert_eq!(pick("euler").unwrap().0, SchedulerClass::FlowMatchEuler);
    assert_eq!(pick("heun").unwrap().0, SchedulerClass::FlowMatchHeun);
    let err = pick("dpm++2m").unwrap_err().to_string();
    assert!(err.contains("dpm++2m") && err.contains("FlowMatchEulerDiscreteScheduler") && err.contains("euler or heun"), "{err}");
    let karras = SamplerChoice { sampler: Some(SamplerName::Heun), karras: true };
    assert!(matches!(karras.resolve(&sd3), Err(SchedulerError::NoKarras { .. })));
    let karras = SamplerChoice { sampler: None, karras: true }.resolve(&sd3).unwrap();
    assert_eq!(karras.1.values["use_karras_sigmas"], true);
    // an SD model's euler stays EulerDiscreteScheduler
    let sd = SchedulerConfig::from_json_str(r#"{"_class_name": "PNDMScheduler"}"#, "sd").unwrap();
    let euler_sd = SamplerChoice { sampler: Some(SamplerName::Euler), karras: false }.resolve(&sd).unwrap();
    assert_eq!(euler_sd.0, SchedulerClass::Euler);
}
