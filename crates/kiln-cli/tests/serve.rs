//! `kiln serve` through clients: async-openai (a real OpenAI client no one here wrote) and plain
//! HTTP for the A1111 routes, jobs and bad requests. A served picture must be the very PNG
//! `kiln generate` writes for the same request (bytes, parameters text included).

mod common;

use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::images::{CreateImageRequest, Image, ImageModel, ImageResponseFormat, ImageSize};
use async_openai::Client;
use base64::Engine as _;
use common::{demo_model, kiln, repo_root, Server, TempDir};
use serde_json::{json, Value};

const PROMPT: &str = "a red circle on a blue background";

/// `kiln generate --model DEMO ARGS… --output DIR/NAME`: the PNG's bytes.
fn generate(dir: &TempDir, name: &str, args: &[&str]) -> Vec<u8> {
    generate_with(&demo_model(), dir, name, args)
}

/// `kiln generate --model MODEL ARGS… --output DIR/NAME` (with `--num-images N`, NAME-1, …);
/// the bytes of NAME when there is one image.
fn generate_with(model: &str, dir: &TempDir, name: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.0.join(name);
    let mut all = vec!["generate", "--model", model, "--output", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let run = kiln(&all);
    assert!(run.status.success(), "kiln {all:?}: {}", String::from_utf8_lossy(&run.stderr));
    std::fs::read(&out).unwrap_or_default()
}

/// The tiny SD 1.x model of the parity tests: its text encoder takes A1111's 77-token chunks
/// (the demo model's takes 16).
fn sd1_model() -> String {
    repo_root().join("assets/fixtures/models/sd1").to_string_lossy().into_owned()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The `parameters` text of a PNG.
fn infotext(png: &[u8]) -> String {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters").map(|t| t.text.clone()).unwrap_or_default()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn openai_client_gets_the_png_kiln_generate_writes() {
    let server = Server::start(&["--api-key", "sk-test"]);
    let dir = TempDir::new("serve-openai");
    server.wait_ready();
    runtime().block_on(async {
        let client = Client::with_config(OpenAIConfig::new().with_api_base(server.url("/v1")).with_api_key("sk-test"));
        // OpenAI's fields only: kiln generate's defaults (30 steps, guidance 7.5, seed 0, the model's sampler)
        #[allow(deprecated)]
        let request = CreateImageRequest {
            prompt: PROMPT.into(),
            model: ImageModel::Other("kiln-shapes".into()),
            n: Some(1),
            size: Some(ImageSize::Other("64x64".into())),
            response_format: Some(ImageResponseFormat::B64Json),
            ..Default::default()
        };
        let response = client.images().generate(request.clone()).await.expect("the OpenAI client generates");
        assert_eq!(response.data.len(), 1);
        let Image::B64Json { b64_json, .. } = response.data[0].as_ref() else { panic!("asked for b64_json: {:?}", response.data[0]) };
        let served = unb64(b64_json);
        let expected = generate(&dir, "openai.png", &["--prompt", PROMPT, "--width", "64", "--height", "64"]);
        assert_eq!(served, expected, "the served PNG differs from kiln generate's");
        assert!(infotext(&served).contains("Steps: 30"), "{}", infotext(&served));

        // response_format url: the same bytes from kiln's file route
        #[allow(deprecated)]
        let by_url = CreateImageRequest { response_format: Some(ImageResponseFormat::Url), ..request.clone() };
        let response = client.images().generate(by_url).await.unwrap();
        let Image::Url { url, .. } = response.data[0].as_ref() else { panic!("asked for a url") };
        let fetched = reqwest::get(url).await.unwrap().bytes().await.unwrap();
        assert_eq!(fetched.as_ref(), expected.as_slice());

        // the served models, through the client
        let models = client.models().list().await.expect("GET /v1/models");
        assert_eq!(models.data.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["kiln-shapes"]);

        // a wrong key: the client reads kiln's 401 as an OpenAI error
        let wrong = Client::with_config(OpenAIConfig::new().with_api_base(server.url("/v1")).with_api_key("sk-wrong"));
        match wrong.images().generate(request.clone()).await {
            Err(async_openai::error::OpenAIError::ApiError(e)) => {
                assert_eq!(e.api_error.r#type.as_deref(), Some("authentication_error"), "{e:?}");
                assert!(e.api_error.message.contains("API key"), "{e:?}");
            }
            other => panic!("a wrong key must be refused with OpenAI's error shape: {other:?}"),
        }
        // an unknown model: OpenAI's error shape, naming the field
        #[allow(deprecated)]
        let unknown = CreateImageRequest { model: ImageModel::Other("dall-e-3".into()), ..request.clone() };
        match client.images().generate(unknown).await {
            Err(async_openai::error::OpenAIError::ApiError(e)) => {
                assert_eq!(e.api_error.param.as_deref(), Some("model"), "{e:?}");
                assert!(e.api_error.message.contains("kiln-shapes"), "names the served models: {e:?}");
            }
            other => panic!("an unknown model must be refused: {other:?}"),
        }

        // kiln's own fields in the same body: the picture of the same kiln generate flags
        let http = reqwest::Client::new();
        let body = json!({"model": "kiln-shapes", "prompt": PROMPT, "size": "64x40", "response_format": "b64_json", "n": 2,
            "steps": 6, "seed": 42, "guidance_scale": 5.5, "scheduler": "euler-a", "negative_prompt": "green"});
        let v: Value = http.post(server.url("/v1/images/generations")).bearer_auth("sk-test").json(&body).send().await.unwrap().json().await.unwrap();
        let served: Vec<Vec<u8>> = v["data"].as_array().unwrap().iter().map(|d| unb64(d["b64_json"].as_str().unwrap())).collect();
        let args = ["--prompt", PROMPT, "--width", "64", "--height", "40", "--num-images", "2", "--steps", "6", "--seed", "42", "--guidance-scale", "5.5", "--scheduler", "euler-a", "--negative-prompt", "green"];
        generate(&dir, "flags.png", &args); // writes flags-1.png, flags-2.png
        for (i, png) in served.iter().enumerate() {
            let expected = std::fs::read(dir.0.join(format!("flags-{}.png", i + 1))).unwrap();
            assert_eq!(png, &expected, "image {i} with kiln's fields");
        }

        // edits: img2img and inpainting from multipart uploads, as kiln generate --init-image / --mask
        let init = generate(&dir, "init.png", &["--prompt", "a green square", "--width", "64", "--height", "64", "--steps", "4"]);
        let mut mask = image::GrayImage::new(64, 64);
        for (x, _, p) in mask.enumerate_pixels_mut() {
            p.0[0] = if x >= 32 { 255 } else { 0 };
        }
        let mask_file = dir.0.join("mask.png");
        mask.save(&mask_file).unwrap();
        let init_file = dir.0.join("init.png");
        for with_mask in [false, true] {
            let mut form = reqwest::multipart::Form::new()
                .text("model", "kiln-shapes")
                .text("prompt", PROMPT)
                .text("response_format", "b64_json")
                .text("steps", "8")
                .text("seed", "3")
                .part("image", reqwest::multipart::Part::bytes(init.clone()).file_name("init.png").mime_str("image/png").unwrap());
            let mut args = vec!["--prompt", PROMPT, "--steps", "8", "--seed", "3", "--init-image", init_file.to_str().unwrap()];
            if with_mask {
                form = form.part("mask", reqwest::multipart::Part::bytes(std::fs::read(&mask_file).unwrap()).file_name("mask.png").mime_str("image/png").unwrap());
                args.extend(["--mask", mask_file.to_str().unwrap()]);
            }
            let response = http.post(server.url("/v1/images/edits")).bearer_auth("sk-test").multipart(form).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let v: Value = response.json().await.unwrap();
            let served = unb64(v["data"][0]["b64_json"].as_str().unwrap());
            let expected = generate(&dir, if with_mask { "inpaint.png" } else { "img2img.png" }, &args);
            assert_eq!(served, expected, "edits (mask: {with_mask}) must equal kiln generate's picture");
        }
    });
}

/// The A1111 fixture's fields.
fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join("assets/fixtures/a1111_api/models.json")).unwrap()).unwrap()
}

/// `value` has exactly the fixture model's fields, each of its type.
fn assert_shape(what: &str, value: &Value, model: &Value) {
    let object = value.as_object().unwrap_or_else(|| panic!("{what}: an object, got {value}"));
    let fields = model.as_object().unwrap();
    for (key, ty) in fields {
        let ty = ty.as_str().unwrap();
        let (ty, nullable) = ty.strip_suffix('?').map(|t| (t, true)).unwrap_or((ty, false));
        let v = object.get(key).unwrap_or_else(|| panic!("{what}: no field {key}: {value}"));
        let ok = match ty {
            _ if v.is_null() => nullable,
            "str" => v.is_string(),
            "int" => v.is_i64() || v.is_u64(),
            "float" => v.is_number(),
            "bool" => v.is_boolean(),
            "list" => v.is_array(),
            "dict" => v.is_object(),
            _ => true,
        };
        assert!(ok, "{what}.{key} must be {ty}{}, got {v}", if nullable { " or null" } else { "" });
    }
    for key in object.keys() {
        assert!(fields.contains_key(key), "{what}: field {key} is not in A1111's model");
    }
}

#[test]
fn a1111_routes_have_a1111s_shapes_and_kiln_generates_pictures() {
    let sd1 = format!("sd1={}", sd1_model());
    let loras = repo_root().join("assets/fixtures/loras");
    let server = Server::start(&["--model", &sd1, "--lora-dir", loras.to_str().unwrap()]);
    let dir = TempDir::new("serve-a1111");
    let fx = fixture();
    server.wait_ready();
    runtime().block_on(async {
        let http = reqwest::Client::new();
        let post = |path: &str, body: Value| {
            let request = http.post(server.url(path)).json(&body);
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        // txt2img on the sd1 model (override_settings), a batch of 2: image i is `kiln generate
        // --seed S+i` under A1111's prompt syntax
        let body = json!({"prompt": "a (red:1.2) circle on a blue background", "negative_prompt": "", "seed": 7, "steps": 6,
            "cfg_scale": 6, "width": 64, "height": 48, "batch_size": 2, "sampler_name": "Euler a",
            "override_settings": {"sd_model_checkpoint": "sd1"},
            "enable_hr": false, "alwayson_scripts": {}, "restore_faces": false, "tiling": false});
        let (status, v) = post("/sdapi/v1/txt2img", body.clone()).await;
        assert_eq!(status, 200, "{v}");
        assert_shape("TextToImageResponse", &v, &fx["TextToImageResponse"]);
        let images: Vec<Vec<u8>> = v["images"].as_array().unwrap().iter().map(|i| unb64(i.as_str().unwrap())).collect();
        assert_eq!(images.len(), 2);
        for (i, png) in images.iter().enumerate() {
            let seed = (7 + i).to_string();
            let expected = generate_with(&sd1_model(), &dir, &format!("t{i}.png"), &["--prompt", "a (red:1.2) circle on a blue background", "--prompt-syntax", "a1111",
                "--seed", &seed, "--steps", "6", "--guidance-scale", "6", "--width", "64", "--height", "48", "--scheduler", "euler-a"]);
            assert_eq!(png, &expected, "txt2img image {i}");
        }
        // parameters: the request over A1111's defaults, field for field
        let parameters = v["parameters"].as_object().unwrap();
        for (key, default) in fx["txt2img_request"].as_object().unwrap() {
            let got = parameters.get(key).unwrap_or_else(|| panic!("parameters has no {key}"));
            let sent = body.get(key).unwrap_or(default);
            assert_eq!(got, sent, "parameters.{key}");
        }
        let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
        for key in fx["Processed.js"].as_array().unwrap() {
            assert!(info.get(key.as_str().unwrap()).is_some(), "info has no {key}: {info}");
        }
        assert_eq!(info["all_seeds"], json!([7, 8]));
        assert_eq!(info["infotexts"][0].as_str().unwrap(), infotext(&images[0]), "info carries the PNG's parameters text");
        assert_eq!(info["warnings"], json!([]), "fields at A1111's defaults are not warned about");
        assert_eq!(info["sd_model_name"], "sd1");

        // the demo model's text encoder takes 16 tokens, too few for A1111's chunks: its prompts
        // are read as plain text, with a warning, as kiln generate reads them by default
        let (status, v) = post("/sdapi/v1/txt2img", json!({"prompt": "a red circle on a blue background", "seed": 3, "steps": 5,
            "width": 64, "height": 64, "sampler_name": "DDIM"})).await;
        assert_eq!(status, 200, "{v}");
        let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
        assert!(info["warnings"].to_string().contains("plain text"), "{info}");
        let expected = generate(&dir, "demo.png", &["--prompt", "a red circle on a blue background", "--seed", "3", "--steps", "5",
            "--guidance-scale", "7", "--width", "64", "--height", "64", "--scheduler", "ddim"]);
        assert_eq!(unb64(v["images"][0].as_str().unwrap()), expected, "the demo model through txt2img");

        // LoRAs: <lora:NAME:W> in an A1111 prompt, `loras` in an OpenAI body; merged for the request,
        // the pictures of kiln generate with the same LoRA (its hash in the parameters text too)
        let (status, v) = post("/sdapi/v1/txt2img", json!({"prompt": "a red circle <lora:sd1-kohya:0.7>", "seed": 2, "steps": 4,
            "width": 64, "height": 48, "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "sd1"}})).await;
        assert_eq!(status, 200, "{v}");
        let served = unb64(v["images"][0].as_str().unwrap());
        let expected = generate_with(&sd1_model(), &dir, "lora-a1111.png", &["--prompt", "a red circle <lora:sd1-kohya:0.7>", "--prompt-syntax", "a1111",
            "--lora-dir", loras.to_str().unwrap(), "--seed", "2", "--steps", "4", "--guidance-scale", "7", "--width", "64", "--height", "48", "--scheduler", "euler"]);
        assert_eq!(served, expected, "an A1111 prompt's <lora:…>");
        assert!(infotext(&served).contains("Lora hashes: \"sd1-kohya: "), "{}", infotext(&served));
        let lora_file = format!("{}:-0.4", loras.join("sd1-peft.safetensors").display());
        let r: Value = http.post(server.url("/v1/images/generations")).json(&json!({"model": "sd1", "prompt": "a red circle", "size": "64x48",
            "steps": 4, "seed": 2, "response_format": "b64_json", "loras": [{"name": "sd1-peft", "scale": -0.4}]})).send().await.unwrap().json().await.unwrap();
        let served = unb64(r["data"][0]["b64_json"].as_str().unwrap());
        let expected = generate_with(&sd1_model(), &dir, "lora-openai.png", &["--prompt", "a red circle", "--lora", &lora_file, "--seed", "2", "--steps", "4",
            "--width", "64", "--height", "48"]);
        assert_eq!(served, expected, "an OpenAI body's loras");
        // and without LoRAs again: the model's own weights, restored
        let r: Value = http.post(server.url("/v1/images/generations")).json(&json!({"model": "sd1", "prompt": "a red circle", "size": "64x48",
            "steps": 4, "seed": 2, "response_format": "b64_json"})).send().await.unwrap().json().await.unwrap();
        let expected = generate_with(&sd1_model(), &dir, "no-lora.png", &["--prompt", "a red circle", "--seed", "2", "--steps", "4", "--width", "64", "--height", "48"]);
        assert_eq!(unb64(r["data"][0]["b64_json"].as_str().unwrap()), expected, "LoRAs unloaded");
        // a LoRA name that is a path, or is not there
        for (name, needle) in [("../sd1-kohya", "without a folder"), ("nope", "no nope.safetensors")] {
            let r = http.post(server.url("/v1/images/generations")).json(&json!({"model": "sd1", "prompt": "a", "loras": [{"name": name}]})).send().await.unwrap();
            assert_eq!(r.status(), 400);
            let v: Value = r.json().await.unwrap();
            assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{v}");
        }

        // unknown or unsupported fields: accepted, named in info's warnings
        let (status, v) = post("/sdapi/v1/txt2img", json!({"prompt": "a circle", "steps": 2, "width": 64, "height": 64, "seed": 1,
            "enable_hr": true, "hr_scale": 2, "alwayson_scripts": {"ControlNet": {"args": []}}, "my_extension_field": 1})).await;
        assert_eq!(status, 200, "{v}");
        let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
        let warnings = info["warnings"].to_string();
        for name in ["enable_hr", "alwayson_scripts", "my_extension_field"] {
            assert!(warnings.contains(name), "{name} warned about: {warnings}");
        }

        // img2img and inpainting: kiln generate --init-image [--mask] --strength 0.75 (A1111's default)
        let init = images[0].clone();
        let init_file = dir.0.join("t0.png");
        let mut mask = image::GrayImage::new(64, 48);
        for (_, y, p) in mask.enumerate_pixels_mut() {
            p.0[0] = if y < 20 { 255 } else { 0 };
        }
        let mask_file = dir.0.join("mask.png");
        mask.save(&mask_file).unwrap();
        for with_mask in [false, true] {
            let mut body = json!({"prompt": "a blue circle", "init_images": [b64(&init)], "seed": 11, "steps": 6, "width": 64, "height": 48,
                "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 7, "override_settings": {"sd_model_checkpoint": "sd1"}});
            let mut args = vec!["--prompt", "a blue circle", "--prompt-syntax", "a1111", "--init-image", init_file.to_str().unwrap(), "--strength", "0.75",
                "--seed", "11", "--steps", "6", "--guidance-scale", "7", "--scheduler", "dpm++2m", "--karras"];
            if with_mask {
                body["mask"] = json!(b64(&std::fs::read(&mask_file).unwrap()));
                args.extend(["--mask", mask_file.to_str().unwrap()]);
            }
            let (status, v) = post("/sdapi/v1/img2img", body).await;
            assert_eq!(status, 200, "{v}");
            assert_shape("ImageToImageResponse", &v, &fx["ImageToImageResponse"]);
            let served = unb64(v["images"][0].as_str().unwrap());
            let expected = generate_with(&sd1_model(), &dir, if with_mask { "i1.png" } else { "i0.png" }, &args);
            assert_eq!(served, expected, "img2img (mask: {with_mask})");
            let parameters = v["parameters"].as_object().unwrap();
            for key in fx["img2img_request"].as_object().unwrap().keys() {
                assert!(parameters.contains_key(key), "img2img parameters has no {key}");
            }
        }

        // the listing routes
        let get = |path: &str| {
            let request = http.get(server.url(path));
            async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let models = get("/sdapi/v1/sd-models").await;
        assert_eq!(models.as_array().unwrap().len(), 2);
        for m in models.as_array().unwrap() {
            assert_shape("SDModelItem", m, &fx["SDModelItem"]);
        }
        assert_eq!(models[0]["model_name"], "kiln-shapes");
        assert_eq!(models[1]["model_name"], "sd1");
        let samplers = get("/sdapi/v1/samplers").await;
        for s in samplers.as_array().unwrap() {
            assert_shape("SamplerItem", s, &fx["SamplerItem"]);
        }
        let names: Vec<&str> = samplers.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        for name in ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC", "Heun", "LMS"] {
            assert!(names.contains(&name), "samplers lists {name}: {names:?}");
        }
        for s in get("/sdapi/v1/schedulers").await.as_array().unwrap() {
            assert_shape("SchedulerItem", s, &fx["SchedulerItem"]);
        }
        let progress = get("/sdapi/v1/progress").await;
        assert_shape("ProgressResponse", &progress, &fx["ProgressResponse"]);
        for key in fx["ProgressResponse.state"].as_array().unwrap() {
            assert!(progress["state"].get(key.as_str().unwrap()).is_some(), "progress.state has no {key}");
        }
        // options: sd_model_checkpoint names the model; switching to one not served is refused
        assert_eq!(get("/sdapi/v1/options").await["sd_model_checkpoint"], "kiln-shapes");
        let (status, _) = post("/sdapi/v1/options", json!({"sd_model_checkpoint": "sd1"})).await;
        assert_eq!(status, 200);
        assert_eq!(get("/sdapi/v1/options").await["sd_model_checkpoint"], "sd1");
        // requests that name no model now go to sd1
        let (status, v) = post("/sdapi/v1/txt2img", json!({"prompt": "a circle", "steps": 2, "width": 64, "height": 48, "seed": 1})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(serde_json::from_str::<Value>(v["info"].as_str().unwrap()).unwrap()["sd_model_name"], "sd1");
        let (status, v) = post("/sdapi/v1/options", json!({"sd_model_checkpoint": "sd_xl_base_1.0"})).await;
        assert_eq!(status, 404, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("kiln-shapes"), "{v}");
    });
}

/// Reads server-sent events from `response` until `until` returns true for an event name.
async fn read_events(response: reqwest::Response, mut until: impl FnMut(&str, &Value) -> bool) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut response = response;
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(120), response.chunk()).await.expect("an event within 120 s") {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let name = block.lines().find_map(|l| l.strip_prefix("event:")).map(|s| s.trim().to_string());
            let data = block.lines().find_map(|l| l.strip_prefix("data:")).map(|s| s.trim().to_string());
            if let (Some(name), Some(data)) = (name, data) {
                let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                let stop = until(&name, &value);
                events.push((name, value));
                if stop {
                    return events;
                }
            }
        }
    }
    events
}

#[test]
fn jobs_report_progress_and_cancel_and_interrupt_stop_at_the_next_step() {
    let server = Server::start(&["--max-steps", "400"]);
    server.wait_ready();
    runtime().block_on(async {
        let http = reqwest::Client::new();
        // a job that runs to its end: 202, events queued → step … → done with the image
        let response = http.post(server.url("/v1/jobs")).json(&json!({"prompt": PROMPT, "size": "64x64", "steps": 4, "seed": 5})).send().await.unwrap();
        assert_eq!(response.status(), 202);
        let created: Value = response.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_string();
        assert!(created["queue_position"].is_u64(), "{created}");
        let events = read_events(http.get(server.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap(), |name, _| name == "done" || name == "error").await;
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.last(), Some(&"done"), "{names:?}");
        let done = &events.last().unwrap().1;
        let png = unb64(done["data"][0]["b64_json"].as_str().unwrap());
        assert!(infotext(&png).contains("Seed: 5"), "{}", infotext(&png));
        let polled: Value = http.get(server.url(&format!("/v1/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(polled["status"], "succeeded");
        assert_eq!(polled["data"], done["data"]);

        // a long job, cancelled once it runs: it stops at the next step
        let created: Value = http.post(server.url("/v1/jobs")).json(&json!({"prompt": PROMPT, "size": "64x64", "steps": 400})).send().await.unwrap().json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_string();
        let events_response = http.get(server.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
        let mut cancelled_at = None;
        let http2 = http.clone();
        let url = server.url(&format!("/v1/jobs/{id}"));
        let events = read_events(events_response, |name, v| {
            if name == "step" && cancelled_at.is_none() && v["step"].as_u64().unwrap_or(0) >= 2 {
                cancelled_at = v["step"].as_u64();
                let (http, url) = (http2.clone(), url.clone());
                tokio::spawn(async move { http.delete(url).send().await.unwrap() });
            }
            name == "cancelled" || name == "done" || name == "error"
        })
        .await;
        assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("cancelled"), "{events:?}");
        let last_step = events.iter().filter(|(n, _)| n == "step").filter_map(|(_, v)| v["step"].as_u64()).max().unwrap();
        assert!(last_step < cancelled_at.unwrap() + 10, "stopped at step {last_step}, cancelled at {cancelled_at:?} of 400");
        let polled: Value = http.get(server.url(&format!("/v1/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(polled["status"], "cancelled");
        // an unknown job
        let missing = http.get(server.url("/v1/jobs/job-0")).send().await.unwrap();
        assert_eq!(missing.status(), 404);

        // A1111's interrupt: the running txt2img stops at its next step and is answered
        let started = Instant::now();
        let long = tokio::spawn({
            let request = http.post(server.url("/sdapi/v1/txt2img")).json(&json!({"prompt": "a circle", "steps": 400, "width": 64, "height": 64, "seed": 1}));
            async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
        });
        let mut step = 0;
        while step < 2 {
            let progress: Value = http.get(server.url("/sdapi/v1/progress")).send().await.unwrap().json().await.unwrap();
            step = progress["state"]["sampling_step"].as_u64().unwrap();
            if step >= 2 {
                assert!(progress["current_image"].is_string(), "a preview of the latents: {progress}");
                assert!(progress["progress"].as_f64().unwrap() > 0.0);
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the job never reached step 2");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let interrupted_at = Instant::now();
        let r = http.post(server.url("/sdapi/v1/interrupt")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v = tokio::time::timeout(Duration::from_secs(60), long).await.expect("answered after the interrupt").unwrap();
        let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
        assert!(info["warnings"].to_string().contains("interrupted"), "{info}");
        assert_eq!(v["images"], json!([]));
        // (a step of the demo model at 64x64 takes milliseconds: 400 of them would take far longer)
        let after = interrupted_at.elapsed();
        assert!(after < Duration::from_secs(10), "the interrupt took {after:?}");
    });
}

#[test]
fn bad_requests_get_a_4xx_in_the_apis_own_shape() {
    let server = Server::start(&["--api-key", "k3y", "--max-body-mb", "2", "--max-images", "4"]);
    server.wait_ready();
    runtime().block_on(async {
        let http = reqwest::Client::new();
        let send = |path: &str, body: reqwest::Body, key: Option<&str>| {
            let mut request = http.post(server.url(path)).header("content-type", "application/json").body(body);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let retry = response.headers().get("retry-after").is_some();
                let _ = retry;
                (status, response.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let png_bomb = {
            // 4096 x 4096 grey: 16 MB of pixels in a few KB of PNG
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, 4096, 4096);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_compression(png::Compression::Fast);
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(&vec![0u8; 4096 * 4096]).unwrap();
            writer.finish().unwrap();
            out
        };
        assert!(png_bomb.len() < 200_000, "{}", png_bomb.len());
        let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(50 << 20));
        let cases: Vec<(&str, &str, reqwest::Body, Option<&str>, u16, &str)> = vec![
            ("malformed JSON", "/v1/images/generations", "{\"prompt\": ".into(), Some("k3y"), 400, "JSON"),
            ("not an object", "/v1/images/generations", "[1, 2]".into(), Some("k3y"), 400, "object"),
            ("a wrong type", "/v1/images/generations", json!({"prompt": 5}).to_string().into(), Some("k3y"), 400, "prompt must be a string"),
            ("n as a string", "/v1/images/generations", json!({"prompt": "a", "n": "two"}).to_string().into(), Some("k3y"), 400, "n must be an integer"),
            ("size not /8", "/v1/images/generations", json!({"prompt": "a", "size": "65x64"}).to_string().into(), Some("k3y"), 400, "multiple of 8"),
            ("size too large", "/v1/images/generations", json!({"prompt": "a", "size": "4096x4096"}).to_string().into(), Some("k3y"), 400, "--max-size"),
            ("n = 1000", "/v1/images/generations", json!({"prompt": "a", "n": 1000}).to_string().into(), Some("k3y"), 400, "--max-images"),
            ("steps = 0", "/v1/images/generations", json!({"prompt": "a", "steps": 0}).to_string().into(), Some("k3y"), 400, "steps"),
            ("NaN-like guidance", "/v1/images/generations", json!({"prompt": "a", "guidance_scale": 1e300}).to_string().into(), Some("k3y"), 400, "guidance_scale"),
            ("unknown sampler", "/v1/images/generations", json!({"prompt": "a", "scheduler": "Restart"}).to_string().into(), Some("k3y"), 400, "Restart"),
            ("a 50 MB body", "/v1/images/generations", big.clone().into(), Some("k3y"), 400, "larger than"),
            ("unknown model", "/v1/images/generations", json!({"prompt": "a", "model": "dall-e-3"}).to_string().into(), Some("k3y"), 404, "dall-e-3"),
            ("no key", "/v1/images/generations", json!({"prompt": "a"}).to_string().into(), None, 401, "API key"),
            ("a wrong key", "/v1/images/generations", json!({"prompt": "a"}).to_string().into(), Some("k3z"), 401, "API key"),
            ("a LoRA with no --lora-dir", "/v1/images/generations", json!({"prompt": "a", "loras": [{"name": "x"}]}).to_string().into(), Some("k3y"), 400, "--lora-dir"),
            ("A1111: malformed JSON", "/sdapi/v1/txt2img", "{".into(), Some("k3y"), 400, "JSON"),
            ("A1111: a wrong type", "/sdapi/v1/txt2img", json!({"prompt": "a", "steps": "many"}).to_string().into(), Some("k3y"), 400, "steps must be an integer"),
            ("A1111: width not /8", "/sdapi/v1/txt2img", json!({"prompt": "a", "width": 100, "height": 64}).to_string().into(), Some("k3y"), 400, "multiple of 8"),
            ("A1111: batch 1000", "/sdapi/v1/txt2img", json!({"prompt": "a", "batch_size": 1000}).to_string().into(), Some("k3y"), 400, "--max-images"),
            ("A1111: unknown sampler", "/sdapi/v1/txt2img", json!({"prompt": "a", "sampler_name": "Restart", "width": 64, "height": 64}).to_string().into(), Some("k3y"), 400, "Restart"),
            ("A1111: unknown model", "/sdapi/v1/txt2img", json!({"prompt": "a", "override_settings": {"sd_model_checkpoint": "nope"}}).to_string().into(), Some("k3y"), 404, "nope"),
            ("A1111: a 50 MB body", "/sdapi/v1/txt2img", big.into(), Some("k3y"), 400, "larger than"),
            ("A1111: bad base64", "/sdapi/v1/img2img", json!({"prompt": "a", "init_images": ["not base64!"], "width": 64, "height": 64}).to_string().into(), Some("k3y"), 400, "base64"),
            ("A1111: not an image", "/sdapi/v1/img2img", json!({"prompt": "a", "init_images": [b64(b"GIF89a....")], "width": 64, "height": 64}).to_string().into(), Some("k3y"), 400, "init_images"),
            ("A1111: a PNG bomb", "/sdapi/v1/img2img", json!({"prompt": "a", "init_images": [b64(&png_bomb)], "width": 64, "height": 64}).to_string().into(), Some("k3y"), 400, "4096x4096"),
            ("A1111: no init image", "/sdapi/v1/img2img", json!({"prompt": "a", "width": 64, "height": 64}).to_string().into(), Some("k3y"), 400, "init_images"),
            ("A1111: no key", "/sdapi/v1/txt2img", json!({"prompt": "a"}).to_string().into(), None, 401, "API key"),
        ];
        for (what, path, body, key, status, needle) in cases {
            let (got, v) = send(path, body, key).await;
            assert_eq!(got, status, "{what}: {v}");
            let message = if path.starts_with("/sdapi/") {
                for field in ["error", "detail", "body", "errors"] {
                    assert!(v.get(field).is_some(), "{what}: A1111's error shape has {field}: {v}");
                }
                v["detail"].as_str().unwrap_or_default().to_string()
            } else {
                for field in ["message", "type", "param", "code"] {
                    assert!(v["error"].get(field).is_some(), "{what}: OpenAI's error shape has error.{field}: {v}");
                }
                v["error"]["message"].as_str().unwrap_or_default().to_string()
            };
            assert!(message.contains(needle), "{what}: the message should mention {needle:?}: {message}");
        }
        // the edits route's bad uploads
        let form = reqwest::multipart::Form::new().text("prompt", "a").part("image", reqwest::multipart::Part::bytes(png_bomb.clone()).file_name("bomb.png"));
        let r = http.post(server.url("/v1/images/edits")).bearer_auth("k3y").multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("4096x4096"), "{v}");
        let form = reqwest::multipart::Form::new().text("prompt", "a");
        let r = http.post(server.url("/v1/images/edits")).bearer_auth("k3y").multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 400);
        // probes and metrics need no key; an unknown route is a 404 in OpenAI's shape
        assert_eq!(http.get(server.url("/healthz")).send().await.unwrap().status(), 200);
        assert_eq!(http.get(server.url("/readyz")).send().await.unwrap().status(), 200);
        assert_eq!(http.get(server.url("/metrics")).send().await.unwrap().status(), 200);
        let r = http.get(server.url("/v2/nothing")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().contains("/v2/nothing"));
    });
    // none of it crashed the server
    assert!(!server.log.lock().unwrap().iter().any(|l| l.contains("panicked")), "{:?}", server.log.lock().unwrap());
}

/// `name value` of a metric line (first sample whose name and labels start with `prefix`).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn two_hundred_requests_from_sixteen_clients_are_each_answered() {
    const CLIENTS: usize = 16;
    const REQUESTS: usize = 200;
    const QUEUE: usize = 4;
    let server = Server::start(&["--queue-size", &QUEUE.to_string()]);
    server.wait_ready();
    runtime().block_on(async {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rss_after_20 = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // the queue depth, sampled from /metrics while the clients run
        let watcher = tokio::spawn({
            let (http, url, done) = (http.clone(), server.url("/metrics"), done.clone());
            async move {
                let mut depths = Vec::new();
                while done.load(std::sync::atomic::Ordering::SeqCst) < REQUESTS {
                    let text = http.get(&url).send().await.unwrap().text().await.unwrap();
                    depths.push(metric(&text, "kiln_queue_depth").unwrap());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                depths
            }
        });
        let pid = server.pid();
        let rss = move || common::rss_kib(pid);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (http, next, done, url, rss_after_20) = (http.clone(), next.clone(), done.clone(), server.url("/v1/images/generations"), rss_after_20.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < REQUESTS {
                        let body = json!({"prompt": PROMPT, "size": "64x64", "steps": 2, "seed": c, "response_format": "b64_json"});
                        let response = http.post(&url).json(&body).send().await.expect("every request is answered (no hang, no reset)");
                        let status = response.status().as_u16();
                        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
                        let v: Value = response.json().await.unwrap_or(Value::Null);
                        if status == 200 {
                            assert!(v["data"][0]["b64_json"].is_string(), "{v}");
                        }
                        if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 20 {
                            rss_after_20.store(rss(), std::sync::atomic::Ordering::SeqCst);
                        }
                        outcomes.push((status, retry_after, v));
                        if status == 429 {
                            // a client backs off before its next request (Retry-After's whole
                            // seconds would only make the test slow)
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    outcomes
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for c in clients {
            outcomes.extend(tokio::time::timeout(Duration::from_secs(600), c).await.expect("the clients finish within 10 min").unwrap());
        }
        let depths = watcher.await.unwrap();
        assert_eq!(outcomes.len(), REQUESTS);
        let ok = outcomes.iter().filter(|(s, _, _)| *s == 200).count();
        let busy: Vec<_> = outcomes.iter().filter(|(s, _, _)| *s == 429).collect();
        for (status, retry_after, v) in &outcomes {
            assert!(*status == 200 || *status == 429, "only 200 or 429, got {status}: {v}");
            if *status == 429 {
                assert!(retry_after.is_some_and(|s| s >= 1), "429 with Retry-After: {v}");
                assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
            }
        }
        assert!(ok >= REQUESTS / 10 && !busy.is_empty(), "16 clients on a queue of {QUEUE}: a share served ({ok}), some told to retry ({})", busy.len());
        let max_depth = depths.iter().cloned().fold(0.0, f64::max);
        assert!(max_depth <= QUEUE as f64, "queue depth reached {max_depth} > --queue-size {QUEUE}");
        let (first, last) = (rss_after_20.load(std::sync::atomic::Ordering::SeqCst), server.rss_kib());
        assert!(first > 0 && (last as f64) <= 1.2 * first as f64, "memory grew: {first} KiB after 20 requests, {last} KiB after {REQUESTS}");
        eprintln!("{ok} served, {} told to retry, queue depth at most {max_depth}, RSS {first} → {last} KiB", busy.len());
        // the metrics saw them
        let text = http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let images = metric(&text, "kiln_images_generated_total").unwrap();
        assert!(images >= ok as f64, "{images} images counted, {ok} served");
        assert!(text.contains("kiln_requests_total{method=\"POST\",route=\"/v1/images/generations\",status=\"429\"}"), "{text}");
        assert!(text.contains("kiln_step_duration_seconds_bucket"), "{text}");
        assert!(text.contains("kiln_model_load_seconds{model=\"kiln-shapes\"}"), "{text}");
    });
}

#[test]
fn sigterm_finishes_the_queued_requests_then_exits_0() {
    let mut server = Server::start(&["--queue-size", "8"]);
    server.wait_ready();
    let rt = runtime();
    let answers = rt.block_on(async {
        let http = reqwest::Client::new();
        let requests: Vec<_> = (0..4)
            .map(|i| {
                let request = http.post(server.url("/v1/images/generations")).json(&json!({"prompt": PROMPT, "size": "64x64", "steps": 40, "seed": i, "response_format": "b64_json"}));
                tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.signal(15);
        // draining: /readyz says 503 for the grace period, while requests are still served
        tokio::time::sleep(Duration::from_millis(200)).await;
        let readyz = http.get(server.url("/readyz")).send().await.map(|r| r.status().as_u16());
        let late = http.post(server.url("/v1/images/generations")).json(&json!({"prompt": PROMPT, "size": "64x64"})).send().await.map(|r| r.status().as_u16());
        let mut answers = Vec::new();
        for r in requests {
            answers.push(r.await.unwrap());
        }
        (readyz, late, answers)
    });
    let (readyz, late, answers) = answers;
    assert_eq!(readyz.ok(), Some(503), "readyz while draining");
    assert_eq!(late.ok(), Some(200), "a request in the grace period is served");
    assert!(answers.iter().all(|a| a.as_ref().ok() == Some(&200)), "every queued request is answered: {answers:?}");
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after draining: {:?}", server.log.lock().unwrap());
}

/// The pixels of a PNG.
fn png_pixels(png: &[u8]) -> Vec<u8> {
    image::load_from_memory(png).unwrap().to_rgb8().into_raw()
}

/// SD 3 and FLUX.1 served beside an SD model: FLUX.1-schnell through `/v1/images/generations`
/// with kiln's fields draws scripts/fixtures/flow_pipelines.py's case 7 within 2 levels of
/// diffusers' and byte for byte `kiln generate`'s PNG, FLUX.1-dev with a negative prompt and
/// `true_cfg_scale` its case 9 (two images), SD 3 with `prompt_3`, clip skip and Heun its case 4; SD 3 through the OpenAI client with its
/// fields only gets its family's defaults (28 steps, guidance 7), again `kiln generate`'s PNG;
/// A1111's txt2img reads a flow model's prompt as plain text and says so; an SD-only option is
/// refused naming it.
#[test]
fn sd3_and_flux_models_are_served() {
    let models = repo_root().join("assets/fixtures/models");
    let (flux, sd3, dev) = (models.join("flux-schnell"), models.join("sd3"), models.join("flux-dev"));
    let server = Server::start(&["--model", flux.to_str().unwrap(), "--model", sd3.to_str().unwrap(), "--model", dev.to_str().unwrap()]);
    let dir = TempDir::new("serve-flow");
    server.wait_ready();
    runtime().block_on(async {
        let http = reqwest::Client::new();
        let body = json!({"model": "flux-schnell", "prompt": PROMPT, "size": "32x24", "steps": 4, "guidance_scale": 0.0, "seed": 0,
            "max_sequence_length": 32, "response_format": "b64_json"});
        let r = http.post(server.url("/v1/images/generations")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let served = unb64(v["data"][0]["b64_json"].as_str().unwrap());
        let want = png_pixels(&std::fs::read(repo_root().join("assets/fixtures/flow_pipelines/case07-0.png")).unwrap());
        let got = png_pixels(&served);
        let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(got.len() == want.len() && worst <= 2, "FLUX.1-schnell served: {worst} levels from diffusers");
        let cli = generate_with(flux.to_str().unwrap(), &dir, "flux.png", &["--prompt", PROMPT, "--width", "32", "--height", "24", "--steps", "4", "--guidance-scale", "0", "--max-sequence-length", "32"]);
        assert_eq!(served, cli, "the served FLUX PNG differs from kiln generate's");

        // FLUX.1-dev's true CFG with a negative prompt, two images (case 9)
        let body = json!({"model": "flux-dev", "prompt": "two yellow triangles", "negative_prompt": "blurry", "true_cfg_scale": 4.0,
            "n": 2, "size": "24x32", "steps": 3, "guidance_scale": 3.5, "seed": 9, "max_sequence_length": 32, "response_format": "b64_json"});
        let v: Value = http.post(server.url("/v1/images/generations")).json(&body).send().await.unwrap().json().await.unwrap();
        for k in 0..2 {
            let got = png_pixels(&unb64(v["data"][k]["b64_json"].as_str().unwrap_or_else(|| panic!("{v}"))));
            let want = png_pixels(&std::fs::read(repo_root().join(format!("assets/fixtures/flow_pipelines/case09-{k}.png"))).unwrap());
            let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
            assert!(got.len() == want.len() && worst <= 2, "FLUX.1-dev true CFG, image {k}: {worst} levels from diffusers");
        }

        // SD 3 with T5's own prompt, clip_skip and the flow Heun sampler (case 4)
        let body = json!({"model": "sd3", "prompt": "a dog", "prompt_3": "a dog in the snow, 4k", "size": "48x48", "steps": 3, "guidance_scale": 6.0,
            "seed": 11, "clip_skip": 1, "max_sequence_length": 16, "scheduler": "heun", "response_format": "b64_json"});
        let v: Value = http.post(server.url("/v1/images/generations")).json(&body).send().await.unwrap().json().await.unwrap();
        let got = png_pixels(&unb64(v["data"][0]["b64_json"].as_str().unwrap_or_else(|| panic!("{v}"))));
        let want = png_pixels(&std::fs::read(repo_root().join("assets/fixtures/flow_pipelines/case04-0.png")).unwrap());
        let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(got.len() == want.len() && worst <= 2, "SD 3 with prompt_3 and Heun: {worst} levels from diffusers");

        // SD 3 through the OpenAI client: OpenAI's fields only, SD 3's defaults
        let client = Client::with_config(OpenAIConfig::new().with_api_base(server.url("/v1")));
        #[allow(deprecated)]
        let request = CreateImageRequest {
            prompt: "a cat".into(),
            model: ImageModel::Other("sd3".into()),
            size: Some(ImageSize::Other("32x24".into())),
            response_format: Some(ImageResponseFormat::B64Json),
            ..Default::default()
        };
        let response = client.images().generate(request).await.expect("the OpenAI client generates with SD 3");
        let Image::B64Json { b64_json, .. } = response.data[0].as_ref() else { panic!("asked for b64_json") };
        let served = unb64(b64_json);
        assert!(infotext(&served).contains("Steps: 28") && infotext(&served).contains("CFG scale: 7"), "{}", infotext(&served));
        let cli = generate_with(sd3.to_str().unwrap(), &dir, "sd3.png", &["--prompt", "a cat", "--width", "32", "--height", "24"]);
        assert_eq!(served, cli, "the served SD 3 PNG differs from kiln generate's");

        // A1111's txt2img on FLUX: plain-text prompts, said in the warnings
        let body = json!({"prompt": "a (red:1.2) circle", "steps": 2, "cfg_scale": 1, "width": 32, "height": 24,
            "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "flux-schnell"}});
        let r = http.post(server.url("/sdapi/v1/txt2img")).json(&body).send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(v["images"][0].is_string() && v["info"].as_str().unwrap_or_default().contains("plain text"), "{v}");

        // an SD 3 / FLUX option on the SD model, an SD sampler on FLUX: 400s naming them
        let r = http.post(server.url("/v1/images/generations")).json(&json!({"prompt": "p", "size": "64x64", "max_sequence_length": 32})).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("max_sequence_length"));
        let r = http.post(server.url("/v1/images/generations")).json(&json!({"model": "flux-schnell", "prompt": "p", "size": "32x24", "prompt_3": "q"})).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("prompt_3 is an SD 3 option"));
        let r = http.post(server.url("/v1/images/generations")).json(&json!({"model": "flux-schnell", "prompt": "p", "size": "32x24", "steps": 2, "scheduler": "dpm++2m"})).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("dpm++2m") || text.contains("DPM"), "{text}");
    });
}
