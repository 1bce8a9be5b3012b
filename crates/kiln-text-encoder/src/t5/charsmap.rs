//! SentencePiece's precompiled character map (the `Precompiled` normaliser of a T5
//! `tokenizer.json`: base64 of a little-endian `u32` trie size, the double-array trie, then the
//! replacement strings), checked before the `tokenizers` crate uses it. Its lookup
//! (`spm_precompiled::DoubleArray::common_prefix_search` and `Precompiled::transform`) indexes the
//! trie and the strings without bounds checks; kiln walks every node a lookup can reach once and
//! refuses a map where one would read out of bounds or slice a string off a character boundary
//! (found by kiln-fuzz: a corrupted map panicked inside the tokenizer).

/// Standard base64 (with `=` padding, as `tokenizer.json` writes the map).
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, quad) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

fn has_leaf(unit: usize) -> bool {
    (unit >> 8) & 1 == 1
}

fn value(unit: usize) -> usize {
    unit & ((1usize << 31) - 1)
}

fn label(unit: usize) -> usize {
    unit & ((1usize << 31) | 0xFF)
}

fn offset(unit: usize) -> usize {
    (unit >> 10) << ((unit & (1usize << 9)) >> 6)
}

/// Checks a decoded map: its layout, its strings UTF-8, and every trie node a lookup can reach
/// (from the root, each byte 1–255) in bounds, with every value a character boundary of the
/// strings. `Err` says what is wrong.
pub(crate) fn check(map: &[u8]) -> Result<(), String> {
    let size = map.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or("shorter than its 4-byte trie size")?;
    let units = size / 4;
    let trie_end = units.checked_mul(4).and_then(|n| n.checked_add(4)).filter(|&end| end <= map.len()).ok_or("its trie size passes its end")?;
    let array: Vec<usize> = map[4..trie_end].chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let normalized = std::str::from_utf8(&map[trie_end..]).map_err(|_| "its replacement strings are not UTF-8")?;
    let root = *array.first().ok_or("its trie is empty")?;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![offset(root)];
    while let Some(node) = stack.pop() {
        if !seen.insert(node) {
            continue;
        }
        for c in 1..=255usize {
            let pos = node ^ c;
            let unit = *array.get(pos).ok_or_else(|| format!("trie node {node} reaches past its {} units", array.len()))?;
            if label(unit) != c {
                continue;
            }
            let child = pos ^ offset(unit);
            if has_leaf(unit) {
                let leaf = *array.get(child).ok_or_else(|| format!("a leaf at {child} past the trie's {} units", array.len()))?;
                let index = value(leaf);
                if index > normalized.len() || !normalized.is_char_boundary(index) {
                    return Err(format!("a replacement at byte {index}, not a character of its {}-byte strings", normalized.len()));
                }
            }
            stack.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("").unwrap(), b"");
        for bad in ["aGVsbG8", "aGVs=G8=", "a===", "aG!s"] {
            assert!(decode_base64(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed_maps_are_refused() {
        assert!(check(&[]).is_err());
        // a trie of 2 units whose root points past them
        let mut map = 8u32.to_le_bytes().to_vec();
        map.extend(((1u32 << 10) * 7).to_le_bytes());
        map.extend(0u32.to_le_bytes());
        assert!(check(&map).unwrap_err().contains("reaches past"));
        // the size passes the end
        assert!(check(&400u32.to_le_bytes()).is_err());
    }
}
