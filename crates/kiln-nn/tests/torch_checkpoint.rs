//! kiln's PyTorch checkpoint reader against files torch.save wrote
//! (scripts/fixtures/torch_checkpoints.py → assets/fixtures/checkpoints/): every tensor of a
//! `.ckpt` laid out as Stable Diffusion's, read back byte for byte as torch holds it; and the
//! files that must be refused — pickles that call code, a storage cut short, a view past its
//! storage, a recursive structure, 2^40 paths through shared references, the legacy format, a
//! truncated archive — each with an error
//! that says what is wrong, without running anything.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_nn::{read_safetensors_header, read_torch_checkpoint, LoadError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/fixtures/checkpoints").join(name)
}

/// `tiny.expected.safetensors`: name → (dtype, shape, bytes).
fn expected() -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let path = fixture("tiny.expected.safetensors");
    let header = read_safetensors_header(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let data = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    header.tensors.into_iter().map(|t| (t.name, (t.dtype, t.shape, bytes[data + t.offsets.0 as usize..data + t.offsets.1 as usize].to_vec()))).collect()
}

#[test]
fn every_tensor_of_a_ckpt_reads_back_as_torch_holds_it() {
    let ckpt = read_torch_checkpoint(&fixture("tiny.ckpt")).unwrap();
    let want = expected();
    let got: BTreeMap<_, _> = ckpt.tensors.iter().map(|t| (t.name.clone(), t)).collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, (dtype, shape, bytes)) in &want {
        let t = got[name];
        assert_eq!((t.dtype, &t.shape), (dtype.as_str(), shape), "{name}");
        assert_eq!(&ckpt.tensor_bytes(t).unwrap(), bytes, "{name}: bytes");
    }
    // the views are what the fixture says: a transposed one, and a slice at an offset in a shared storage
    assert_eq!(got["state_dict.model.transposed"].strides, [1, 6]);
    assert_eq!((got["state_dict.model.slice"].offset, got["state_dict.model.slice"].storage.clone()), (8, got["state_dict.model.base"].storage.clone()));
}

fn error(name: &str) -> LoadError {
    read_torch_checkpoint(&fixture(name)).expect_err(name)
}

#[test]
fn pickles_that_call_code_are_refused_by_name() {
    for (file, global) in [("evil_os_system.ckpt", "posix.system"), ("evil_eval.ckpt", "__builtin__.eval"), ("evil_subprocess.ckpt", "commands.check_output")] {
        match error(file) {
            LoadError::UnsafePickle { global: g, .. } => assert_eq!(g, global, "{file}"),
            other => panic!("{file}: {other}"),
        }
    }
    assert!(error("evil_os_system.ckpt").to_string().contains("refused: its pickle calls `posix.system`"));
}

#[test]
fn broken_checkpoints_get_errors_that_say_what_is_wrong() {
    let cases = [
        ("short_storage.ckpt", "storage `data/0` holds"),
        ("view_past_end.ckpt", "reaches past the end of its storage"),
        ("recursive.ckpt", "a recursive structure?"),
        ("shared_paths.ckpt", "(shared references multiplying?)"),
        ("legacy.pt", "legacy format"),
    ];
    for (file, says) in cases {
        let e = error(file).to_string();
        assert!(e.contains(says), "{file}: {e}");
        assert!(e.contains(file), "{file}: the error names the file: {e}");
    }
}

#[test]
fn a_truncated_or_foreign_file_is_not_read_as_a_checkpoint() {
    let dir = std::env::temp_dir().join(format!("kiln-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let whole = std::fs::read(fixture("tiny.ckpt")).unwrap();
    for (name, bytes) in [("half.ckpt", whole[..whole.len() / 2].to_vec()), ("no_end.ckpt", whole[..whole.len() - 10].to_vec()), ("text.ckpt", b"not a checkpoint".to_vec())] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = read_torch_checkpoint(&path).expect_err(name).to_string();
        assert!(e.contains("is not a PyTorch checkpoint kiln can read") && e.contains("zip"), "{name}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
