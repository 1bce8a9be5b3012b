//! AUTOMATIC1111's prompt attention syntax: a port of `modules/prompt_parser.py`
//! (`re_attention`, `re_break`, `parse_prompt_attention`), with the weight pattern that allows
//! spaces around the number (`:\s*([+-]?[.\d]+)\s*\)`).
//!
//! `(text)` multiplies the weight by 1.1, `[text]` divides it by 1.1, `(text:w)` multiplies it by
//! w, nesting multiplies; `\(`, `\)`, `\[`, `\]`, `\\` are the literal characters; an unclosed
//! bracket applies to the end; `BREAK` (a whole word, in plain text) starts a new chunk.

/// The weight [`parse_prompt_attention`] gives a `BREAK` (A1111's marker).
pub const BREAK: f64 = -1.0;

/// One piece of `re_attention`'s alternation, in its order.
enum Piece<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\`, or a lone `\`: the text after the backslash.
    Escaped(&'a str),
    Open,
    OpenSquare,
    /// `:w)`: the whole match, and the number's text.
    Weight(&'a str, &'a str),
    Close,
    CloseSquare,
    /// A run of anything but `\()[]:`, or a lone `:`.
    Text(&'a str),
}

/// `re_attention.finditer(text)`.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().expect("i < len");
        let (piece, len) = match c {
            '\\' => match rest[1..].chars().next() {
                Some(n @ ('(' | ')' | '[' | ']' | '\\')) => (Piece::Escaped(&rest[1..1 + n.len_utf8()]), 1 + n.len_utf8()),
                _ => (Piece::Escaped(""), 1),
            },
            '(' => (Piece::Open, 1),
            '[' => (Piece::OpenSquare, 1),
            ':' => match weight(rest) {
                Some((w, len)) => (Piece::Weight(&rest[..len], w), len),
                None => (Piece::Text(":"), 1),
            },
            ')' => (Piece::Close, 1),
            ']' => (Piece::CloseSquare, 1),
            _ => {
                let len = rest.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(rest.len());
                (Piece::Text(&rest[..len]), len)
            }
        };
        out.push(piece);
        i += len;
    }
    out
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`: the number's text and the match's length.
fn weight(s: &str) -> Option<(&str, usize)> {
    let mut i = 1;
    let skip_space = |i: &mut usize| {
        while let Some(c) = s[*i..].chars().next().filter(|c| c.is_whitespace()) {
            *i += c.len_utf8();
        }
    };
    skip_space(&mut i);
    let start = i;
    if s[i..].starts_with(['+', '-']) {
        i += 1;
    }
    let digits = s[i..].find(|c: char| !(c == '.' || c.is_ascii_digit())).unwrap_or(s.len() - i);
    if digits == 0 {
        return None;
    }
    i += digits;
    let end = i;
    skip_space(&mut i);
    s[i..].starts_with(')').then_some((&s[start..end], i + 1))
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.split(re_break, text)`: the parts between `\s*\bBREAK\b\s*` matches.
fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut last = 0;
    let mut i = 0;
    while i < text.len() {
        // the leftmost match: whitespace from here, then BREAK as a whole word
        let ws = text[i..].find(|c: char| !c.is_whitespace()).map_or(text.len(), |n| i + n);
        let before = text[..ws].chars().next_back();
        let after = text[ws..].strip_prefix("BREAK").map(|r| r.chars().next());
        let matched = matches!(after, Some(a) if !a.is_some_and(is_word)) && !before.is_some_and(is_word);
        if matched {
            let end = ws + "BREAK".len();
            let end = text[end..].find(|c: char| !c.is_whitespace()).map_or(text.len(), |n| end + n);
            parts.push(&text[last..i]);
            last = end;
            i = end.max(i + 1);
            continue;
        }
        i += text[i..].chars().next().map_or(1, char::len_utf8);
    }
    parts.push(&text[last..]);
    parts
}

/// Weight multiplications a prompt may take: each bracket multiplies every piece after its start,
/// so a prompt of N unclosed brackets around N pieces takes N²/2 (A1111's parser hangs on
/// `(a(a(a…`; real prompts take a few thousand).
pub const MAX_MULTIPLICATIONS: usize = 1 << 24;

/// `parse_prompt_attention(text)`: the text's pieces with their weights (`BREAK` with
/// [`BREAK`]), runs of equal weight merged. A weight that is not a number (`(a:1.2.3)`) is an
/// error, as Python's `float()` raises; so is nesting that would take more than
/// [`MAX_MULTIPLICATIONS`].
pub fn parse_prompt_attention(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let mut work = 0usize;
    let mut multiply = |res: &mut Vec<(String, f64)>, start: usize, m: f64| -> Result<(), String> {
        work = work.saturating_add(res.len() - start);
        if work > MAX_MULTIPLICATIONS {
            return Err(format!("its brackets nest too deeply for its length ({} pieces); at most {MAX_MULTIPLICATIONS} weight multiplications", res.len()));
        }
        res[start..].iter_mut().for_each(|r| r.1 *= m);
        Ok(())
    };
    for piece in pieces(text) {
        match piece {
            Piece::Escaped(t) => res.push((t.to_string(), 1.0)),
            Piece::Open => round.push(res.len()),
            Piece::OpenSquare => square.push(res.len()),
            Piece::Weight(_, w) if !round.is_empty() => {
                let w: f64 = w.parse().map_err(|_| format!("({w}): the weight {w:?} is not a number"))?;
                let start = round.pop().expect("not empty");
                multiply(&mut res, start, w)?;
            }
            Piece::Close if !round.is_empty() => {
                let start = round.pop().expect("not empty");
                multiply(&mut res, start, 1.1)?;
            }
            Piece::CloseSquare if !square.is_empty() => {
                let start = square.pop().expect("not empty");
                multiply(&mut res, start, 1.0 / 1.1)?;
            }
            other => {
                // a `:w)`, `)` or `]` with nothing open is text: the regex's whole match
                let t = match other {
                    Piece::Weight(full, _) => full,
                    Piece::Close => ")",
                    Piece::CloseSquare => "]",
                    Piece::Text(t) => t,
                    Piece::Escaped(_) | Piece::Open | Piece::OpenSquare => unreachable!("handled above"),
                };
                for (i, part) in split_break(t).into_iter().enumerate() {
                    if i > 0 {
                        res.push(("BREAK".into(), BREAK));
                    }
                    res.push((part.to_string(), 1.0));
                }
            }
        }
    }
    for start in round {
        multiply(&mut res, start, 1.1)?;
    }
    for start in square {
        multiply(&mut res, start, 1.0 / 1.1)?;
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    // merge runs of identical weights (in one pass: A1111's `pop` loop is quadratic)
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<(String, f64)> {
        parse_prompt_attention(s).unwrap()
    }

    /// A1111's doctests (`prompt_parser.py`).
    #[test]
    fn a1111_doctests() {
        let p = |v: &[(&str, f64)]| v.iter().map(|(t, w)| (t.to_string(), *w)).collect::<Vec<_>>();
        assert_eq!(parse("normal text"), p(&[("normal text", 1.0)]));
        assert_eq!(parse("an (important) word"), p(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)]));
        assert_eq!(parse("(unbalanced"), p(&[("unbalanced", 1.1)]));
        assert_eq!(parse("\\(literal\\]"), p(&[("(literal]", 1.0)]));
        assert_eq!(parse("(unnecessary)(parens)"), p(&[("unnecessaryparens", 1.1)]));
        assert_eq!(
            parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            p(&[("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)])
        );
        assert_eq!(parse("a cat BREAK a dog"), p(&[("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]));
        assert_eq!(parse("aBREAKb"), p(&[("aBREAKb", 1.0)]));
        assert_eq!(parse(""), p(&[("", 1.0)]));
    }

    /// 500000 unmatched `)` are 500000 pieces of weight 1, merged in one pass.
    #[test]
    fn long_runs_merge_in_linear_time() {
        let text = "a)".repeat(500_000);
        assert_eq!(parse_prompt_attention(&text).unwrap(), vec![(text.clone(), 1.0)]);
    }

    /// `(a(a(a…` unclosed 300000 times would take 4.5·10^10 multiplications: refused at once.
    #[test]
    fn deep_unclosed_nesting_is_refused() {
        let evil = "(a".repeat(300_000);
        let err = parse_prompt_attention(&evil).unwrap_err();
        assert!(err.contains("nest too deeply"), "{err}");
        let closed = format!("{}{}", "(a".repeat(1000), ")".repeat(1000));
        assert!(parse_prompt_attention(&closed).is_ok());
    }
}
