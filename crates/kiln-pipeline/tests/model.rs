//! Model resolution on the fixture pipelines (assets/fixtures/models/{sd1,sd2,sdxl,inpaint}) and on
//! a fake Hub cache built from them in a temporary folder: pipeline kinds, component files, the
//! fp16 variant choice, `--vae`, offline Hub lookups, and the error for each broken layout.

use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::{mirror, TempDir};
use kiln_pipeline::model::{cached_snapshot, ComponentFiles};
use kiln_pipeline::{resolve, HubConfig, HubId, ModelError, ModelFolder, PipelineKind, ResolveOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("../../assets/fixtures/models").join(name).canonicalize().unwrap()
}

fn open(dir: &Path) -> Result<ModelFolder, ModelError> {
    ModelFolder::open(dir, &ResolveOptions::default())
}

#[test]
fn fixture_pipelines_resolve_to_their_kind_and_files() {
    let cases = [
        ("sd1", PipelineKind::StableDiffusion, "StableDiffusionPipeline"),
        ("sd2", PipelineKind::StableDiffusion, "StableDiffusionPipeline"),
        ("sdxl", PipelineKind::StableDiffusionXL, "StableDiffusionXLPipeline"),
        ("inpaint", PipelineKind::StableDiffusionInpaint, "StableDiffusionInpaintPipeline"),
    ];
    for (name, kind, class) in cases {
        let m = open(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((m.kind, m.class_name.as_str()), (kind, class), "{name}");
        let names: Vec<&str> = m.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, kind.required_components(), "{name}");
        assert_eq!(m.force_zeros_for_empty_prompt, kind == PipelineKind::StableDiffusionXL, "{name}");
        let unet = m.component("unet").unwrap();
        assert_eq!(unet.class_name, "UNet2DConditionModel");
        let w = unet.weights().unwrap();
        assert_eq!((w.path.clone(), w.variant.clone()), (fixture(name).join("unet/diffusion_pytorch_model.safetensors"), None));
        let te = m.component("text_encoder").unwrap();
        assert_eq!(te.weights().unwrap().path, fixture(name).join("text_encoder/model.safetensors"));
        assert_eq!(te.config().unwrap(), fixture(name).join("text_encoder/config.json"));
        assert_eq!(m.component("scheduler").unwrap().config().unwrap(), fixture(name).join("scheduler/scheduler_config.json"));
        match &m.component("tokenizer").unwrap().files {
            ComponentFiles::Tokenizer { vocab, merges, .. } => {
                assert!(vocab.as_ref().unwrap().is_file() && merges.as_ref().unwrap().is_file(), "{name}");
            }
            other => panic!("{name}: tokenizer files {other:?}"),
        }
    }
    // sdxl's second tokenizer ships tokenizer.json (plus vocab/merges)
    let m = open(&fixture("sdxl")).unwrap();
    let te2 = m.component("text_encoder_2").unwrap();
    assert_eq!(te2.class_name, "CLIPTextModelWithProjection");
    match &m.component("tokenizer_2").unwrap().files {
        ComponentFiles::Tokenizer { tokenizer_json, .. } => assert!(tokenizer_json.is_some()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn force_zeros_for_empty_prompt_follows_model_index() {
    let tmp = TempDir::new("zeros");
    mirror(&fixture("sdxl"), &tmp.0, &|rel| rel == "model_index.json");
    let mut index: serde_json::Value = serde_json::from_str(&fs::read_to_string(fixture("sdxl").join("model_index.json")).unwrap()).unwrap();
    index["force_zeros_for_empty_prompt"] = false.into();
    fs::write(tmp.0.join("model_index.json"), index.to_string()).unwrap();
    assert!(!open(&tmp.0).unwrap().force_zeros_for_empty_prompt);
    index.as_object_mut().unwrap().remove("force_zeros_for_empty_prompt");
    fs::write(tmp.0.join("model_index.json"), index.to_string()).unwrap();
    assert!(open(&tmp.0).unwrap().force_zeros_for_empty_prompt, "diffusers' default is true");
}

#[test]
fn fp16_variant_is_preferred_only_when_asked() {
    let tmp = TempDir::new("fp16");
    mirror(&fixture("sd1"), &tmp.0, &|_| false);
    let fp16 = tmp.0.join("unet/diffusion_pytorch_model.fp16.safetensors");
    std::os::unix::fs::symlink(fixture("sd1").join("unet/diffusion_pytorch_model.safetensors"), &fp16).unwrap();
    let plain = open(&tmp.0).unwrap();
    assert_eq!(plain.component("unet").unwrap().weights().unwrap().variant, None);
    let opts = ResolveOptions { prefer_fp16: true, ..Default::default() };
    let m = ModelFolder::open(&tmp.0, &opts).unwrap();
    let w = m.component("unet").unwrap().weights().unwrap();
    assert_eq!((w.path.clone(), w.variant.as_deref()), (fp16.clone(), Some("fp16")));
    // components without the variant fall back to the plain file
    assert_eq!(m.component("vae").unwrap().weights().unwrap().variant, None);
    // only the variant present: used even when not preferred
    fs::remove_file(tmp.0.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(open(&tmp.0).unwrap().component("unet").unwrap().weights().unwrap().path, fp16);
}

#[test]
fn vae_override() {
    // a VAE folder (config.json at its root) ...
    let m = ModelFolder::open(&fixture("sdxl"), &ResolveOptions { vae: Some(fixture("sd1").join("vae").display().to_string()), ..Default::default() }).unwrap();
    let vae = m.component("vae").unwrap();
    assert_eq!(vae.dir, fixture("sd1").join("vae"));
    assert_eq!(vae.weights().unwrap().path, fixture("sd1").join("vae/diffusion_pytorch_model.safetensors"));
    // ... or a model folder holding vae/
    let m = ModelFolder::open(&fixture("sd2"), &ResolveOptions { vae: Some(fixture("sd1").display().to_string()), ..Default::default() }).unwrap();
    assert_eq!(m.component("vae").unwrap().dir, fixture("sd1").join("vae"));
    // the model's own VAE folder need not be complete then
    let tmp = TempDir::new("novae");
    mirror(&fixture("sd1"), &tmp.0, &|rel| rel.starts_with("vae"));
    assert!(matches!(open(&tmp.0), Err(ModelError::MissingComponentDir { .. })));
    let m = ModelFolder::open(&tmp.0, &ResolveOptions { vae: Some(fixture("sd1").join("vae").display().to_string()), ..Default::default() }).unwrap();
    assert_eq!(m.component("vae").unwrap().dir, fixture("sd1").join("vae"));
    // not a VAE
    let err = ModelFolder::open(&fixture("sd1"), &ResolveOptions { vae: Some(fixture("sd1").join("unet").display().to_string()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("the VAE must be an AutoencoderKL, this config is a UNet2DConditionModel"), "{err}");
    let err = ModelFolder::open(&fixture("sd1"), &ResolveOptions { vae: Some(fixture("sd1").join("scheduler").display().to_string()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("not a VAE folder: no config.json"), "{err}");
    let err = ModelFolder::open(&fixture("sd1"), &ResolveOptions { vae: Some("/no/such/vae".into()), ..Default::default() }).unwrap_err();
    assert_eq!(err.to_string(), "model folder /no/such/vae does not exist");
}

/// Each broken layout gives an error naming the missing or bad file.
#[test]
fn broken_folders_name_what_is_wrong() {
    let broken = |tag: &str, skip: &dyn Fn(&str) -> bool, edit: &dyn Fn(&Path)| -> (TempDir, String) {
        let tmp = TempDir::new(tag);
        mirror(&fixture("sdxl"), &tmp.0, skip);
        edit(&tmp.0);
        let err = open(&tmp.0).expect_err(tag).to_string();
        (tmp, err)
    };
    let none = |_: &Path| {};
    let (t, e) = broken("nounet", &|r| r.starts_with("unet"), &none);
    assert_eq!(e, format!("{}: the `unet` component folder is missing", t.0.join("unet").display()));
    let (t, e) = broken("noweights", &|r| r == "unet/diffusion_pytorch_model.safetensors", &none);
    assert_eq!(
        e,
        format!(
            "{}: no weights for `unet` (expected diffusion_pytorch_model.safetensors or diffusion_pytorch_model.fp16.safetensors)",
            t.0.join("unet").display()
        )
    );
    let (t, e) = broken("noconfig", &|r| r == "text_encoder_2/config.json", &none);
    assert_eq!(e, format!("missing {} (the config of `text_encoder_2`)", t.0.join("text_encoder_2/config.json").display()));
    let (t, e) = broken("nosched", &|r| r == "scheduler/scheduler_config.json", &none);
    assert_eq!(e, format!("missing {} (the scheduler config of `scheduler`)", t.0.join("scheduler/scheduler_config.json").display()));
    let (t, e) = broken("notok", &|r| r.starts_with("tokenizer/") && r != "tokenizer/tokenizer_config.json", &none);
    assert_eq!(e, format!("{}: `tokenizer` has no tokenizer.json and no vocab.json and merges.txt", t.0.join("tokenizer").display()));
    let (t, e) = broken("nomerges", &|r| r == "tokenizer/merges.txt", &none);
    assert_eq!(e, format!("{}: `tokenizer` has no tokenizer.json and no merges.txt", t.0.join("tokenizer").display()));
    // (pickle-only components load: tests/pickle_weights.rs)
    // a sharded checkpoint's index is the component's weights; a broken one fails the load naming
    // the index (sharded loading itself: tests/sharded.rs)
    let t = TempDir::new("sharded");
    mirror(&fixture("sdxl"), &t.0, &|r| r == "unet/diffusion_pytorch_model.safetensors");
    fs::write(t.0.join("unet/diffusion_pytorch_model.safetensors.index.json"), b"{}").unwrap();
    let folder = open(&t.0).expect("a sharded index is a component's weights");
    assert!(folder.component("unet").unwrap().weights().unwrap().path.ends_with("diffusion_pytorch_model.safetensors.index.json"));
    let e = kiln_pipeline::StableDiffusion::load(&t.0, &kiln_pipeline::LoadOptions::new(&burn::tensor::Device::flex())).err().expect("no weight_map").to_string();
    assert!(e.contains("weight_map") && e.contains("index.json"), "{e}");
    let (t, e) = broken("noindex", &|r| r == "model_index.json", &none);
    assert_eq!(e, format!("{} is not a diffusers model folder: it has no model_index.json", t.0.display()));
    let edit_index = |f: fn(&mut serde_json::Value)| {
        move |d: &Path| {
            let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(fixture("sdxl").join("model_index.json")).unwrap()).unwrap();
            f(&mut v);
            fs::write(d.join("model_index.json"), v.to_string()).unwrap();
        }
    };
    let (_, e) = broken("unsupported", &|r| r == "model_index.json", &edit_index(|v| v["_class_name"] = "FluxFillPipeline".into()));
    assert!(e.contains("pipeline class `FluxFillPipeline` is not supported; kiln runs StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusion3Pipeline, StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, FluxPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline"), "{e}");
    let (t, e) = broken("refiner", &|r| r == "model_index.json", &edit_index(|v| v["text_encoder"] = serde_json::json!([null, null])));
    assert_eq!(
        e,
        format!("{}: StableDiffusionXLPipeline needs a `text_encoder` component, but model_index.json has none", t.0.join("model_index.json").display())
    );
    let (t, e) = broken("badjson", &|r| r == "model_index.json", &|d| fs::write(d.join("model_index.json"), b"{ not json").unwrap());
    assert!(e.starts_with(&format!("{} is not valid JSON: ", t.0.join("model_index.json").display())), "{e}");
    // a file, and a missing folder
    let e = open(&fixture("sd1").join("model_index.json")).unwrap_err().to_string();
    assert!(e.ends_with("model_index.json is a file, not a diffusers model folder (model_index.json plus component subfolders)"), "{e}");
    assert_eq!(open(Path::new("/no/such/model")).unwrap_err().to_string(), "model folder /no/such/model does not exist");
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// `$HF_HOME/hub/models--org--name/{refs/main, snapshots/<sha>/...}` with the sd1 fixture.
fn fake_cache(tag: &str) -> TempDir {
    let tmp = TempDir::new(tag);
    let repo = tmp.0.join("hub/models--kiln-test--tiny-sd");
    mirror(&fixture("sd1"), &repo.join("snapshots").join(SHA), &|rel| rel == "reference.safetensors");
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), SHA).unwrap();
    tmp
}

#[test]
fn hub_ids_resolve_offline_from_the_cache() {
    let home = fake_cache("hub");
    let hub = HubConfig::offline(home.0.join("hub"));
    let snapshot = home.0.join("hub/models--kiln-test--tiny-sd/snapshots").join(SHA);
    for spec in ["kiln-test/tiny-sd", "kiln-test/tiny-sd@main", &format!("kiln-test/tiny-sd@{SHA}")] {
        let m = resolve(spec, &ResolveOptions::default(), &hub).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!((m.root.clone(), m.name.as_str(), m.kind), (snapshot.clone(), spec, PipelineKind::StableDiffusion), "{spec}");
        assert_eq!(m.component("unet").unwrap().weights().unwrap().path, snapshot.join("unet/diffusion_pytorch_model.safetensors"));
    }
    // a Hub VAE from the cache, too
    let m = resolve("kiln-test/tiny-sd", &ResolveOptions { vae: Some("kiln-test/tiny-sd".into()), ..Default::default() }, &hub).unwrap();
    assert_eq!(m.component("vae").unwrap().dir, snapshot.join("vae"));
    // a local folder wins over the cache
    let m = resolve(fixture("sd2").to_str().unwrap(), &ResolveOptions::default(), &hub).unwrap();
    assert_eq!(m.root, fixture("sd2"));
}

#[test]
fn hub_cache_misses_name_the_id_and_the_cache() {
    let home = fake_cache("miss");
    let cache = home.0.join("hub");
    let hub = HubConfig::offline(&cache);
    let err = resolve("kiln-test/other", &ResolveOptions::default(), &hub).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "Hub model kiln-test/other is not in the Hub cache {}: no models--kiln-test--other folder (HF_HUB_OFFLINE is set, so kiln does not download)",
            cache.display()
        )
    );
    let err = resolve("kiln-test/tiny-sd@v2", &ResolveOptions::default(), &hub).unwrap_err().to_string();
    assert!(err.starts_with("Hub model kiln-test/tiny-sd@v2 is not in the Hub cache"), "{err}");
    assert!(err.contains("revision `v2` was never fetched (no "), "{err}");
    // a ref pointing at a snapshot that is gone
    fs::write(cache.join("models--kiln-test--tiny-sd/refs/main"), "f".repeat(40)).unwrap();
    let err = cached_snapshot(&cache, &HubId::parse("kiln-test/tiny-sd").unwrap(), true).unwrap_err().to_string();
    assert!(err.contains(&format!("revision `main` points at commit {}, whose snapshot folder is missing", "f".repeat(40))), "{err}");
    // a snapshot missing a file fails like a local folder, naming the file
    fs::write(cache.join("models--kiln-test--tiny-sd/refs/main"), SHA).unwrap();
    fs::remove_file(cache.join("models--kiln-test--tiny-sd/snapshots").join(SHA).join("vae/config.json")).unwrap();
    let err = resolve("kiln-test/tiny-sd", &ResolveOptions::default(), &hub).unwrap_err().to_string();
    assert!(err.ends_with("vae/config.json (the config of `vae`)"), "{err}");
    // neither a folder nor an id
    assert_eq!(
        resolve("tiny-sd", &ResolveOptions::default(), &hub).unwrap_err().to_string(),
        "`tiny-sd` is neither an existing folder nor a Hub id (org/name or org/name@revision)"
    );
    assert_eq!(resolve("./models/sd", &ResolveOptions::default(), &hub).unwrap_err().to_string(), "model folder ./models/sd does not exist");
}
