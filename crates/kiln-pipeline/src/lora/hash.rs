//! A LoRA's short hash as A1111 writes it in `Lora hashes` (`extensions-builtin/Lora/network.py`:
//! `hashes.sha256(filename, …, use_addnet_hash=is_safetensors)[0:12]`): the SHA-256 of a
//! safetensors file's data section (the bytes after its header: sd-scripts'
//! `addnet_hash_safetensors`), of any other file's bytes; the first 12 hex digits.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// SHA-256 (FIPS 180-4), streamed.
pub struct Sha256 {
    state: [u32; 8],
    buffer: Vec<u8>,
    length: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self { state: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19], buffer: Vec::with_capacity(64), length: 0 }
    }
}

impl Sha256 {
    fn block(&mut self, block: &[u8]) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (h, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        if !self.buffer.is_empty() {
            let take = (64 - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == 64 {
                let block = std::mem::take(&mut self.buffer);
                self.block(&block);
            }
        }
        let mut chunks = data.chunks_exact(64);
        for block in &mut chunks {
            self.block(block);
        }
        self.buffer.extend_from_slice(chunks.remainder());
    }

    /// The digest as lowercase hex.
    pub fn hex(mut self) -> String {
        let bits = self.length.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        pad.resize((119 - (self.length % 64) as usize) % 64 + 1, 0);
        pad.extend_from_slice(&bits.to_be_bytes());
        let length = self.length;
        self.update(&pad);
        self.length = length;
        self.state.iter().map(|v| format!("{v:08x}")).collect()
    }
}

/// A1111's short hash of the LoRA file at `path` (12 hex digits).
pub fn lora_short_hash(path: &Path) -> std::io::Result<String> {
    short_hash(path, true)
}

/// A1111's short hash of the file at `path`: the SHA-256 of its bytes (`addnet`: a safetensors
/// file's data section only), 12 hex digits. Embeddings (`TI hashes`) hash the whole file.
pub fn short_hash(path: &Path, addnet: bool) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut start = 0u64;
    if addnet && path.extension().is_some_and(|e| e == "safetensors") {
        let mut n = [0u8; 8];
        file.read_exact(&mut n)?;
        start = u64::from_le_bytes(n).saturating_add(8);
    }
    file.seek(SeekFrom::Start(start))?;
    let mut sha = Sha256::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.hex()[..12].to_string())
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    /// FIPS 180-4's examples, and a message across several blocks and updates.
    #[test]
    fn sha256_gives_the_standard_digests() {
        let hex = |parts: &[&[u8]]| {
            let mut s = Sha256::default();
            parts.iter().for_each(|p| s.update(p));
            s.hex()
        };
        assert_eq!(hex(&[b"abc"]), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hex(&[b""]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(&[b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"]), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
        let a = vec![b'a'; 1_000_000];
        assert_eq!(hex(&[&a[..3], &a[3..70_001], &a[70_001..]]), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }
}
