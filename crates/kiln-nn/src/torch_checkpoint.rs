//! PyTorch checkpoints — `torch.save`'s zip format (`.ckpt`, `.pt`, `.pth`, `.bin`) — read
//! without running any of their code.
//!
//! A torch checkpoint is a zip archive: `ARCHIVE/data.pkl` (a pickle of the saved object, usually
//! a dict of tensors, or one under `"state_dict"`), `ARCHIVE/data/KEY` (one uncompressed entry per
//! storage), `ARCHIVE/byteorder`. Python's `pickle.load` runs whatever callables the pickle names,
//! which is how a malicious checkpoint runs code. This reader is an interpreter of the pickle
//! opcodes a state dict needs and builds only data: the only callables it accepts are the ones
//! `torch.load(weights_only=True)` and AUTOMATIC1111's `modules/safe.py` accept for tensors —
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`
//! and the typed storages (`torch.FloatStorage`, ...). Any other global is refused by name when
//! the reader meets it, before anything after it is read. Tensors are not read: each is a view
//! (storage, offset, shape, strides) checked against its storage, read on request
//! ([`TorchCheckpoint::tensor_bytes`]).
//!
//! Formats: the zip format of torch ≥ 1.6 (every `.ckpt` of the Stable Diffusion era); the legacy
//! format before it is refused with its name. Zip64 archives (over 4 GiB) are read; compressed
//! entries are refused (torch stores them uncompressed).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::LoadError;
use crate::safetensors::{dtype_size, header_bytes, open_regular_file};

/// One tensor of a checkpoint: a strided view of one storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    /// The keys from the pickled object to the tensor, joined with `.` (`state_dict.model.…`).
    pub name: String,
    /// safetensors' name of the dtype (`F32`, `F16`, `BF16`, `I64`, ...).
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    /// In elements, as torch gives them.
    pub strides: Vec<u64>,
    /// The storage's key (`ARCHIVE/data/KEY`).
    pub storage: String,
    /// Where the view starts in its storage, in elements.
    pub offset: u64,
    pub numel: u64,
    /// The elements its storage holds, as the pickle says.
    pub storage_numel: u64,
}

/// A torch checkpoint's tensors, checked against the file, and where their storages lie.
#[derive(Debug, Clone)]
pub struct TorchCheckpoint {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub tensors: Vec<TorchTensor>,
    /// Storage key → (byte offset of its data in the file, its length in bytes).
    storages: HashMap<String, (u64, u64)>,
}

/// Whether `path` starts like a zip archive (what `torch.save` writes).
pub fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path).and_then(|f| f.read_exact_at(&mut magic, 0)).is_ok() && magic == *b"PK\x03\x04"
}

/// The pickle inside a checkpoint may be this large (a state dict's pickle holds names and
/// shapes: SDXL's is a few MB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Values the pickle may create, and entries its stack and memo may hold (SDXL's state dict makes
/// about 30 thousand values; 2 million take about 120 MB).
const MAX_VALUES: usize = 1 << 21;
/// Nesting of the saved object kiln follows to find tensors.
const MAX_DEPTH: usize = 64;

/// Reads the checkpoint at `path`: its zip directory, then its pickle with the restricted
/// interpreter; every tensor checked to lie inside its storage, and every storage inside the file.
/// Reads no tensor data.
pub fn read_torch_checkpoint(path: &Path) -> Result<TorchCheckpoint, LoadError> {
    let bad = |message: String| LoadError::Checkpoint { path: path.into(), message };
    let (file, file_bytes) = open_regular_file(path)?;
    let mut magic = [0u8; 2];
    if file.read_exact_at(&mut magic, 0).is_ok() && magic == [0x80, 0x02] {
        return Err(bad("a PyTorch file in the legacy format (torch < 1.6), which kiln does not read; re-save it with a newer torch or convert it to safetensors".into()));
    }
    let entries = zip::entries(&file, file_bytes).map_err(|m| bad(format!("not a zip archive torch could have written: {m}")))?;
    let pickles: Vec<&String> = entries.keys().filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl").collect();
    let [pickle_name] = pickles.as_slice() else {
        return Err(bad(format!("a zip archive with {} data.pkl entries, where a torch checkpoint has one", pickles.len())));
    };
    let prefix = pickle_name.strip_suffix("data.pkl").unwrap_or_default().to_string();
    if let Some(order) = entries.get(&format!("{prefix}byteorder")) {
        let bytes = read_entry(&file, order, 16).map_err(|m| bad(format!("byteorder: {m}")))?;
        if bytes != b"little" {
            return Err(bad(format!("byteorder {:?}: kiln reads little-endian checkpoints", String::from_utf8_lossy(&bytes))));
        }
    }
    let pickle = read_entry(&file, &entries[*pickle_name], MAX_PICKLE_BYTES).map_err(|m| bad(format!("{pickle_name}: {m}")))?;
    let unpickled = unpickle::run(&pickle).map_err(|e| match e {
        unpickle::Error::Global(global) => LoadError::UnsafePickle { path: path.into(), global },
        unpickle::Error::Format(m) => bad(format!("{pickle_name}: {m}")),
    })?;
    let mut tensors = Vec::new();
    // shared references are followed each time they are met: bound the walk by what the pickle
    // holds (tied weights share a little; 40 dicts each holding the next twice share 2^40 times)
    let mut visits = unpickled.value_count().saturating_mul(4).saturating_add(1024);
    unpickled.tensors(unpickled.root, String::new(), 0, &mut visits, &mut tensors).map_err(bad)?;
    let mut storages = HashMap::new();
    for t in &tensors {
        let entry = entries.get(&format!("{prefix}data/{}", t.storage)).ok_or_else(|| bad(format!("tensor `{}`: its storage `data/{}` is not in the archive", t.name, t.storage)))?;
        if entry.compressed {
            return Err(bad(format!("storage `data/{}` is compressed; torch stores storages uncompressed", t.storage)));
        }
        check_view(t, entry.size).map_err(bad)?;
        storages.insert(t.storage.clone(), (entry.data_offset, entry.size));
    }
    Ok(TorchCheckpoint { path: path.into(), file_bytes, tensors, storages })
}

/// Checks that `t`'s storage has the bytes the pickle says (`storage_bytes` in the archive), and
/// that `t`'s view lies inside it.
fn check_view(t: &TorchTensor, storage_bytes: u64) -> Result<(), String> {
    let size = dtype_size(t.dtype).expect("torch dtypes are safetensors dtypes");
    if t.storage_numel.checked_mul(size).is_none_or(|b| b > storage_bytes) {
        return Err(format!("storage `data/{}` holds {storage_bytes} bytes, less than the {} {} elements the pickle says (truncated?)", t.storage, t.storage_numel, t.dtype));
    }
    let storage_bytes = t.storage_numel * size;
    if t.numel == 0 {
        return Ok(());
    }
    let mut last = t.offset;
    for (&n, &s) in t.shape.iter().zip(&t.strides) {
        last = (n - 1).checked_mul(s).and_then(|d| last.checked_add(d)).ok_or_else(|| format!("tensor `{}`: its view's extent passes 2^64", t.name))?;
    }
    let end = last.checked_add(1).and_then(|e| e.checked_mul(size));
    match end {
        Some(end) if end <= storage_bytes => Ok(()),
        _ => Err(format!(
            "tensor `{}` (shape {:?}, strides {:?}, offset {}) reaches past the end of its storage `data/{}` ({storage_bytes} bytes)",
            t.name, t.shape, t.strides, t.offset, t.storage
        )),
    }
}

impl TorchCheckpoint {
    /// The checkpoint as a safetensors file's bytes (header, then every tensor contiguous), for
    /// loaders that read safetensors. Tensors keep their names ([`TorchTensor::name`]).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, LoadError> {
        let file = File::open(&self.path).map_err(|source| LoadError::Io { path: self.path.clone(), source })?;
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for t in &self.tensors {
            let start = data.len();
            self.read_tensor(&file, t, &mut data)?;
            header.insert(t.name.clone(), serde_json::json!({ "dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()] }));
        }
        let mut out = header_bytes(&header);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// `t`'s elements in row-major order, little-endian, as safetensors stores them (a strided
    /// view is gathered).
    pub fn tensor_bytes(&self, t: &TorchTensor) -> Result<Vec<u8>, LoadError> {
        let file = File::open(&self.path).map_err(|source| LoadError::Io { path: self.path.clone(), source })?;
        let mut out = Vec::new();
        self.read_tensor(&file, t, &mut out)?;
        Ok(out)
    }

    /// Appends [`Self::tensor_bytes`] of `t`, read from `file` (this checkpoint, opened), to `out`.
    fn read_tensor(&self, file: &File, t: &TorchTensor, out: &mut Vec<u8>) -> Result<(), LoadError> {
        let io = |source| LoadError::Io { path: self.path.clone(), source };
        let bad = |message: String| LoadError::Checkpoint { path: self.path.clone(), message };
        let &(start, storage_bytes) = self.storages.get(&t.storage).ok_or_else(|| bad(format!("tensor `{}` is not from this checkpoint", t.name)))?;
        check_view(t, storage_bytes).map_err(bad)?;
        let size = dtype_size(t.dtype).expect("torch dtypes are safetensors dtypes") as usize;
        let contiguous = t.shape.iter().zip(&t.strides).rev().try_fold(1u64, |want, (&n, &s)| (n == 1 || s == want).then(|| want * n)).is_some();
        // a view may repeat elements (stride 0): the output can be larger than the file
        let bytes = t.numel.checked_mul(size as u64).and_then(|n| usize::try_from(n).ok());
        let Some(bytes) = bytes.filter(|&n| out.try_reserve_exact(n).is_ok()) else {
            return Err(bad(format!("tensor `{}` of shape {:?} does not fit in memory", t.name, t.shape)));
        };
        let from = out.len();
        out.resize(from + bytes, 0);
        let out = &mut out[from..];
        if contiguous || t.numel == 0 {
            return file.read_exact_at(out, start + t.offset * size as u64).map_err(io);
        }
        let span = t.shape.iter().zip(&t.strides).map(|(&n, &s)| (n - 1) * s).sum::<u64>() + 1;
        let mut storage = vec![0u8; span as usize * size];
        file.read_exact_at(&mut storage, start + t.offset * size as u64).map_err(io)?;
        let mut index = vec![0u64; t.shape.len()];
        for chunk in out.chunks_exact_mut(size) {
            let at = index.iter().zip(&t.strides).map(|(i, s)| i * s).sum::<u64>() as usize * size;
            chunk.copy_from_slice(&storage[at..at + size]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(())
    }
}

/// An entry's bytes, at most `limit` of them.
fn read_entry(file: &File, entry: &zip::Entry, limit: u64) -> Result<Vec<u8>, String> {
    if entry.compressed {
        return Err("compressed; torch stores its entries uncompressed".into());
    }
    if entry.size > limit {
        return Err(format!("{} bytes, more than the {limit} kiln reads", entry.size));
    }
    let mut bytes = vec![0u8; entry.size as usize];
    file.read_exact_at(&mut bytes, entry.data_offset).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The zip archive's central directory: what each entry is and where its data starts.
mod zip {
    use std::collections::HashMap;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    pub struct Entry {
        pub data_offset: u64,
        pub size: u64,
        pub compressed: bool,
    }

    fn u16_at(b: &[u8], i: usize) -> Result<u64, String> {
        b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as u64).ok_or_else(|| "truncated record".to_string())
    }
    fn u32_at(b: &[u8], i: usize) -> Result<u64, String> {
        b.get(i..i + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap()) as u64).ok_or_else(|| "truncated record".to_string())
    }
    fn u64_at(b: &[u8], i: usize) -> Result<u64, String> {
        b.get(i..i + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap())).ok_or_else(|| "truncated record".to_string())
    }
    fn read(file: &File, offset: u64, len: u64, file_bytes: u64) -> Result<Vec<u8>, String> {
        if offset.checked_add(len).is_none_or(|end| end > file_bytes) {
            return Err(format!("a record at byte {offset} runs past the end of the file ({file_bytes} bytes): truncated?"));
        }
        let mut b = vec![0u8; len as usize];
        file.read_exact_at(&mut b, offset).map_err(|e| e.to_string())?;
        Ok(b)
    }

    /// The archive's entries by name (the end-of-central-directory record, zip64's where the
    /// counts overflow 32 bits, then the central directory and each local header).
    pub fn entries(file: &File, file_bytes: u64) -> Result<HashMap<String, Entry>, String> {
        let tail_len = file_bytes.min(22 + 65535);
        let tail = read(file, file_bytes - tail_len, tail_len, file_bytes)?;
        let eocd = (0..tail.len().saturating_sub(21)).rev().find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06]).ok_or("no end-of-central-directory record (truncated?)")?;
        let eocd_at = file_bytes - tail_len + eocd as u64;
        let (mut count, mut cd_size, mut cd_offset) = (u16_at(&tail, eocd + 10)?, u32_at(&tail, eocd + 12)?, u32_at(&tail, eocd + 16)?);
        if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
            let locator = read(file, eocd_at.checked_sub(20).ok_or("no zip64 locator")?, 20, file_bytes)?;
            if locator[..4] != [0x50, 0x4b, 0x06, 0x07] {
                return Err("no zip64 locator before the end record".into());
            }
            let record = read(file, u64_at(&locator, 8)?, 56, file_bytes)?;
            if record[..4] != [0x50, 0x4b, 0x06, 0x06] {
                return Err("no zip64 end-of-central-directory record".into());
            }
            (count, cd_size, cd_offset) = (u64_at(&record, 32)?, u64_at(&record, 40)?, u64_at(&record, 48)?);
        }
        if cd_size > 64 << 20 {
            return Err(format!("a central directory of {cd_size} bytes"));
        }
        let cd = read(file, cd_offset, cd_size, file_bytes)?;
        let mut entries = HashMap::new();
        let mut at = 0usize;
        for _ in 0..count {
            if cd.get(at..at + 4) != Some(&[0x50, 0x4b, 0x01, 0x02]) {
                return Err(format!("central directory entry {} is corrupt", entries.len()));
            }
            let method = u16_at(&cd, at + 10)?;
            let (mut size, name_len, extra_len, comment_len) = (u32_at(&cd, at + 24)?, u16_at(&cd, at + 28)? as usize, u16_at(&cd, at + 30)? as usize, u16_at(&cd, at + 32)? as usize);
            let compressed_size = u32_at(&cd, at + 20)?;
            let mut local = u32_at(&cd, at + 42)?;
            let name = cd.get(at + 46..at + 46 + name_len).ok_or("truncated entry name")?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| "an entry name that is not UTF-8")?;
            let extra = cd.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or("truncated extra field")?;
            // zip64: the 32-bit fields that overflowed, in this order
            let mut e = 0;
            while e + 4 <= extra.len() {
                let (id, len) = (u16_at(extra, e)?, u16_at(extra, e + 2)? as usize);
                if id == 1 {
                    let mut f = e + 4;
                    if size == 0xffff_ffff {
                        size = u64_at(extra, f)?;
                        f += 8;
                    }
                    if compressed_size == 0xffff_ffff {
                        f += 8;
                    }
                    if local == 0xffff_ffff {
                        local = u64_at(extra, f)?;
                    }
                }
                e += 4 + len;
            }
            let header = read(file, local, 30, file_bytes)?;
            if header[..4] != [0x50, 0x4b, 0x03, 0x04] {
                return Err(format!("entry {name}: no local header at byte {local}"));
            }
            let data_offset = local + 30 + u16_at(&header, 26)? + u16_at(&header, 28)?;
            if data_offset.checked_add(size).is_none_or(|end| end > file_bytes) {
                return Err(format!("entry {name} ({size} bytes at byte {data_offset}) runs past the end of the file ({file_bytes} bytes): truncated?"));
            }
            entries.insert(name, Entry { data_offset, size, compressed: method != 0 });
            at += 46 + name_len + extra_len + comment_len;
        }
        Ok(entries)
    }
}

/// The restricted pickle interpreter.
mod unpickle {
    use std::collections::HashMap;

    use super::{TorchTensor, MAX_DEPTH, MAX_VALUES};

    pub enum Error {
        /// A global kiln does not allow: `module.name`.
        Global(String),
        Format(String),
    }

    /// A callable the pickle may name.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Global {
        OrderedDict,
        RebuildTensorV2,
        RebuildParameter,
        /// A typed storage, with safetensors' name of its dtype.
        Storage(&'static str),
    }

    fn global(module: &str, name: &str) -> Result<Global, Error> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", storage) => Global::Storage(match storage {
                "FloatStorage" => "F32",
                "HalfStorage" => "F16",
                "BFloat16Storage" => "BF16",
                "DoubleStorage" => "F64",
                "LongStorage" => "I64",
                "IntStorage" => "I32",
                "ShortStorage" => "I16",
                "CharStorage" => "I8",
                "ByteStorage" => "U8",
                "BoolStorage" => "BOOL",
                _ => return Err(Error::Global(format!("{module}.{name}"))),
            }),
            _ => return Err(Error::Global(format!("{module}.{name}"))),
        })
    }

    #[derive(Clone, Debug)]
    enum Value {
        None,
        Bool,
        Int(i64),
        Float,
        Str(String),
        Bytes,
        Tuple(Vec<usize>),
        List(Vec<usize>),
        Dict(Vec<(usize, usize)>),
        Global(Global),
        Storage { dtype: &'static str, key: String, numel: u64 },
        Tensor { storage: usize, offset: u64, shape: Vec<u64>, strides: Vec<u64> },
    }

    pub struct Unpickled {
        values: Vec<Value>,
        pub root: usize,
    }

    enum Item {
        Mark,
        Value(usize),
    }

    fn format<T>(m: impl Into<String>) -> Result<T, Error> {
        Err(Error::Format(m.into()))
    }

    struct Machine<'a> {
        bytes: &'a [u8],
        at: usize,
        values: Vec<Value>,
        stack: Vec<Item>,
        memo: HashMap<u64, usize>,
    }

    impl<'a> Machine<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
            let bytes = self.bytes;
            let s = self.at.checked_add(n).and_then(|end| bytes.get(self.at..end));
            match s {
                Some(s) => {
                    self.at += n;
                    Ok(s)
                }
                None => format(format!("the pickle ends inside an opcode at byte {}", self.at)),
            }
        }
        fn uint(&mut self, n: usize) -> Result<u64, Error> {
            Ok(self.take(n)?.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64))
        }
        fn line(&mut self) -> Result<String, Error> {
            let rest = &self.bytes[self.at..];
            let end = rest.iter().position(|&b| b == b'\n').ok_or(Error::Format("a GLOBAL without its newline".into()))?;
            self.at += end + 1;
            String::from_utf8(rest[..end].to_vec()).or_else(|_| format("a GLOBAL name that is not UTF-8"))
        }
        fn push(&mut self, v: Value) -> Result<(), Error> {
            if self.values.len() >= MAX_VALUES {
                return format(format!("more than {MAX_VALUES} values"));
            }
            self.values.push(v);
            self.push_item(Item::Value(self.values.len() - 1))
        }
        fn push_item(&mut self, item: Item) -> Result<(), Error> {
            if self.stack.len() >= MAX_VALUES {
                return format(format!("a stack deeper than {MAX_VALUES}"));
            }
            self.stack.push(item);
            Ok(())
        }
        fn pop(&mut self) -> Result<usize, Error> {
            match self.stack.pop() {
                Some(Item::Value(v)) => Ok(v),
                Some(Item::Mark) => format("a MARK where a value was expected"),
                None => format("an opcode popped an empty stack"),
            }
        }
        fn top(&self) -> Result<usize, Error> {
            match self.stack.last() {
                Some(Item::Value(v)) => Ok(*v),
                _ => format("an opcode needs a value on the stack"),
            }
        }
        fn pop_mark(&mut self) -> Result<Vec<usize>, Error> {
            let mut items = Vec::new();
            loop {
                match self.stack.pop() {
                    Some(Item::Value(v)) => items.push(v),
                    Some(Item::Mark) => break,
                    None => return format("no MARK to pop to"),
                }
            }
            items.reverse();
            Ok(items)
        }
        fn string(&mut self, len: u64) -> Result<(), Error> {
            let len = usize::try_from(len).or_else(|_| format("a string past the address space"))?;
            let s = String::from_utf8(self.take(len)?.to_vec()).or_else(|_| format("a string that is not UTF-8"))?;
            self.push(Value::Str(s))
        }
        fn ints(&self, id: usize, what: &str) -> Result<Vec<u64>, Error> {
            match &self.values[id] {
                Value::Tuple(items) => items
                    .iter()
                    .map(|&i| match self.values[i] {
                        Value::Int(n) if n >= 0 => Ok(n as u64),
                        _ => format(format!("a tensor's {what} holds a value that is not a size")),
                    })
                    .collect(),
                _ => format(format!("a tensor's {what} is not a tuple")),
            }
        }

        /// Applies `callable` to the tuple `args` (REDUCE).
        fn reduce(&mut self, callable: usize, args: usize) -> Result<(), Error> {
            let Value::Global(g) = self.values[callable] else { return format("REDUCE of something that is not an allowed callable") };
            let Value::Tuple(args) = self.values[args].clone() else { return format("REDUCE with arguments that are not a tuple") };
            match g {
                Global::OrderedDict if args.is_empty() => self.push(Value::Dict(Vec::new())),
                Global::RebuildTensorV2 if (6..=7).contains(&args.len()) => {
                    let Value::Storage { .. } = self.values[args[0]] else { return format("_rebuild_tensor_v2 without a storage") };
                    let Value::Int(offset) = self.values[args[1]] else { return format("_rebuild_tensor_v2 with an offset that is not an int") };
                    let offset = u64::try_from(offset).or_else(|_| format("a negative storage offset"))?;
                    let (shape, strides) = (self.ints(args[2], "shape")?, self.ints(args[3], "strides")?);
                    if shape.len() != strides.len() {
                        return format(format!("a tensor of shape {shape:?} with strides {strides:?}"));
                    }
                    self.push(Value::Tensor { storage: args[0], offset, shape, strides })
                }
                Global::RebuildParameter if args.len() == 3 => match self.values[args[0]] {
                    Value::Tensor { .. } => self.push_item(Item::Value(args[0])),
                    _ => format("_rebuild_parameter of something that is not a tensor"),
                },
                g => format(format!("{g:?} called with {} argument(s)", args.len())),
            }
        }

        fn run(&mut self) -> Result<usize, Error> {
            loop {
                let at = self.at;
                let op = self.take(1)?[0];
                match op {
                    0x80 => {
                        self.take(1)?;
                    }
                    0x95 => {
                        self.take(8)?;
                    }
                    b'.' => return self.pop(),
                    b'(' => self.push_item(Item::Mark)?,
                    b'}' => self.push(Value::Dict(Vec::new()))?,
                    b']' => self.push(Value::List(Vec::new()))?,
                    b')' => self.push(Value::Tuple(Vec::new()))?,
                    b'N' => self.push(Value::None)?,
                    0x88 => self.push(Value::Bool)?,
                    0x89 => self.push(Value::Bool)?,
                    b'K' => {
                        let n = self.uint(1)?;
                        self.push(Value::Int(n as i64))?
                    }
                    b'M' => {
                        let n = self.uint(2)?;
                        self.push(Value::Int(n as i64))?
                    }
                    b'J' => {
                        let n = self.uint(4)? as u32 as i32;
                        self.push(Value::Int(n as i64))?
                    }
                    0x8a => {
                        let n = self.uint(1)? as usize;
                        if n > 8 {
                            return format(format!("an integer of {n} bytes"));
                        }
                        let raw = self.uint(n)?;
                        let shift = 64 - 8 * n as u32;
                        let v = if n == 0 { 0 } else { ((raw << shift) as i64) >> shift };
                        self.push(Value::Int(v))?
                    }
                    b'G' => {
                        self.take(8)?;
                        self.push(Value::Float)?
                    }
                    b'X' => {
                        let n = self.uint(4)?;
                        self.string(n)?
                    }
                    0x8c => {
                        let n = self.uint(1)?;
                        self.string(n)?
                    }
                    0x8d => {
                        let n = self.uint(8)?;
                        self.string(n)?
                    }
                    b'C' | b'B' | 0x8e => {
                        let n = match op {
                            b'C' => self.uint(1)?,
                            b'B' => self.uint(4)?,
                            _ => self.uint(8)?,
                        };
                        self.take(usize::try_from(n).or_else(|_| format("bytes past the address space"))?)?;
                        self.push(Value::Bytes)?
                    }
                    b'q' | b'r' | 0x94 => {
                        let key = match op {
                            b'q' => self.uint(1)?,
                            b'r' => self.uint(4)?,
                            _ => self.memo.len() as u64,
                        };
                        let top = self.top()?;
                        if self.memo.len() >= MAX_VALUES && !self.memo.contains_key(&key) {
                            return format(format!("more than {MAX_VALUES} memo entries"));
                        }
                        self.memo.insert(key, top);
                    }
                    b'h' | b'j' => {
                        let key = if op == b'h' { self.uint(1)? } else { self.uint(4)? };
                        let v = *self.memo.get(&key).ok_or(Error::Format(format!("memo entry {key} read before it was written")))?;
                        self.push_item(Item::Value(v))?;
                    }
                    b't' => {
                        let items = self.pop_mark()?;
                        self.push(Value::Tuple(items))?
                    }
                    0x85..=0x87 => {
                        let n = (op - 0x84) as usize;
                        let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                        items.reverse();
                        self.push(Value::Tuple(items))?
                    }
                    b'a' | b'e' => {
                        let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                        let list = self.top()?;
                        match &mut self.values[list] {
                            Value::List(l) => l.extend(items),
                            _ => return format("APPEND to something that is not a list"),
                        }
                    }
                    b's' | b'u' => {
                        let items = if op == b's' {
                            let v = self.pop()?;
                            vec![self.pop()?, v]
                        } else {
                            self.pop_mark()?
                        };
                        if items.len() % 2 != 0 {
                            return format("SETITEMS with a key and no value");
                        }
                        let dict = self.top()?;
                        match &mut self.values[dict] {
                            Value::Dict(d) => d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1]))),
                            _ => return format("SETITEM on something that is not a dict"),
                        }
                    }
                    b'c' => {
                        let (module, name) = (self.line()?, self.line()?);
                        let g = global(&module, &name)?;
                        self.push(Value::Global(g))?
                    }
                    0x93 => {
                        let (name, module) = (self.pop()?, self.pop()?);
                        let (Value::Str(module), Value::Str(name)) = (self.values[module].clone(), self.values[name].clone()) else {
                            return format("STACK_GLOBAL of names that are not strings");
                        };
                        let g = global(&module, &name)?;
                        self.push(Value::Global(g))?
                    }
                    b'R' => {
                        let args = self.pop()?;
                        let callable = self.pop()?;
                        self.reduce(callable, args)?
                    }
                    b'Q' => {
                        let pid = self.pop()?;
                        let Value::Tuple(pid) = self.values[pid].clone() else { return format("a persistent id that is not a tuple") };
                        let [kind, class, key, _location, numel] = pid.as_slice() else { return format("a persistent id that is not a storage's") };
                        let (Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Int(numel)) =
                            (&self.values[*kind], &self.values[*class], &self.values[*key], &self.values[*numel])
                        else {
                            return format("a persistent id that is not a storage's");
                        };
                        if kind != "storage" || *numel < 0 || key.contains(['/', '\\']) || key.starts_with('.') {
                            return format(format!("a storage ({kind:?}, {key:?}, {numel}) kiln does not read"));
                        }
                        let storage = Value::Storage { dtype, key: key.clone(), numel: *numel as u64 };
                        self.push(storage)?
                    }
                    b'b' => {
                        // BUILD sets an object's state; a tensor's (backward hooks, metadata) is not data
                        self.pop()?;
                        match self.values[self.top()?] {
                            Value::Tensor { .. } => {}
                            _ => return format("BUILD on something that is not a tensor"),
                        }
                    }
                    _ => return format(format!("pickle opcode 0x{op:02x} at byte {at}, which a state dict does not use")),
                }
            }
        }
    }

    /// Runs the pickle `bytes`; the object it builds is `root` of the result.
    pub fn run(bytes: &[u8]) -> Result<Unpickled, Error> {
        let mut m = Machine { bytes, at: 0, values: Vec::new(), stack: Vec::new(), memo: HashMap::new() };
        let root = m.run()?;
        Ok(Unpickled { values: m.values, root })
    }

    impl Unpickled {
        /// The values the pickle made.
        pub fn value_count(&self) -> usize {
            self.values.len()
        }

        /// Every tensor under `id`, named by the keys that lead to it from the root.
        pub fn tensors(&self, id: usize, name: String, depth: usize, visits: &mut usize, out: &mut Vec<TorchTensor>) -> Result<(), String> {
            if depth > MAX_DEPTH {
                return Err(format!("`{name}`: nested more than {MAX_DEPTH} deep (a recursive structure?)"));
            }
            *visits = visits.checked_sub(1).ok_or_else(|| format!("`{name}`: more paths to follow than 4 per value the pickle holds (shared references multiplying?)"))?;
            let child = |key: &str| if name.is_empty() { key.to_string() } else { format!("{name}.{key}") };
            match &self.values[id] {
                Value::Dict(items) => {
                    for &(k, v) in items {
                        let key = match &self.values[k] {
                            Value::Str(s) => s.clone(),
                            Value::Int(i) => i.to_string(),
                            _ => continue,
                        };
                        self.tensors(v, child(&key), depth + 1, visits, out)?;
                    }
                }
                Value::List(items) | Value::Tuple(items) => {
                    for (i, &v) in items.iter().enumerate() {
                        self.tensors(v, child(&i.to_string()), depth + 1, visits, out)?;
                    }
                }
                Value::Tensor { storage, offset, shape, strides } => {
                    let Value::Storage { dtype, key, numel: storage_numel } = &self.values[*storage] else { unreachable!("checked in REDUCE") };
                    let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or_else(|| format!("tensor `{name}`: shape {shape:?} has more than 2^64 elements"))?;
                    out.push(TorchTensor { name, dtype, shape: shape.clone(), strides: strides.clone(), storage: key.clone(), offset: *offset, numel, storage_numel: *storage_numel });
                }
                Value::None | Value::Bool | Value::Int(_) | Value::Float | Value::Str(_) | Value::Bytes | Value::Global(_) | Value::Storage { .. } => {}
            }
            Ok(())
        }
    }
}
