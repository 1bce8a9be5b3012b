//! The bad-input catalogue: what `kiln` does with input a hostile or careless user gives it, case
//! by case, run against the real binary. Every case states its exit status (0 done, 2 an error
//! naming the value, 130 interrupted, or the signal a closed pipe ends it with) and what its one
//! `error:` line must say; none may panic, hang (each runs under a deadline) or leave a temporary
//! file. Cases that read files only run under a 1 GiB address-space limit (`ulimit -v`), so an
//! allocation of a GiB fails the case.
//!
//! docs/reliability.md holds this catalogue as a table, generated from the cases below: the test
//! fails when the two differ (`KILN_UPDATE_DOCS=1` rewrites the table).
//!
//! Release builds behave the same: arithmetic on outside numbers is checked in the code (never
//! relying on overflow checks), and the release profile keeps overflow checks on for kiln's crates
//! all the same (`the_release_profile_checks_overflow` below), so a missed case panics in both
//! profiles instead of wrapping silently in one.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::TempDir;

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

fn fixture_model(name: &str) -> String {
    root().join("assets/fixtures/models").join(name).to_string_lossy().into_owned()
}

/// How a case must end.
#[derive(Clone, Copy, PartialEq, Debug)]
enum End {
    Exit(i32),
    /// Killed by this signal (13: SIGPIPE, what `… | head` does to Unix tools).
    Signal(i32),
}

impl End {
    fn show(self) -> String {
        match self {
            End::Exit(c) => c.to_string(),
            End::Signal(13) => "SIGPIPE (quiet)".into(),
            End::Signal(s) => format!("signal {s}"),
        }
    }
}

/// One catalogue case.
struct Case {
    /// What the user does, as the docs table shows it.
    input: &'static str,
    args: Vec<String>,
    end: End,
    /// What stderr must contain.
    says: Vec<&'static str>,
    /// Run under a 1 GiB address-space limit.
    limited: bool,
    /// How the case is driven: plain, with a signal after a delay, or reading one stdout line.
    drive: Drive,
    /// Checked after the run (files untouched, nothing written).
    after: Option<Box<dyn Fn()>>,
}

enum Drive {
    Plain,
    /// Send this signal once stderr shows the first denoising step.
    SignalDuringRun(i32),
    /// Read one stdout line, then close the pipe.
    HeadOne,
}

fn case(input: &'static str, args: &[&str], end: End, says: &[&'static str]) -> Case {
    Case { input, args: args.iter().map(|s| s.to_string()).collect(), end, says: says.to_vec(), limited: false, drive: Drive::Plain, after: None }
}

impl Case {
    fn limited(mut self) -> Self {
        self.limited = true;
        self
    }
    fn after(mut self, f: impl Fn() + 'static) -> Self {
        self.after = Some(Box::new(f));
        self
    }
    fn drive(mut self, d: Drive) -> Self {
        self.drive = d;
        self
    }
}

// ---- files the cases need --------------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG with an `IHDR` of `width × height` (RGB, 8 bits), the given chunks, a one-row `IDAT`
/// (not a valid image of that size: the cases read headers and texts only) and `IEND`.
fn png_with(width: u32, height: u32, chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    let mut put = |kind: &[u8; 4], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    put(b"IHDR", &ihdr);
    for (kind, data) in chunks {
        put(kind, data);
    }
    // zlib stream of one filter byte and 3 zero bytes, stored
    put(b"IDAT", &[0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01]);
    put(b"IEND", &[]);
    out
}

/// A zlib stream that inflates to `len` zero bytes: fixed-Huffman deflate, one literal 0 and
/// then matches of length 258 at distance 1 (13 bits each: ~1:160).
fn zlib_zeros(len: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= (value as u64) << self.n;
            self.n += count;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, count: u32) {
            let reversed = code.reverse_bits() >> (32 - count);
            self.put(reversed, count);
        }
    }
    let mut b = Bits { out: vec![0x78, 0x01], acc: 0, n: 0 };
    b.put(1, 1); // final block
    b.put(1, 2); // fixed Huffman
    b.code(0b0011_0000, 8); // literal 0
    let matches = (len - 1) / 258;
    for _ in 0..matches {
        b.code(0b1100_0101, 8); // length 258 (symbol 285)
        b.code(0, 5); // distance 1
    }
    for _ in 0..(len - 1 - matches * 258) {
        b.code(0b0011_0000, 8);
    }
    b.code(0, 7); // end of block (symbol 256)
    if b.n > 0 {
        b.put(0, 8 - b.n);
    }
    // Adler-32 of zeros: a = 1, b = len mod 65521
    let adler = ((len % 65521) as u32) << 16 | 1;
    b.out.extend(adler.to_be_bytes());
    b.out
}

/// A safetensors file with one tensor entry as given (no real data beyond `data_bytes`).
fn safetensors_with(entry: &str, data_bytes: usize) -> Vec<u8> {
    let header = format!("{{\"w\": {entry}}}");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_bytes));
    out
}

/// A copy of fixture model `name` (components symlinked) where `edit` rewrites what it needs.
fn model_copy(dir: &Path, tag: &str, name: &str, edit: impl Fn(&Path)) -> String {
    let src = root().join("assets/fixtures/models").join(name);
    let model = dir.join(tag);
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), model.join(entry.file_name())).unwrap();
    }
    edit(&model);
    model.to_string_lossy().into_owned()
}

/// Replaces the symlink `model/component` with a real folder whose files link the fixture's.
fn own_component(model: &Path, component: &str) -> PathBuf {
    let link = model.join(component);
    let src = std::fs::canonicalize(&link).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::fs::create_dir_all(&link).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), link.join(entry.file_name())).unwrap();
    }
    link
}

/// Rewrites one key of a JSON file (replacing the symlink by a real file).
fn set_json(path: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key] = serde_json::from_str(value).unwrap_or(serde_json::Value::String(value.into()));
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A scheduler config of `class` with `extra` keys.
fn scheduler_config(dir: &Path, tag: &str, class: &str, extra: &str) -> String {
    let path = dir.join(format!("{tag}.json"));
    let sep = if extra.is_empty() { "" } else { ", " };
    std::fs::write(&path, format!("{{\"_class_name\": \"{class}\"{sep}{extra}}}")).unwrap();
    path.to_string_lossy().into_owned()
}

/// Overwrites every f32 of a safetensors file's data with NaN.
fn nan_weights(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = bytes[..8 + header_len].to_vec();
    for chunk in bytes[8 + header_len..].chunks(4) {
        out.extend(if chunk.len() == 4 { f32::NAN.to_le_bytes().to_vec() } else { chunk.to_vec() });
    }
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, out).unwrap();
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// Every case, with the files it needs written into `dir`.
fn cases(dir: &Path) -> Vec<Case> {
    let d = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let sd1 = fixture_model("sd1");
    let sdxl = fixture_model("sdxl");
    let out = d("out.png");
    let sdxl_lora = root().join("assets/fixtures/loras/sdxl-kohya.safetensors").to_string_lossy().into_owned();
    let unet_weights = root().join("assets/fixtures/models/sd1/unet/diffusion_pytorch_model.safetensors").to_string_lossy().into_owned();
    let tiny_ckpt = root().join("assets/fixtures/single_file/sd1.ckpt").to_string_lossy().into_owned();
    // a LoRA (kohya's key names), which is not a model
    let lora = d("lora.safetensors");
    {
        let header = br#"{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 8]);
        std::fs::write(&lora, bytes).unwrap();
    }
    let init = root().join("assets/fixtures/pipelines/inputs/init-64x48.png").to_string_lossy().into_owned();
    // a --lora-dir that is a file
    let out_of_place_lora_dir = unet_weights.clone();
    let mask = root().join("assets/fixtures/pipelines/inputs/mask-64x48.png").to_string_lossy().into_owned();
    let gen_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["generate".into()];
        for (flag, value) in [("--model", sd1.as_str()), ("--prompt", "p"), ("--output", out.as_str()), ("--steps", "2"), ("--width", "64"), ("--height", "64")] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let g = |input: &'static str, extra: &[&str], says: &[&'static str]| Case { args: gen_args(extra), ..case(input, &[], End::Exit(2), says) };

    // files
    let text_png = d("notes.png");
    std::fs::write(&text_png, "this is text, not a PNG").unwrap();
    let small_mask = d("small-mask.png");
    std::fs::write(&small_mask, png_with(32, 32, &[])).unwrap();
    let huge = d("huge.png");
    std::fs::write(&huge, png_with(20000, 20000, &[])).unwrap();
    let existing = d("existing.png");
    std::fs::write(&existing, b"the user's file").unwrap();
    let folder = d("folder.png");
    std::fs::create_dir_all(&folder).unwrap();
    let dangling = d("dangling.png");
    std::os::unix::fs::symlink(dir.join("nowhere.png"), &dangling).unwrap();
    let link_to_existing = d("link.png");
    std::os::unix::fs::symlink(&existing, &link_to_existing).unwrap();
    let fifo_out = d("fifo.png");
    mkfifo(Path::new(&fifo_out));
    let fifo_in = d("fifo.json");
    mkfifo(Path::new(&fifo_in));
    let name_254 = d(&format!("{}.png", "n".repeat(250)));
    let name_256 = d(&format!("{}.png", "n".repeat(252)));
    // PNG text: a zTXt `parameters` chunk that inflates to 1 GiB, the same under another keyword,
    // and a 200 000-character parameters line
    let mut bomb = b"parameters\0\0".to_vec();
    bomb.extend(zlib_zeros(1 << 30));
    let bomb_png = d("bomb.png");
    std::fs::write(&bomb_png, png_with(1, 1, &[(b"zTXt", bomb.clone())])).unwrap();
    let mut other_bomb = b"comment\0\0".to_vec();
    other_bomb.extend(&bomb[12..]);
    let other_bomb_png = d("other-bomb.png");
    std::fs::write(&other_bomb_png, png_with(1, 1, &[(b"zTXt", other_bomb), (b"tEXt", b"parameters\0a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 1x1".to_vec())])).unwrap();
    let mut long = b"parameters\0".to_vec();
    long.extend(std::iter::repeat_n(b'a', 200_000));
    let long_png = d("long.png");
    std::fs::write(&long_png, png_with(1, 1, &[(b"tEXt", long)])).unwrap();
    let bad_crc = d("bad-crc.png");
    let mut bytes = png_with(1, 1, &[(b"tEXt", b"parameters\0x".to_vec())]);
    let at = bytes.windows(4).position(|w| w == b"tEXt").unwrap() + 4 + 12;
    bytes[at] ^= 0xff;
    std::fs::write(&bad_crc, bytes).unwrap();
    // safetensors headers with sizes that overflow
    let st_huge = d("huge.safetensors");
    std::fs::write(&st_huge, safetensors_with(r#"{"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 16]}"#, 16)).unwrap();
    let st_unknown = d("unknown.safetensors");
    std::fs::write(&st_unknown, safetensors_with(r#"{"dtype": "X9", "shape": [18446744073709551615], "data_offsets": [0, 16]}"#, 16)).unwrap();
    let st_offsets = d("offsets.safetensors");
    std::fs::write(&st_offsets, safetensors_with(r#"{"dtype": "F32", "shape": [4], "data_offsets": [0, 18446744073709551615]}"#, 16)).unwrap();
    // models
    let nan_unet = model_copy(dir, "nan-unet", "sd1", |m| nan_weights(&own_component(m, "unet").join("diffusion_pytorch_model.safetensors")));
    let beta_model = model_copy(dir, "bad-betas", "sd1", |m| {
        let s = own_component(m, "scheduler").join("scheduler_config.json");
        set_json(&s, "beta_start", "0.5");
        set_json(&s, "beta_end", "2.0");
    });
    let sample_size = model_copy(dir, "sample-size", "sd1", |m| set_json(&own_component(m, "unet").join("config.json"), "sample_size", "4611686018427387904"));
    let bad_class = model_copy(dir, "flux", "sd1", |m| {
        let p = m.join("model_index.json");
        set_json(&p, "_class_name", "FluxKontextPipeline");
    });
    let refiner = model_copy(dir, "refiner", "sdxl", |m| set_json(&m.join("model_index.json"), "requires_aesthetics_score", "true"));
    let outside = model_copy(dir, "outside", "sd1", |m| {
        let p = m.join("model_index.json");
        set_json(&p, "/etc", r#"["diffusers", "Evil"]"#);
        set_json(&p, "../../x", r#"["diffusers", "Evil"]"#);
    });
    let broken_component = model_copy(dir, "broken-vae", "sd1", |m| {
        let v = own_component(m, "vae").join("config.json");
        std::fs::remove_file(&v).unwrap();
        std::fs::write(&v, "{ not json").unwrap();
    });
    let huge_weights = model_copy(dir, "huge-weights", "sd1", |m| {
        let w = own_component(m, "unet").join("diffusion_pytorch_model.safetensors");
        std::fs::remove_file(&w).unwrap();
        std::fs::write(&w, safetensors_with(r#"{"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 16]}"#, 16)).unwrap();
    });
    let sched = |tag: &str, class: &str, extra: &str| scheduler_config(dir, tag, class, extra);
    let unet_check = |tag: &str, tensors: &[(&str, &str, usize)]| -> String {
        let folder = dir.join(tag);
        std::fs::create_dir_all(&folder).unwrap();
        std::os::unix::fs::symlink(root().join("assets/fixtures/models/sd1/unet"), folder.join("unet")).unwrap();
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, shape, n) in tensors {
            header.insert(name.to_string(), serde_json::json!({"dtype": "F32", "shape": serde_json::from_str::<serde_json::Value>(shape).unwrap(), "data_offsets": [offset, offset + 4 * n]}));
            offset += 4 * n;
        }
        let h = serde_json::Value::Object(header).to_string();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend(h.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, offset));
        std::fs::write(folder.join("io.safetensors"), bytes).unwrap();
        folder.to_string_lossy().into_owned()
    };
    let malformed_check = unet_check("check-rank", &[("sample", "[4, 8, 8]", 256), ("encoder_hidden_states", "[1, 77, 32]", 77 * 32), ("timestep", "[1]", 1)]);
    let empty_t_check = unet_check("check-empty-t", &[("sample", "[1, 4, 8, 8]", 256), ("encoder_hidden_states", "[1, 77, 32]", 77 * 32), ("timestep", "[0]", 0)]);

    let untouched = |path: String, content: &'static [u8]| move || assert_eq!(std::fs::read(&path).unwrap(), content, "{path} must be untouched");
    let no_file = |path: String| move || assert!(std::fs::symlink_metadata(&path).is_err(), "{path} must not be written");
    let max = u64::MAX.to_string();
    let max: &'static str = Box::leak(max.into_boxed_str());

    vec![
        // ---- generate: numbers and flags
        g("`--width 60` (not a multiple of 8)", &["--width", "60"], &["width", "60", "multiple of 8"]),
        g("`--height 0`", &["--height", "0"], &["height", "0"]),
        g("`--steps 0`", &["--steps", "0"], &["steps", "0"]),
        g("`--guidance-scale -1`", &["--guidance-scale=-1"], &["guidance", "-1"]),
        g("`--guidance-rescale 2`", &["--guidance-rescale", "2"], &["guidance rescale", "[0, 1]"]),
        g("`--num-images 0`", &["--num-images", "0"], &["number of images", "0"]),
        g("`--scheduler eulr` (unknown)", &["--scheduler", "eulr"], &["eulr", "euler-a"]),
        g("`--scheduler ddim --karras` (no Karras sigmas)", &["--scheduler", "ddim", "--karras"], &["--karras", "DDIMScheduler has no Karras sigmas"]),
        g("`--device tpu`", &["--device", "tpu"], &["--device", "tpu"]),
        g("`--dtype f8`", &["--dtype", "f8"], &["--dtype", "f8"]),
        g("`--gpu-conv winograd`", &["--gpu-conv", "winograd"], &["--gpu-conv", "must be auto, burn or im2col", "winograd"]),
        g("`--clip-skip 50`", &["--clip-skip", "50"], &["clip_skip", "50", "at most"]),
        g("`--clip-skip 2^64-1` (SD)", &["--clip-skip", max], &["clip_skip", max]),
        Case { args: vec!["generate".into(), "--model".into(), sdxl.clone(), "--prompt".into(), "p".into(), "--steps".into(), "1".into(), "--clip-skip".into(), max.into(), "--output".into(), out.clone()], ..case("`--clip-skip 2^64-1` (SDXL)", &[], End::Exit(2), &["clip_skip", max]) },
        g("`--width 65536 --height 65536` (beyond memory)", &["--width", "65536", "--height", "65536"], &["65536x65536", "GiB", "available"]),
        g("`--original-size big`", &["--original-size", "big"], &["--original-size", "WIDTHxHEIGHT", "big"]),
        g("`--crops-coords-top-left 1;2`", &["--crops-coords-top-left", "1;2"], &["--crops-coords-top-left", "TOP,LEFT"]),
        // ---- generate: init images and masks
        g("`--strength 1.5`", &["--init-image", &init, "--strength", "1.5"], &["--strength", "1.5", "[0, 1]"]),
        g("`--strength 0.05 --steps 10` (no step runs)", &["--init-image", &init, "--strength", "0.05", "--steps", "10", "--height", "48"], &["strength", "0.05", "no denoising step"]),
        g("`--mask` without `--init-image`", &["--mask", &mask], &["--mask needs --init-image"]),
        g("`--strength` without `--init-image`", &["--strength", "0.5"], &["--strength needs --init-image"]),
        g("`--init-image` that does not exist", &["--init-image", "/nonexistent/in.png"], &["init image", "/nonexistent/in.png", "does not exist"]),
        g("`--init-image` that is text, not an image", &["--init-image", &text_png], &["notes.png", "not a readable PNG or JPEG"]),
        g("`--mask` that is not an image", &["--init-image", &init, "--mask", &text_png], &["mask", "not a readable"]),
        g("`--init-image` of another size (64x48 for 64x64)", &["--init-image", &init], &["init image size 64x48", "64x64", "does not resize"]),
        g("`--mask` of another size than the init image", &["--init-image", &init, "--mask", &small_mask, "--width", "64", "--height", "48"], &["mask size 32x32", "64x48"]),
        g("`--init-image` declaring 20000x20000 (390 KB PNG: refused before decoding)", &["--init-image", &huge], &["20000x20000", "at most 16384"]).limited(),
        // ---- generate: outputs
        g("`--output` that exists, no `--overwrite`", &["--output", &existing], &["existing.png", "--overwrite"]).after(untouched(existing.clone(), b"the user's file")),
        g("`--output` a folder, with `--overwrite`", &["--output", &folder, "--overwrite"], &["folder.png", "names a folder"]),
        g("`--output dir/` (trailing slash)", &["--output", &format!("{}/", d("sub"))], &["names a folder"]),
        g("`--output` a dangling symlink", &["--output", &dangling], &["dangling.png", "not a regular file"]).after({
            let (l, t) = (dangling.clone(), d("nowhere.png"));
            move || assert!(std::fs::symlink_metadata(&l).unwrap().file_type().is_symlink() && !Path::new(&t).exists())
        }),
        g("`--output` a symlink to a file, with `--overwrite`", &["--output", &link_to_existing, "--overwrite"], &["link.png", "not a regular file"]).after(untouched(existing.clone(), b"the user's file")),
        g("`--output` a FIFO, with `--overwrite` (as `/dev/null` would be)", &["--output", &fifo_out, "--overwrite"], &["fifo.png", "not a regular file"]).after({
            let f = fifo_out.clone();
            move || assert!(std::os::unix::fs::FileTypeExt::is_fifo(&std::fs::symlink_metadata(&f).unwrap().file_type()))
        }),
        g("`--output /dev/null --overwrite`", &["--output", "/dev/null", "--overwrite"], &["/dev/null"]),
        g("`--output` in a folder that does not exist", &["--output", &d("no/such/dir/x.png")], &["does not exist"]),
        g("`--output` in a folder kiln cannot write (`/proc`)", &["--output", "/proc/kiln-out.png"], &["cannot write", "/proc"]),
        g("`--output out.jpg`", &["--output", &d("out.jpg")], &["out.jpg", "ending in .png"]),
        g("`--output out` (no extension)", &["--output", &d("out")], &["ending in .png"]),
        g("`--output` a 256-byte file name", &["--output", &name_256], &["256 bytes", "at most 255"]),
        Case { args: gen_args(&["--output", &name_254]), ..case("`--output` a 254-byte file name (allowed: temporary names stay short)", &[], End::Exit(0), &["wrote"]) }.after({
            let p = name_254.clone();
            move || assert!(Path::new(&p).is_file())
        }),
        // ---- generate: models
        g("`--model` that does not exist", &["--model", "/nonexistent/model"], &["/nonexistent/model"]),
        g("`--model org/name@../../../../etc` (a revision climbing out of the cache)", &["--model", "org/name@../../../../etc"], &["`../../../../etc` is not a revision name"]),
        g("`--model` whose pipeline class kiln does not run", &["--model", &bad_class], &["FluxKontextPipeline", "not supported"]),
        g("`--model` an SDXL refiner (`requires_aesthetics_score`)", &["--model", &refiner, "--width", "64", "--height", "64"], &["requires_aesthetics_score"]),
        g("`--model` whose UNet `sample_size` is 2^62", &["--model", &sample_size], &["sample_size", "at most"]),
        g("`--model` whose scheduler has `beta_end` 2", &["--model", &beta_model], &["beta", "(0, 1)"]),
        Case { args: gen_args(&["--model", &nan_unet]), ..case("`--model` whose UNet weights are NaN", &[], End::Exit(2), &["the UNet produced NaN", "at denoising step 1 of"]) }.after(no_file(out.clone())),
        // ---- generate: single-file checkpoints
        g("`--model` a LoRA file", &["--model", &lora], &["lora.safetensors", "not a Stable Diffusion checkpoint", "looks like a LoRA"]),
        g("`--model` a single file whose layout is not a published model's, no `--config`", &["--model", &tiny_ckpt], &["sd1.ckpt", "not a published model's", "--config"]),
        g("`--model FILE --config` a folder that does not exist", &["--model", &tiny_ckpt, "--config", "/nonexistent/config"], &["--config", "/nonexistent/config", "does not exist"]),
        g("`--prediction-type` with a diffusers folder", &["--prediction-type", "epsilon"], &["--prediction-type", "single-file checkpoint"]),
        // ---- generate: LoRAs
        g("`--lora` an SDXL LoRA on an SD 1.x model", &["--lora", &sdxl_lora], &["sdxl-kohya.safetensors", "SDXL LoRA on an SD 1.x/2.x model"]),
        g("`--lora` a file that is not a LoRA (a UNet's weights)", &["--lora", &unet_weights], &["is not a LoRA kiln reads"]),
        g("`--lora PATH:nan`", &["--lora", &format!("{sdxl_lora}:nan")], &["--lora", "finite"]),
        g("`--lora` that does not exist", &["--lora", &d("no-such-lora.safetensors")], &["no-such-lora.safetensors"]),
        // ---- generate: embeddings
        g("`--embedding` a LoRA (not an embedding)", &["--embedding", &sdxl_lora], &["sdxl-kohya.safetensors", "is not a textual-inversion embedding"]),
        g("`--embedding` under a token the vocabulary has (`:cat`)", &["--embedding", &format!("{}:cat", root().join("assets/fixtures/embeddings/learned_embeds.safetensors").display())], &["\"cat\"", "already in the vocabulary"]),
        g("`--embeddings-dir` that does not exist", &["--embeddings-dir", &d("no-such-dir")], &["--embeddings-dir", "no-such-dir"]),
        // ---- generate: interrupted
        Case { args: gen_args(&["--steps", "400", "--width", "64", "--height", "64"]), ..case("Ctrl-C during a run", &[], End::Exit(130), &["interrupted"]) }
            .drive(Drive::SignalDuringRun(2))
            .after(no_file(out.clone())),
        Case { args: gen_args(&["--steps", "400"]), ..case("SIGTERM during a run", &[], End::Exit(130), &["interrupted"]) }
            .drive(Drive::SignalDuringRun(15))
            .after(no_file(out.clone())),
        // ---- schedule
        case("`kiln schedule --steps 0`", &["schedule", "--model", &sd1, "--steps", "0"], End::Exit(2), &["num_inference_steps", "0"]).limited(),
        case("`kiln schedule --steps 2000` (more than trained)", &["schedule", "--model", &sd1, "--steps", "2000"], End::Exit(2), &["2000", "num_train_timesteps"]).limited(),
        case("`kiln schedule --scheduler eulr`", &["schedule", "--model", &sd1, "--scheduler", "eulr", "--steps", "5"], End::Exit(2), &["eulr"]).limited(),
        case("`kiln schedule --scheduler ddim --karras`", &["schedule", "--model", &sd1, "--scheduler", "ddim", "--karras", "--steps", "5"], End::Exit(2), &["--karras", "DDIMScheduler"]).limited(),
        case("scheduler config `num_train_timesteps: 1e12`", &["schedule", "--config", &sched("t12", "EulerDiscreteScheduler", r#""num_train_timesteps": 1e12"#), "--steps", "5"], End::Exit(2), &["num_train_timesteps", "[2, 100000]"]).limited(),
        case("scheduler config `num_train_timesteps: 1e30`", &["schedule", "--config", &sched("t30", "DDIMScheduler", r#""num_train_timesteps": 1e30"#), "--steps", "5"], End::Exit(2), &["num_train_timesteps"]).limited(),
        case("DDIM config `steps_offset: 5000`", &["schedule", "--config", &sched("off5000", "DDIMScheduler", r#""steps_offset": 5000"#), "--steps", "5"], End::Exit(2), &["steps_offset", "5000", "below num_train_timesteps"]).limited(),
        case("DDIM config `steps_offset: 2^64-1`", &["schedule", "--config", &sched("offmax", "DDIMScheduler", r#""steps_offset": 18446744073709551615"#), "--steps", "5"], End::Exit(2), &["steps_offset"]).limited(),
        case("DDIM config `steps_offset: 999` with 5 leading steps (timesteps past 999)", &["schedule", "--config", &sched("off999", "DDIMScheduler", r#""steps_offset": 999"#), "--steps", "5"], End::Exit(2), &["outside the training range"]).limited(),
        case("scheduler config `beta_start: 0.5, beta_end: 2`", &["schedule", "--config", &sched("betas", "EulerDiscreteScheduler", r#""beta_start": 0.5, "beta_end": 2.0"#), "--steps", "5"], End::Exit(2), &["beta", "(0, 1)"]).limited(),
        case("scheduler config `trained_betas` with a 0", &["schedule", "--config", &sched("trained", "DDPMScheduler", r#""num_train_timesteps": 3, "trained_betas": [0.1, 0.0, 0.2]"#), "--steps", "2"], End::Exit(2), &["trained_betas", "beta[1]"]).limited(),
        case("scheduler config that is not JSON", &["schedule", "--config", &d("notes.png"), "--steps", "5"], End::Exit(2), &["malformed scheduler config"]).limited(),
        case("`kiln schedule --config` a FIFO", &["schedule", "--config", &fifo_in, "--steps", "5"], End::Exit(2), &["fifo.json", "not a regular file"]).limited(),
        // (Heun: 1997 lines, more than a pipe holds, so kiln writes after the reader is gone)
        case("`kiln schedule --scheduler heun --steps 999 | head -1`", &["schedule", "--model", &sd1, "--scheduler", "heun", "--steps", "999"], End::Signal(13), &[]).limited().drive(Drive::HeadOne),
        // ---- info
        case("`kiln info` a PNG whose zTXt `parameters` inflates to 1 GiB", &["info", &bomb_png], End::Exit(2), &["parameters", "at most 1048576"]).limited(),
        case("`kiln info` a PNG with a 1 GiB zTXt chunk under another keyword", &["info", &other_bomb_png], End::Exit(0), &[]).limited(),
        case("`kiln info` a PNG whose parameters are 200 000 × `a`", &["info", &long_png], End::Exit(0), &[]).limited(),
        case("`kiln info` a PNG whose text chunk fails its CRC", &["info", &bad_crc], End::Exit(2), &["CRC"]).limited(),
        case("`kiln info` a text file named .png", &["info", &text_png], End::Exit(2), &["notes.png", "not a PNG"]).limited(),
        case("`kiln info` a FIFO", &["info", &fifo_in], End::Exit(2), &["fifo.json", "not a regular file"]).limited(),
        case("`kiln info` a safetensors tensor of shape [2^62] F32", &["info", &st_huge], End::Exit(2), &["tensor `w`", "needs"]).limited(),
        case("`kiln info` a safetensors tensor of unknown dtype and shape [2^64-1]", &["info", &st_unknown], End::Exit(2), &["tensor `w`", "X9"]).limited(),
        case("`kiln info` a safetensors tensor whose offsets end at 2^64-1", &["info", &st_offsets], End::Exit(2), &["tensor `w`", "outside"]).limited(),
        case("`kiln info MODEL` whose UNet file has a [2^62] tensor", &["info", &huge_weights], End::Exit(2), &["component `unet`", "tensor `w`"]).limited(),
        case("`kiln info MODEL` with components named `/etc` and `../../x`", &["info", &outside], End::Exit(0), &[]).limited(),
        case("`kiln info MODEL` whose VAE config is broken (the rest is listed)", &["info", &broken_component], End::Exit(2), &["component `vae`", "not valid JSON"]).limited(),
        case("`kiln info org/name@../x` (a Hub id with a bad revision)", &["info", "org/name@../x"], End::Exit(2), &["no such file or folder"]).limited(),
        // ---- bench
        case("`kiln bench --batch 2^63`", &["bench", "--preset", "sd15", "--batch", "9223372036854775808"], End::Exit(2), &["batch", "[1, 64]"]).limited(),
        case("`kiln bench --width 2^40`", &["bench", "--preset", "sd15", "--width", "1099511627776"], End::Exit(2), &["width", "8192"]).limited(),
        case("`kiln bench --iters 0`", &["bench", "--preset", "sd15", "--iters", "0"], End::Exit(2), &["iters", "[1, 1000]"]).limited(),
        case("`kiln bench --preset sd99`", &["bench", "--preset", "sd99"], End::Exit(2), &["--preset", "sd99"]).limited(),
        case("`kiln bench --unet-check` with a 3-D sample", &["bench", "--unet-check", &malformed_check], End::Exit(2), &["sample", "4-D"]),
        case("`kiln bench --unet-check` with an empty timestep", &["bench", "--unet-check", &empty_t_check], End::Exit(2), &["timestep", "empty"]),
        case("`kiln serve` without --model", &["serve"], End::Exit(2), &["--model"]),
        case("`kiln serve --model` a folder that does not exist", &["serve", "--model", "/nonexistent/model", "--port", "0"], End::Exit(2), &["--model", "/nonexistent/model"]),
        case("`kiln serve --queue-size 0`", &["serve", "--model", &sd1, "--port", "0", "--queue-size", "0"], End::Exit(2), &["--queue-size", "at least 1"]),
        case("`kiln serve` with two models of one name", &["serve", "--model", &format!("a={sd1}"), "--model", &format!("a={sdxl}"), "--port", "0"], End::Exit(2), &["two models", "\"a\""]),
        case("`kiln serve --host` an address that does not exist", &["serve", "--model", &sd1, "--host", "203.0.113.7", "--port", "0"], End::Exit(2), &["cannot listen", "203.0.113.7"]),
        case("`kiln serve --lora-dir` a file", &["serve", "--model", &sd1, "--port", "0", "--lora-dir", &out_of_place_lora_dir], End::Exit(2), &["--lora-dir", "not a folder"]),
    ]
}

/// Runs one case; returns a failure message.
fn run(c: &Case) -> Result<(), String> {
    let bin = env!("CARGO_BIN_EXE_kiln");
    let mut cmd = if c.limited {
        // 1 GiB of address space: an allocation near a GiB fails the run (an abort, not exit 2)
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("ulimit -v 1048576 && exec \"$0\" \"$@\"").arg(bin);
        cmd
    } else {
        Command::new(bin)
    };
    cmd.args(&c.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id() as i32;
    let signal_at_step = match c.drive {
        Drive::SignalDuringRun(sig) => Some(sig),
        _ => None,
    };
    // stderr: collected on a thread; the progress bar shows the first step
    let err_thread = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut r = BufReader::new(stderr);
        let mut buf = [0u8; 256];
        let mut sent = false;
        loop {
            match std::io::Read::read(&mut r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    text.extend(&buf[..n]);
                    if let Some(sig) = signal_at_step.filter(|_| !sent && String::from_utf8_lossy(&text).contains("generating")) {
                        std::thread::sleep(Duration::from_millis(500));
                        let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
                        sent = true;
                    }
                }
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let out_thread = std::thread::spawn(move || {
        // a small buffer: HeadOne takes one line and not much more
        let mut r = BufReader::with_capacity(64, stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        // HeadOne: drop the pipe after one line; else read it all
        (line, r)
    });
    let (first_line, mut rest) = out_thread.join().unwrap();
    if !matches!(c.drive, Drive::HeadOne) {
        let _ = std::io::copy(&mut rest, &mut std::io::sink());
    }
    drop(rest);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            return Err("still running after 300 s: a hang".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = err_thread.join().unwrap();
    let end = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
        (Some(code), _) => End::Exit(code),
        (None, Some(sig)) => End::Signal(sig),
        _ => End::Exit(-1),
    };
    if end != c.end {
        return Err(format!("ended {end:?}, expected {:?}; stderr: {stderr}", c.end));
    }
    if stderr.contains("panicked") {
        return Err(format!("panicked: {stderr}"));
    }
    for n in &c.says {
        if !stderr.contains(n) {
            return Err(format!("stderr should say {n:?}; it says: {stderr}"));
        }
    }
    if matches!(c.drive, Drive::HeadOne) && first_line.is_empty() {
        return Err("printed nothing before the pipe closed".into());
    }
    if let Some(after) = &c.after {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(after)).map_err(|e| {
            e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        })?;
    }
    Ok(())
}

/// docs/reliability.md's table of the catalogue, generated from the cases.
fn table(cases: &[Case]) -> String {
    let mut t = String::from("| # | input | exit | the `error:` line says |\n|---|---|---|---|\n");
    for (i, c) in cases.iter().enumerate() {
        let says = c.says.iter().map(|s| format!("`{}`", s.replace('|', "\\|"))).collect::<Vec<_>>().join(", ");
        t.push_str(&format!("| {} | {} | {} | {} |\n", i + 1, c.input.replace('|', "\\|"), c.end.show(), says));
    }
    t
}

const START: &str = "<!-- catalogue:start (generated by crates/kiln-cli/tests/catalogue.rs) -->\n";
const END: &str = "<!-- catalogue:end -->";

#[test]
fn the_bad_input_catalogue() {
    let tmp = TempDir::new("catalogue");
    let cases = cases(&tmp.0);
    assert!(cases.len() >= 60, "the catalogue has {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        if let Err(e) = run(c) {
            failures.push(format!("#{} {} ({:?}): {e}", i + 1, c.input, c.args));
        }
        // nothing half-written left behind by any case
        let leftovers: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect();
        if !leftovers.is_empty() {
            failures.push(format!("#{} {}: left {leftovers:?}", i + 1, c.input));
        }
        if c.end == End::Exit(2) || c.end == End::Exit(130) {
            let _ = std::fs::remove_file(tmp.0.join("out.png"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n\n"));

    // the docs' table is this catalogue
    let docs = root().join("docs/reliability.md");
    let text = std::fs::read_to_string(&docs).unwrap();
    let want = table(&cases);
    let (a, b) = (text.find(START).expect("docs/reliability.md has the catalogue markers"), text.find(END).unwrap());
    let have = &text[a + START.len()..b];
    if have != want {
        if std::env::var("KILN_UPDATE_DOCS").is_ok_and(|v| v == "1") {
            let updated = format!("{}{START}{want}{}", &text[..a], &text[b..]);
            std::fs::write(&docs, updated).unwrap();
        } else {
            panic!("docs/reliability.md's catalogue table differs from the cases; rerun with KILN_UPDATE_DOCS=1 to regenerate it");
        }
    }
    // README's exit-status table names every status the catalogue ends with
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for c in &cases {
        if let End::Exit(code) = c.end {
            assert!(readme.contains(&format!("| {code} |")), "README's exit-status table lacks {code}");
        }
    }
    let _ = std::io::stdout().flush();
}

/// The release profile keeps integer overflow checks on for kiln's crates: what the code does
/// with outside numbers is checked explicitly, and a case it missed panics (caught as a bug) in
/// release as in debug instead of wrapping there.
#[test]
fn the_release_profile_checks_overflow() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let manifest: toml_lite::Doc = toml_lite::parse(&manifest);
    for krate in ["kiln-cli", "kiln-pipeline", "kiln-scheduler", "kiln-nn", "kiln-unet", "kiln-vae", "kiln-text-encoder", "kiln-bench"] {
        assert_eq!(
            manifest.get(&format!("profile.release.package.{krate}"), "overflow-checks"),
            Some("true"),
            "[profile.release.package.{krate}] overflow-checks = true"
        );
    }
}

/// Just enough TOML for the test above: `[table]` headers and `key = value` lines.
mod toml_lite {
    pub struct Doc(Vec<(String, String, String)>);

    pub fn parse(text: &str) -> Doc {
        let mut table = String::new();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = t.replace('"', "");
            } else if let Some((k, v)) = line.split_once('=') {
                out.push((table.clone(), k.trim().to_string(), v.trim().to_string()));
            }
        }
        Doc(out)
    }

    impl Doc {
        pub fn get(&self, table: &str, key: &str) -> Option<&str> {
            self.0.iter().find(|(t, k, _)| t == table && k == key).map(|(_, _, v)| v.as_str())
        }
    }
}
