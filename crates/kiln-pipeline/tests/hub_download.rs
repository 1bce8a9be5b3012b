//! The online Hub path against a local mock of the Hub's HTTP API (this machine has no Hub
//! access): the repo listing (`/api/models/{id}/revision/{rev}`) and ranged file downloads
//! (`/{id}/resolve/{commit}/{file}`, answered with the `ETag`, `X-Repo-Commit` and
//! `Content-Range` headers hf-hub reads). Checks which files are fetched, the cache layout
//! written (blobs, snapshot, `refs/main`), that a second run fetches nothing, the fp16 choice,
//! and the fallback to the cache when the Hub cannot be reached.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

mod common;
use common::TempDir;
use kiln_pipeline::{resolve, HubConfig, ModelError, ResolveOptions};

const SHA: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
const REPO: &str = "kiln-test/tiny-sd";


/// The sd1 fixture as a Hub repo, plus files a real SD 1.5 repo has that kiln must not fetch.
fn repo_files() -> BTreeMap<String, Vec<u8>> {
    let root = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("../../assets/fixtures/models/sd1");
    let mut files = BTreeMap::new();
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if e.path().is_dir() {
                walk(&e.path(), &rel, out);
            } else if rel != "reference.safetensors" {
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    walk(&root, "", &mut files);
    let unet = files["unet/diffusion_pytorch_model.safetensors"].clone();
    files.insert("unet/diffusion_pytorch_model.fp16.safetensors".into(), unet);
    files.insert("unet/diffusion_pytorch_model.bin".into(), b"pickle".to_vec());
    files.insert("safety_checker/model.safetensors".into(), b"unused".to_vec());
    files.insert("v1-5-pruned-emaonly.safetensors".into(), b"single-file checkpoint".to_vec());
    files
}

/// A minimal HTTP/1.1 server answering like the Hub; records each request line.
fn mock_hub(files: BTreeMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            handle(stream, &files, &seen);
        }
    });
    (endpoint, log)
}

fn handle(mut stream: TcpStream, files: &BTreeMap<String, Vec<u8>>, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    // `Range: bytes=START-` or `bytes=START-END` (inclusive)
    let (mut range_start, mut range_end) = (None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap();
            range_start = a.parse::<usize>().ok();
            range_end = b.parse::<usize>().ok();
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    log.lock().unwrap().push(format!("{path} {range_start:?}"));
    let listing = format!("/api/models/{REPO}/revision/main");
    let resolve_prefix = format!("/{REPO}/resolve/{SHA}/");
    let (status, headers, body): (&str, String, Vec<u8>) = if path == listing {
        let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
        let body = serde_json::json!({ "sha": SHA, "siblings": siblings }).to_string().into_bytes();
        ("200 OK", "Content-Type: application/json\r\n".into(), body)
    } else if let Some(file) = path.strip_prefix(&resolve_prefix).and_then(|f| files.get(f).map(|d| (f, d))) {
        let (name, data) = file;
        let start = range_start.unwrap_or(0).min(data.len());
        let end = range_end.map_or(data.len(), |e| (e + 1).min(data.len())).max(start);
        let etag = format!("etag-{}", name.replace('/', "-"));
        let headers = format!(
            "ETag: \"{etag}\"\r\nX-Repo-Commit: {SHA}\r\nContent-Range: bytes {start}-{}/{}\r\n",
            end.saturating_sub(1),
            data.len()
        );
        ("206 Partial Content", headers, data[start..end].to_vec())
    } else {
        ("404 Not Found", String::new(), b"not found".to_vec())
    };
    let head = format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

fn hub(endpoint: &str, cache: &Path) -> HubConfig {
    HubConfig { cache_dir: cache.into(), offline: false, endpoint: endpoint.into(), token: None, progress: false }
}

fn fetched(log: &Mutex<Vec<String>>) -> Vec<String> {
    let prefix = format!("/{REPO}/resolve/{SHA}/");
    let mut files: Vec<String> = log.lock().unwrap().iter().filter_map(|l| l.strip_prefix(&prefix)).map(|l| l.split(' ').next().unwrap().to_string()).collect();
    files.dedup();
    files
}

#[test]
fn downloads_what_the_pipeline_needs_into_the_cache() {
    let files = repo_files();
    let (endpoint, log) = mock_hub(files.clone());
    let home = TempDir::new("dl");
    let cache = home.0.join("hub");
    let m = resolve(REPO, &ResolveOptions::default(), &hub(&endpoint, &cache)).unwrap();
    let repo_dir = cache.join("models--kiln-test--tiny-sd");
    let snapshot = repo_dir.join("snapshots").join(SHA);
    assert_eq!(m.root, snapshot);
    assert_eq!(fs::read_to_string(repo_dir.join("refs/main")).unwrap(), SHA);
    assert_eq!(
        fetched(&log),
        [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    );
    // every fetched file is byte-identical in the snapshot (a symlink into blobs/)
    for f in fetched(&log) {
        assert_eq!(fs::read(snapshot.join(&f)).unwrap(), files[&f], "{f}");
        assert!(fs::symlink_metadata(snapshot.join(&f)).unwrap().file_type().is_symlink(), "{f}");
    }
    assert_eq!(m.component("unet").unwrap().weights().unwrap().path, snapshot.join("unet/diffusion_pytorch_model.safetensors"));

    // a second run lists the repo and fetches nothing
    log.lock().unwrap().clear();
    resolve(REPO, &ResolveOptions::default(), &hub(&endpoint, &cache)).unwrap();
    assert_eq!(*log.lock().unwrap(), [format!("/api/models/{REPO}/revision/main None")]);

    // fp16 preferred: only the variant is added
    log.lock().unwrap().clear();
    let m = resolve(REPO, &ResolveOptions { prefer_fp16: true, ..Default::default() }, &hub(&endpoint, &cache)).unwrap();
    assert_eq!(fetched(&log), ["unet/diffusion_pytorch_model.fp16.safetensors"]);
    assert_eq!(m.component("unet").unwrap().weights().unwrap().variant.as_deref(), Some("fp16"));

    // a Hub id as --vae (a pipeline repo: its vae/ folder), already cached: nothing fetched
    log.lock().unwrap().clear();
    let m = resolve(REPO, &ResolveOptions { vae: Some(REPO.into()), ..Default::default() }, &hub(&endpoint, &cache)).unwrap();
    assert_eq!(m.component("vae").unwrap().dir, snapshot.join("vae"));
    assert!(fetched(&log).is_empty(), "{:?}", fetched(&log));

    // offline now finds it all in the cache
    let offline = HubConfig::offline(&cache);
    assert_eq!(resolve(REPO, &ResolveOptions::default(), &offline).unwrap().root, snapshot);
    // and when the Hub cannot be reached, the cached snapshot is used
    let unreachable = hub("http://127.0.0.1:9", &cache);
    assert_eq!(resolve(REPO, &ResolveOptions::default(), &unreachable).unwrap().root, snapshot);
}

#[test]
fn hub_errors_name_the_repo() {
    let (endpoint, _log) = mock_hub(repo_files());
    let home = TempDir::new("err");
    let cache = home.0.join("hub");
    // unknown repo: the listing 404s and nothing is cached
    let err = resolve("kiln-test/missing", &ResolveOptions::default(), &hub(&endpoint, &cache)).unwrap_err();
    assert!(matches!(err, ModelError::Hub { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("Hub model kiln-test/missing: cannot list the repo at {endpoint} (")), "{msg}");
    assert!(msg.ends_with(&format!("and it is not in the cache {}", cache.display())), "{msg}");
    // a repo without model_index.json
    let mut files = repo_files();
    files.remove("model_index.json");
    let (endpoint, _log) = mock_hub(files);
    let err = resolve(REPO, &ResolveOptions::default(), &hub(&endpoint, &cache)).unwrap_err().to_string();
    assert_eq!(err, format!("Hub model {REPO}: the repo has no model_index.json: it is not a diffusers pipeline"));
    // a listing without a component's weights: named before anything large is fetched
    let mut files = repo_files();
    files.retain(|f, _| !f.starts_with("vae/diffusion_pytorch_model"));
    let (endpoint, log) = mock_hub(files);
    let err = resolve(REPO, &ResolveOptions::default(), &hub(&endpoint, &cache)).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{REPO} (commit {}): vae: no weights for `vae` (expected diffusion_pytorch_model.safetensors or diffusion_pytorch_model.fp16.safetensors)", &SHA[..12])
    );
    assert_eq!(fetched(&log), ["model_index.json"]);
}
