//! PNG output with AUTOMATIC1111-style generation parameters, and reading them back.
//!
//! A1111's web UI stores how an image was made in a PNG text chunk named `parameters` (the
//! "infotext"), which it, ComfyUI, InvokeAI, Civitai and most image viewers read. kiln writes the
//! same text so its images carry their recipe:
//!
//! ```text
//! a red fox in the snow
//! Negative prompt: blurry
//! Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: org/name
//! ```
//!
//! # The format (A1111 `modules/processing.py::create_infotext`, `modules/infotext_utils.py`)
//!
//! * Writing: `f"{prompt}{negative}\n{params}".strip()` where `negative` is
//!   `"\nNegative prompt: {neg}"` when `neg` is non-empty, and `params` is `", ".join(f"{k}:
//!   {quote(v)}")`; `quote` leaves a value alone unless it contains `,`, `\n` or `:`, and then
//!   writes it as a JSON string (`json.dumps(v, ensure_ascii=False)`).
//! * The chunk: PIL's `PngInfo.add_text("parameters", text)` — a `tEXt` chunk when the text is
//!   Latin-1, else an uncompressed `iTXt` chunk (UTF-8), before the image data.
//! * Reading (`parse_generation_parameters`): strip, split on `\n`; the last line is the parameter
//!   line if the regex `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` finds at least 3
//!   `key: value` pairs in it, otherwise it belongs to the prompt. The other lines are trimmed; a
//!   line starting with `Negative prompt:` starts the negative prompt, and lines are rejoined with
//!   `\n`. A value in double quotes is JSON-decoded; a pair whose value is empty is dropped.
//!   [`GenerationParams::parse`] follows these rules exactly, so what A1111 reads from a kiln PNG
//!   and what kiln reads from an A1111 PNG agree. (As in A1111, leading and trailing whitespace of
//!   each prompt line is not kept.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::RgbImage;
use serde::Serialize;
use thiserror::Error;

/// The PNG text keyword A1111 stores the infotext under.
pub const PARAMETERS_KEY: &str = "parameters";

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Why a PNG could not be written or read. Every variant names the file (or folder).
#[derive(Debug, Error)]
pub enum PngError {
    #[error("output directory {0} does not exist")]
    NoOutputDir(PathBuf),
    #[error("output directory {0} is not a directory")]
    OutputDirNotADir(PathBuf),
    #[error("{0} already exists; not overwriting it (use --overwrite to replace it)")]
    Exists(PathBuf),
    #[error("{0} names a folder, not an image file (give a file name ending in .png)")]
    IsADirectory(PathBuf),
    #[error("{0} is not a regular file (a symlink, FIFO or device); kiln does not replace it, even with --overwrite")]
    NotARegularFile(PathBuf),
    #[error("{0}: kiln writes PNG images; give a file name ending in .png")]
    NotPngName(PathBuf),
    #[error("{path}: the file name is {bytes} bytes; file systems take at most 255")]
    NameTooLong { path: PathBuf, bytes: usize },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot encode {path} as PNG: {source}")]
    Encode { path: PathBuf, source: png::EncodingError },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{0} is not a PNG file (no PNG signature)")]
    NotPng(PathBuf),
    #[error("{path} is not a valid PNG (corrupt or truncated?): {source}")]
    Decode { path: PathBuf, source: png::DecodingError },
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("{path} is not a valid PNG (corrupt or truncated?): {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: its `{keyword}` text is {bytes} bytes or more; kiln reads at most {limit}")]
    TextTooLarge { path: PathBuf, keyword: String, bytes: u64, limit: usize },
    #[error("{0} is a PNG without generation parameters (no `parameters` text chunk)")]
    NoParameters(PathBuf),
    #[error("{path}: cannot parse its generation parameters: {source}")]
    Parameters { path: PathBuf, source: ParamsError },
}

/// Why an infotext could not be read into [`GenerationParams`].
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParamsError {
    #[error("no parameter line (`Steps: …, Sampler: …, …`)")]
    NoParameterLine,
    #[error("no `{0}` field")]
    Missing(&'static str),
    #[error("`{key}: {value}` is not a valid {what}")]
    Invalid { key: &'static str, value: String, what: &'static str },
}

/// How an image was generated: the fields of A1111's infotext that kiln writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationParams {
    pub prompt: String,
    /// Empty when there was none (the line is then left out, as A1111 does).
    pub negative_prompt: String,
    pub steps: u32,
    /// The sampler's display name (A1111's are e.g. `Euler a`, `DPM++ 2M`).
    pub sampler: String,
    pub cfg_scale: f32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// The model name (A1111 writes the checkpoint name; kiln the folder or Hub id). Left out when
    /// `None`; older A1111 images have no `Model` field.
    pub model: Option<String>,
    /// Further `key: value` fields in order (e.g. `Schedule type: Karras`, `Denoising strength:
    /// 0.75`). Keys must not contain `:` or `,` (A1111's keys are words, spaces, `-` and `/`).
    pub extra: Vec<(String, String)>,
}

impl GenerationParams {
    /// The infotext, exactly as A1111's `create_infotext` lays it out.
    pub fn to_infotext(&self) -> String {
        let mut fields: Vec<(&str, String)> = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", self.sampler.clone()),
            // Rust prints the shortest round-trip form: 7 -> "7", 7.5 -> "7.5" (what A1111 shows).
            ("CFG scale", self.cfg_scale.to_string()),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
        ];
        if let Some(model) = &self.model {
            fields.push(("Model", model.clone()));
        }
        fields.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let params = fields
            .iter()
            .map(|(k, v)| if *k == v { k.to_string() } else { format!("{k}: {}", quote(v)) })
            .collect::<Vec<_>>()
            .join(", ");
        let negative = if self.negative_prompt.is_empty() {
            String::new()
        } else {
            format!("\nNegative prompt: {}", self.negative_prompt)
        };
        format!("{}{negative}\n{params}", self.prompt).trim().to_string()
    }

    /// Reads an infotext (A1111's `parse_generation_parameters`, see the module docs). `Steps`,
    /// `Sampler`, `CFG scale`, `Seed` and `Size` are required; `Model` is optional; every other
    /// field goes to [`extra`](Self::extra) in order.
    pub fn parse(text: &str) -> Result<Self, ParamsError> {
        let infotext = parse_infotext(text);
        if infotext.fields.is_empty() {
            return Err(ParamsError::NoParameterLine);
        }
        let mut steps = None;
        let mut sampler = None;
        let mut cfg_scale = None;
        let mut seed = None;
        let mut size = None;
        let mut model = None;
        let mut extra: Vec<(String, String)> = Vec::new();
        // Later duplicates win, as in A1111's dict.
        for (key, value) in infotext.fields {
            match key.as_str() {
                "Steps" => steps = Some(number::<u32>("Steps", &value, "step count")?),
                "Sampler" => sampler = Some(value),
                "CFG scale" => cfg_scale = Some(number::<f32>("CFG scale", &value, "number")?),
                "Seed" => seed = Some(number::<u64>("Seed", &value, "seed (0 ≤ seed < 2⁶⁴)")?),
                "Size" => {
                    size = Some(image_size(&value).ok_or(ParamsError::Invalid {
                        key: "Size",
                        value: value.clone(),
                        what: "size (WIDTHxHEIGHT)",
                    })?)
                }
                "Model" => model = Some(value),
                _ => {
                    extra.retain(|(k, _)| *k != key);
                    extra.push((key, value));
                }
            }
        }
        let (width, height) = size.ok_or(ParamsError::Missing("Size"))?;
        Ok(GenerationParams {
            prompt: infotext.prompt,
            negative_prompt: infotext.negative_prompt,
            steps: steps.ok_or(ParamsError::Missing("Steps"))?,
            sampler: sampler.ok_or(ParamsError::Missing("Sampler"))?,
            cfg_scale: cfg_scale.ok_or(ParamsError::Missing("CFG scale"))?,
            seed: seed.ok_or(ParamsError::Missing("Seed"))?,
            width,
            height,
            model,
            extra,
        })
    }
}

impl std::fmt::Display for GenerationParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_infotext())
    }
}

fn number<T: std::str::FromStr>(key: &'static str, value: &str, what: &'static str) -> Result<T, ParamsError> {
    value.trim().parse().map_err(|_| ParamsError::Invalid { key, value: value.to_string(), what })
}

/// A1111's `re_imagesize`: `^(\d+)x(\d+)$`.
fn image_size(value: &str) -> Option<(u32, u32)> {
    let (w, h) = value.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(w) || !digits(h) {
        return None;
    }
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// A1111's `quote`: a value with `,`, `\n` or `:` becomes a JSON string (non-ASCII kept as is).
fn quote(value: &str) -> String {
    if value.contains([',', '\n', ':']) {
        serde_json::to_string(value).expect("a string always serialises")
    } else {
        value.to_string()
    }
}

/// An infotext split the way A1111 splits it, before any field is interpreted.
#[derive(Debug, Clone, PartialEq)]
pub struct Infotext {
    pub prompt: String,
    pub negative_prompt: String,
    /// `key: value` pairs of the parameter line, values unquoted; empty when there is none.
    pub fields: Vec<(String, String)>,
}

/// Splits an infotext into prompt, negative prompt and the parameter line's fields, exactly as
/// A1111's `parse_generation_parameters` does (without its UI defaults).
pub fn parse_infotext(text: &str) -> Infotext {
    let mut lines: Vec<&str> = text.trim().split('\n').collect();
    let last = lines.pop().unwrap_or_default();
    let mut fields = find_params(last);
    if fields.len() < 3 {
        lines.push(last);
        fields.clear();
    }
    let (mut prompt, mut negative) = (String::new(), String::new());
    let mut in_negative = false;
    for line in lines {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = rest.trim();
        }
        let target = if in_negative { &mut negative } else { &mut prompt };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    let fields = fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty()) // A1111: `v[0]` raises on an empty value and the pair is skipped
        .map(|(k, v)| {
            let v = if v.starts_with('"') && v.ends_with('"') { unquote(&v) } else { v };
            (k, v)
        })
        .collect();
    Infotext { prompt, negative_prompt: negative, fields }
}

fn unquote(value: &str) -> String {
    serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_string())
}

/// Python's `re.findall` of A1111's `re_param` on one line: non-overlapping `(key, raw value)`
/// matches, scanning left to right and retrying one character later where no match starts.
///
/// Linear in the line's length: a start that fails skips every later start that would fail the
/// same way (they reach the same end of the key run), and the end of each quoted value is found
/// once for the whole line ([`quoted_ends`]).
fn find_params(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let quoted = quoted_ends(&chars);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match match_param(&chars, &quoted, i) {
            Ok((key, value, end)) => {
                out.push((key, value));
                i = end;
            }
            Err(next) => i = next.max(i + 1),
        }
    }
    out
}

/// Python's `\w` on str patterns: Unicode letters and digits, and `_`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// For each position `r`, where `(?:\\.|[^\\"])*"` started at `r` ends: the index of the closing
/// `"` (an escape `\x` takes two characters, `.` no newline), or `None` where a lone `\` or the
/// line's end comes first. Computed right to left, once per line.
fn quoted_ends(chars: &[char]) -> Vec<Option<usize>> {
    let n = chars.len();
    let mut end = vec![None; n + 2];
    for r in (0..n).rev() {
        end[r] = match chars[r] {
            '"' => Some(r),
            '\\' if r + 1 < n && chars[r + 1] != '\n' => end[r + 2],
            '\\' => None,
            _ => end[r + 1],
        };
    }
    end
}

/// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` anchored at `start`: the key, the raw
/// value and where the next match may start; else the first start that could still match. The
/// key class cannot hold `:`, so the greedy key run is the only candidate; the value tries the
/// quoted form first and falls back to `[^,]*`, which always matches.
fn match_param(chars: &[char], quoted: &[Option<usize>], start: usize) -> Result<(String, String, usize), usize> {
    let n = chars.len();
    let mut p = start;
    while p < n && chars[p].is_whitespace() {
        p += 1;
    }
    if p >= n || !is_word(chars[p]) {
        // every start up to p skips the same whitespace to the same non-word character
        return Err(p + 1);
    }
    let key_start = p;
    p += 1;
    let run_start = p;
    while p < n && (is_word(chars[p]) || matches!(chars[p], ' ' | '-' | '/')) {
        p += 1;
    }
    if p == run_start || p >= n || chars[p] != ':' {
        // every later start inside the run ends its run at the same p
        return Err(p);
    }
    let key: String = chars[key_start..p].iter().collect();
    p += 1;
    while p < n && chars[p].is_whitespace() {
        p += 1;
    }
    let value_start = p;
    // "(?:\\.|[^\\"])+" followed by `,` or the end of the line (at least one item: the closing
    // quote is not right after the opening one)
    if p < n && chars[p] == '"' {
        if let Some(close) = quoted[p + 1].filter(|&c| c > p + 1) {
            let after = close + 1;
            if after == n || chars[after] == ',' {
                let value: String = chars[value_start..after].iter().collect();
                return Ok((key, value, if after == n { n } else { after + 1 }));
            }
        }
    }
    let mut q = value_start;
    while q < n && chars[q] != ',' {
        q += 1;
    }
    let value: String = chars[value_start..q].iter().collect();
    Ok((key, value, if q == n { n } else { q + 1 }))
}

/// Checks that a PNG can be written at `path` before any work is done (a generation can take
/// minutes): a file name ending in `.png` (kiln writes PNG; another extension would mislabel the
/// bytes), no longer than a file name may be, in an existing folder kiln may write to, and
/// nothing at `path` but — with `overwrite` — a regular file. A symlink (dangling or not), a
/// FIFO or a device at `path` is never replaced; neither is a folder. The folder is probed by
/// creating and removing a temporary file, as the write will.
pub fn check_output(path: &Path, overwrite: bool) -> Result<(), PngError> {
    let text = path.as_os_str().to_string_lossy();
    let Some(file_name) = path.file_name().filter(|_| !text.ends_with('/')) else {
        return Err(PngError::IsADirectory(path.into()));
    };
    if file_name.len() > 255 {
        return Err(PngError::NameTooLong { path: path.into(), bytes: file_name.len() });
    }
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(PngError::IsADirectory(path.into()));
    }
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        return Err(PngError::NotPngName(path.into()));
    }
    let dir = output_dir(path)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Err(PngError::IsADirectory(path.into())),
        Ok(m) if !m.is_file() => return Err(PngError::NotARegularFile(path.into())),
        Ok(_) if !overwrite => return Err(PngError::Exists(path.into())),
        _ => {}
    }
    // the folder takes a new file (permissions, a read-only file system, a full inode table)
    TempFile::create(&dir).map(drop)
}

/// The folder `path` goes in: it must exist and be a folder.
fn output_dir(path: &Path) -> Result<PathBuf, PngError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(PngError::OutputDirNotADir(dir)),
        Err(_) => Err(PngError::NoOutputDir(dir)),
    }
}

/// Writes `image` to `path` as an 8-bit RGB PNG, with `params` (if any) as A1111's `parameters`
/// text. See [`save_png_with_text`].
pub fn save_png(path: &Path, image: &RgbImage, params: Option<&GenerationParams>, overwrite: bool) -> Result<(), PngError> {
    match params {
        Some(p) => save_png_with_text(path, image, &[(PARAMETERS_KEY, &p.to_infotext())], overwrite),
        None => save_png_with_text(path, image, &[], overwrite),
    }
}

/// Writes `image` to `path` as an 8-bit RGB PNG with the given text chunks (`tEXt` when the text
/// is Latin-1, else uncompressed `iTXt`, as PIL does), atomically: the PNG is written to a
/// temporary file in the same directory, synced, then moved into place, so `path` is never seen
/// half-written. An existing `path` is an error unless `overwrite`; without `overwrite` the final
/// step is a hard link, which fails if `path` appeared in the meantime (no race with another
/// writer). The output directory must exist, and `path` must pass [`check_output`] (checked
/// again here: time passed since the caller checked).
pub fn save_png_with_text(path: &Path, image: &RgbImage, texts: &[(&str, &str)], overwrite: bool) -> Result<(), PngError> {
    check_output(path, overwrite)?;
    let dir = output_dir(path)?;
    let tmp = TempFile::create(&dir)?;
    {
        let mut out = BufWriter::new(&tmp.file);
        write_png(&mut out, image, texts).map_err(|source| PngError::Encode { path: path.into(), source })?;
        out.flush().map_err(|source| PngError::Write { path: tmp.path.clone(), source })?;
    }
    tmp.file.sync_all().map_err(|source| PngError::Write { path: tmp.path.clone(), source })?;
    tmp.publish(path, overwrite)
}

/// The bytes [`save_png_with_text`] writes for `image` and `texts`: what `kiln serve` sends, the
/// same bytes `kiln generate` writes to a file.
pub fn encode_png(image: &RgbImage, texts: &[(&str, &str)]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    write_png(&mut out, image, texts)?;
    Ok(out)
}

/// An 8-bit RGB PNG with the text chunks before the image data (`tEXt` when a text is Latin-1,
/// else uncompressed `iTXt`, as PIL does).
fn write_png(out: &mut impl Write, image: &RgbImage, texts: &[(&str, &str)]) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(out, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, text) in texts {
        if text.chars().all(|c| (c as u32) < 256) {
            encoder.add_text_chunk(key.to_string(), text.to_string())?;
        } else {
            encoder.add_itxt_chunk(key.to_string(), text.to_string())?;
        }
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(image.as_raw())?;
    writer.finish()
}

/// A temporary file next to the destination, removed on drop unless published.
struct TempFile {
    path: PathBuf,
    file: File,
    published: bool,
}

impl TempFile {
    /// A new file `.kiln-<pid>-<n>.png.tmp` in `dir`: a short name of its own (a name derived
    /// from the output's would pass the file system's 255 bytes where the output's does not).
    fn create(dir: &Path) -> Result<Self, PngError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".kiln-{}-{n}.png.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(TempFile { path, file, published: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(PngError::Write { path, source }),
            }
        }
    }

    fn publish(mut self, dest: &Path, overwrite: bool) -> Result<(), PngError> {
        let write_err = |source| PngError::Write { path: dest.into(), source };
        if overwrite {
            fs::rename(&self.path, dest).map_err(write_err)?;
        } else {
            match fs::hard_link(&self.path, dest) {
                Ok(()) => {
                    let _ = fs::remove_file(&self.path);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(PngError::Exists(dest.into())),
                // A file system without hard links: check, then rename (a small race remains).
                Err(_) => {
                    if fs::symlink_metadata(dest).is_ok() {
                        return Err(PngError::Exists(dest.into()));
                    }
                    fs::rename(&self.path, dest).map_err(write_err)?;
                }
            }
        }
        self.published = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Whether the file at `path` starts with the PNG signature.
pub fn is_png(path: &Path) -> Result<bool, PngError> {
    let mut file = File::open(path).map_err(|source| PngError::Read { path: path.into(), source })?;
    let mut sig = [0u8; 8];
    match file.read_exact(&mut sig) {
        Ok(()) => Ok(sig == PNG_SIGNATURE),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(PngError::Read { path: path.into(), source }),
    }
}

/// The most text kiln takes from a PNG: each text chunk's bytes, inflated or not, and all of
/// them together. A1111's `parameters` are a few KB; a zTXt chunk of 1 MB can inflate to a GB.
pub const TEXT_LIMIT: usize = 1 << 20;

/// The text chunks (`tEXt`, `zTXt`, `iTXt`) of the PNG at `path` whose keyword is `want` (every
/// one with `None`), as `(keyword, text)` in file order. Walks the chunks without decoding the
/// image: other chunks are skipped unread, only the wanted text chunks are read (their CRC
/// checked) and inflated, each and all together at most [`TEXT_LIMIT`] bytes. Refuses a path
/// that is not a regular file (a FIFO would block).
pub fn read_png_texts(path: &Path, want: Option<&str>) -> Result<Vec<(String, String)>, PngError> {
    let meta = fs::metadata(path).map_err(|source| PngError::Read { path: path.into(), source })?;
    if !meta.is_file() {
        return Err(PngError::NotAFile(path.into()));
    }
    if !is_png(path)? {
        return Err(PngError::NotPng(path.into()));
    }
    let file = File::open(path).map_err(|source| PngError::Read { path: path.into(), source })?;
    let bad = |message: String| PngError::Corrupt { path: path.into(), message };
    let read_err = |source| PngError::Read { path: path.into(), source };
    let mut r = BufReader::new(file);
    let mut sig = [0u8; 8];
    r.read_exact(&mut sig).map_err(read_err)?;
    let (mut texts, mut total) = (Vec::new(), 0usize);
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(bad("it ends before its IEND chunk".into())),
            Err(e) => return Err(read_err(e)),
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind = [head[4], head[5], head[6], head[7]];
        if len > i32::MAX as u32 {
            return Err(bad(format!("chunk {} claims {len} bytes (PNG allows at most 2^31 - 1)", String::from_utf8_lossy(&kind))));
        }
        if &kind == b"IEND" {
            return Ok(texts);
        }
        let is_text = matches!(&kind, b"tEXt" | b"zTXt" | b"iTXt");
        // the keyword (1 to 79 Latin-1 bytes and a NUL) decides whether the chunk is read
        let (raw_keyword, consumed) = if is_text { read_keyword(&mut r, len).map_err(read_err)? } else { (None, 0) };
        let keyword = raw_keyword.as_deref().map(latin1);
        if !keyword.as_deref().is_some_and(|k| want.is_none_or(|w| w == k)) {
            // skip the rest of the chunk and its CRC
            let skipped = io::copy(&mut (&mut r).take(len as u64 - consumed + 4), &mut io::sink()).map_err(read_err)?;
            if skipped < len as u64 - consumed + 4 {
                return Err(bad("it ends inside a chunk".into()));
            }
            continue;
        }
        let (keyword, raw_keyword) = (keyword.unwrap_or_default(), raw_keyword.unwrap_or_default());
        let rest_len = len as usize - raw_keyword.len() - 1;
        if rest_len > TEXT_LIMIT {
            return Err(PngError::TextTooLarge { path: path.into(), keyword, bytes: rest_len as u64, limit: TEXT_LIMIT });
        }
        let mut data = vec![0u8; rest_len];
        r.read_exact(&mut data).map_err(|_| bad(format!("its {} chunk `{keyword}` is cut short", String::from_utf8_lossy(&kind))))?;
        let mut crc = [0u8; 4];
        r.read_exact(&mut crc).map_err(|_| bad("it ends inside a chunk".into()))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&kind);
        hasher.update(&raw_keyword);
        hasher.update(&[0]);
        hasher.update(&data);
        if hasher.finalize() != u32::from_be_bytes(crc) {
            return Err(bad(format!("the CRC of its `{keyword}` text chunk does not match (corrupt file?)")));
        }
        let limit = TEXT_LIMIT - total;
        let too_large = |bytes: u64| PngError::TextTooLarge { path: path.into(), keyword: keyword.clone(), bytes, limit: TEXT_LIMIT };
        let text = match &kind {
            b"tEXt" => latin1(&data),
            b"zTXt" => match data.split_first() {
                Some((0, compressed)) => latin1(&inflate(compressed, limit).map_err(|e| e.map_or_else(|| too_large(limit as u64 + 1), |m| bad(format!("`{keyword}`: {m}"))))?),
                _ => return Err(bad(format!("`{keyword}`: unknown zTXt compression method"))),
            },
            _ => {
                // iTXt: compression flag, method, language tag\0, translated keyword\0, text
                let [flag, method, rest @ ..] = data.as_slice() else { return Err(bad(format!("`{keyword}`: iTXt chunk too short"))) };
                let mut parts = rest.splitn(3, |&b| b == 0);
                let (_language, _translated, text) = (parts.next(), parts.next(), parts.next().ok_or_else(|| bad(format!("`{keyword}`: malformed iTXt chunk")))?);
                let bytes = match (flag, method) {
                    (0, _) => text.to_vec(),
                    (1, 0) => inflate(text, limit).map_err(|e| e.map_or_else(|| too_large(limit as u64 + 1), |m| bad(format!("`{keyword}`: {m}"))))?,
                    _ => return Err(bad(format!("`{keyword}`: unknown iTXt compression"))),
                };
                String::from_utf8(bytes).map_err(|_| bad(format!("`{keyword}`: iTXt text is not UTF-8")))?
            }
        };
        total += text.len();
        if total > TEXT_LIMIT {
            return Err(too_large(total as u64));
        }
        texts.push((keyword, text));
    }
}

/// A text chunk's keyword bytes (read up to its NUL), and how many bytes of the chunk that
/// consumed; `None` when the chunk has no keyword of 1 to 79 bytes (it is then skipped like any
/// other chunk).
fn read_keyword(r: &mut impl Read, len: u32) -> io::Result<(Option<Vec<u8>>, u64)> {
    let mut keyword = Vec::new();
    let mut byte = [0u8; 1];
    while keyword.len() < 80 && (keyword.len() as u32) < len {
        r.read_exact(&mut byte)?;
        if byte[0] == 0 {
            let consumed = keyword.len() as u64 + 1;
            return Ok(((!keyword.is_empty()).then_some(keyword), consumed));
        }
        keyword.push(byte[0]);
    }
    let consumed = keyword.len() as u64;
    Ok((None, consumed))
}

/// zlib-inflates `data` into at most `limit` bytes: `Err(None)` past the limit, `Err(Some(why))`
/// when it is not a valid zlib stream.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, Option<String>> {
    match fdeflate::decompress_to_vec_bounded(data, limit) {
        Ok(v) => Ok(v),
        Err(fdeflate::BoundedDecompressionError::OutputTooLarge { .. }) => Err(None),
        Err(_) => Err(Some("its compressed text is not a valid zlib stream".into())),
    }
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The raw `parameters` text of the PNG at `path`; `None` when it has none.
pub fn read_parameters(path: &Path) -> Result<Option<String>, PngError> {
    let texts = read_png_texts(path, Some(PARAMETERS_KEY))?;
    Ok(texts.into_iter().find(|(k, _)| k == PARAMETERS_KEY).map(|(_, v)| v))
}

/// The generation parameters of the PNG at `path`, parsed; an error when it has none.
pub fn read_generation_params(path: &Path) -> Result<GenerationParams, PngError> {
    let text = read_parameters(path)?.ok_or_else(|| PngError::NoParameters(path.into()))?;
    GenerationParams::parse(&text).map_err(|source| PngError::Parameters { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> GenerationParams {
        GenerationParams {
            prompt: "a red fox in the snow".into(),
            negative_prompt: "blurry".into(),
            steps: 30,
            sampler: "Euler a".into(),
            cfg_scale: 7.5,
            seed: 42,
            width: 512,
            height: 768,
            model: Some("stabilityai/stable-diffusion-2-1".into()),
            extra: vec![],
        }
    }

    #[test]
    fn infotext_layout_matches_a1111() {
        assert_eq!(
            params().to_infotext(),
            "a red fox in the snow\nNegative prompt: blurry\n\
             Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: stabilityai/stable-diffusion-2-1"
        );
        let p = GenerationParams { negative_prompt: String::new(), cfg_scale: 7.0, model: None, ..params() };
        assert_eq!(p.to_infotext(), "a red fox in the snow\nSteps: 30, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768");
        // values with `,` `:` or a newline are JSON-quoted
        let p = GenerationParams {
            model: Some("C:\\models\\a, b".into()),
            extra: vec![("Note".into(), "two\nlines \"q\"".into())],
            ..params()
        };
        assert!(p.to_infotext().ends_with(r#"Model: "C:\\models\\a, b", Note: "two\nlines \"q\"""#), "{}", p.to_infotext());
    }

    #[test]
    fn parses_a1111_example() {
        // The example in A1111's parse_generation_parameters docstring.
        let text = "girl with an artist's beret, determined, blue eyes\n\
                    Negative prompt: ugly, fat, (((deformed))), [blurry]\n\
                    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
        let p = GenerationParams::parse(text).unwrap();
        assert_eq!(p.prompt, "girl with an artist's beret, determined, blue eyes");
        assert_eq!(p.negative_prompt, "ugly, fat, (((deformed))), [blurry]");
        assert_eq!((p.steps, p.sampler.as_str(), p.cfg_scale, p.seed, p.width, p.height), (20, "Euler a", 7.0, 965400086, 512, 512));
        assert_eq!(p.model, None);
        assert_eq!(p.extra, vec![("Model hash".to_string(), "45dee52b".to_string())]);
    }

    #[test]
    fn round_trips_multiline_unicode_and_quoted_values() {
        let p = GenerationParams {
            prompt: "line one, with commas: and colons\nzweite Zeile ü\n\n宇宙飛行士 🚀".into(),
            negative_prompt: "low quality\nwatermark, text".into(),
            model: Some("/models/my: model".into()),
            extra: vec![
                ("Schedule type".into(), "Karras".into()),
                ("Lora hashes".into(), "a: 1, b: \"2\"".into()),
                ("Version".into(), "kiln 0.1.0".into()),
            ],
            ..params()
        };
        assert_eq!(GenerationParams::parse(&p.to_infotext()).unwrap(), p);
        let no_neg = GenerationParams { negative_prompt: String::new(), ..p.clone() };
        assert_eq!(GenerationParams::parse(&no_neg.to_infotext()).unwrap(), no_neg);
        let empty = GenerationParams { prompt: String::new(), ..p };
        assert_eq!(GenerationParams::parse(&empty.to_infotext()).unwrap(), empty);
    }

    /// Python's `re.findall`, A1111's prompt split and `json.dumps` on the cases of
    /// `scripts/fixtures/png_params.py`: exact agreement.
    #[test]
    fn matches_python_on_fixture_cases() {
        let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("../../assets/fixtures/png/infotext_cases.json");
        let cases: serde_json::Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let pairs = |v: &serde_json::Value| -> Vec<(String, String)> {
            v.as_array().unwrap().iter().map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into())).collect()
        };
        for case in cases["findall"].as_array().unwrap() {
            let line = case["line"].as_str().unwrap();
            assert_eq!(find_params(line), pairs(&case["pairs"]), "findall on {line:?}");
        }
        for case in cases["split"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let got = parse_infotext(text);
            assert_eq!(got.prompt, case["prompt"].as_str().unwrap(), "prompt of {text:?}");
            assert_eq!(got.negative_prompt, case["negative_prompt"].as_str().unwrap(), "negative prompt of {text:?}");
            assert_eq!(got.fields, pairs(&case["fields"]), "fields of {text:?}");
        }
        for case in cases["quote"].as_array().unwrap() {
            let value = case["value"].as_str().unwrap();
            assert_eq!(serde_json::to_string(value).unwrap(), case["quoted"].as_str().unwrap(), "json.dumps({value:?})");
        }
    }

    #[test]
    fn regex_corner_cases() {
        // fewer than 3 pairs: the last line is prompt text
        let i = parse_infotext("hello\nfoo: bar, baz: qux");
        assert_eq!((i.prompt.as_str(), i.fields.len()), ("hello\nfoo: bar, baz: qux", 0));
        // an empty value is dropped; a quoted value not followed by `,` falls back to [^,]*
        let i = parse_infotext("p\nSteps: 1, Empty: , Qq: \"a\" b, Seed: 2");
        assert_eq!(
            i.fields,
            vec![("Steps".into(), "1".into()), ("Qq".into(), "\"a\" b".into()), ("Seed".into(), "2".into())]
        );
        // a one-letter key does not match (`\w[\w \-/]+` needs two characters); scanning resumes
        let i = parse_infotext("p\nA: 1, Bb: 2, Cc: 3, Dd: 4");
        assert_eq!(i.fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["Bb", "Cc", "Dd"]);
        assert_eq!(GenerationParams::parse("just a prompt"), Err(ParamsError::NoParameterLine));
        assert_eq!(
            GenerationParams::parse("p\nSteps: x, Sampler: a, CFG scale: 1, Seed: 1, Size: 1x1"),
            Err(ParamsError::Invalid { key: "Steps", value: "x".into(), what: "step count" })
        );
        assert_eq!(
            GenerationParams::parse("p\nSteps: 1, Sampler: a, CFG scale: 1, Size: 1x1"),
            Err(ParamsError::Missing("Seed"))
        );
    }
}
