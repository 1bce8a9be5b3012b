//! safetensors files' headers, checked against the file (kiln's one reader of the format's header:
//! the loader checks files with it before burn-store maps them; `kiln info` lists them), and the
//! file and dtype facts weight readers share.

use std::path::Path;

use crate::error::LoadError;

/// One tensor of a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// The element count (the shape's product, which [`read_safetensors_header`] checks fits).
    pub numel: u64,
    /// `data_offsets`: where the tensor's bytes start and end in the data section.
    pub offsets: (u64, u64),
}

/// A safetensors file's header, checked against the file: kiln's one reader of the format's
/// header (the loader checks files with it before burn-store maps them; `kiln info` lists them).
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    pub file_bytes: u64,
    /// Where the data section starts in the file (8 + the header's length): a tensor's bytes are
    /// `data_start + offsets.0 .. data_start + offsets.1`.
    pub data_start: u64,
    pub tensors: Vec<TensorEntry>,
    /// `__metadata__` (e.g. `{"format": "pt"}`).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The file at `path`, opened, and its length; a FIFO, device or folder is refused (reading one
/// could block or never end).
pub(crate) fn open_regular_file(path: &Path) -> Result<(std::fs::File, u64), LoadError> {
    let io = |source| LoadError::Io { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    Ok((std::fs::File::open(path).map_err(io)?, meta.len()))
}

/// A safetensors file's first bytes for `header` (tensor name → `{dtype, shape, data_offsets}`,
/// and `__metadata__`): the 8-byte little-endian length, then the JSON, padded with spaces so the
/// data section starts 8-byte aligned (as the safetensors library writes it).
pub fn header_bytes(header: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).expect("a JSON object serializes");
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Bytes per element of the safetensors dtypes kiln knows.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Reads the header of the safetensors file at `path` (8-byte little-endian length, then JSON)
/// and checks every tensor against the file without reading the data: a header that fits the
/// file, a JSON object, each tensor with a dtype, a shape whose element count fits in 64 bits,
/// `data_offsets` inside the data section, and as many bytes as its dtype and shape need (a
/// dtype kiln does not know: at most 8 elements a byte). Errors name the file and the tensor;
/// truncated downloads are reported as such.
pub fn read_safetensors_header(path: &Path) -> Result<SafetensorsHeader, LoadError> {
    use std::io::Read;
    let format = |message: String| LoadError::Format { path: path.into(), message };
    let io = |source| LoadError::Io { path: path.into(), source };
    let (mut file, file_bytes) = open_regular_file(path)?;
    let mut n = [0u8; 8];
    if file_bytes < 8 {
        return Err(format(format!("{file_bytes} bytes, shorter than the 8-byte header length")));
    }
    file.read_exact(&mut n).map_err(io)?;
    let header_len = u64::from_le_bytes(n);
    // safetensors caps headers at 100 MB
    if header_len > file_bytes - 8 || header_len > 100_000_000 {
        return Err(format(format!("header length {header_len} does not fit the file ({file_bytes} bytes)")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| format(e.to_string()))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| format(format!("header is not valid JSON: {e}")))?;
    let obj = header.as_object().ok_or_else(|| format("header is not a JSON object".into()))?;
    let data_bytes = file_bytes - 8 - header_len;
    let mut out = SafetensorsHeader { file_bytes, data_start: 8 + header_len, tensors: Vec::new(), metadata: Default::default() };
    for (name, entry) in obj {
        if name == "__metadata__" {
            if let Some(m) = entry.as_object() {
                for (k, v) in m {
                    out.metadata.insert(k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                }
            }
            continue;
        }
        let bad = |what: String| format(format!("tensor `{name}`: {what}"));
        let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype".into()))?;
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad("no valid shape".into()))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("no valid data_offsets".into()))?;
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(format!("shape {shape:?} has more than 2^64 elements")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end || end > data_bytes {
            return Err(bad(format!("data_offsets [{begin}, {end}] lie outside the {data_bytes} data bytes (truncated file?)")));
        }
        let bytes = (end - begin) as u128;
        match dtype_size(dtype) {
            Some(size) if numel as u128 * size as u128 != bytes => {
                return Err(bad(format!("{dtype} {shape:?} needs {} bytes, data_offsets give {bytes}", numel as u128 * size as u128)));
            }
            None if numel as u128 > bytes * 8 => {
                return Err(bad(format!("{dtype} {shape:?} has {numel} elements in {bytes} bytes")));
            }
            _ => {}
        }
        out.tensors.push(TensorEntry { name: name.clone(), dtype: dtype.to_string(), shape, numel, offsets: (begin, end) });
    }
    Ok(out)
}
