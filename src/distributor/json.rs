//! A small JSON reader for lld's DTLTO job file: the whole grammar (RFC 8259),
//! values kept as a tree. The file is a few kilobytes per hundred jobs and is
//! read once per link, so simplicity beats speed; a crate (serde_json) would
//! add more build time than this file has lines.

use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    /// Members in file order (DTLTO files have no duplicate names).
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses a complete document (one value, optional surrounding whitespace).
pub fn parse(text: &str) -> Result<Value> {
    let mut p = Parser { s: text.as_bytes(), i: 0, depth: 0 };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        bail!("JSON: trailing data at byte {}", p.i);
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

/// Nesting limit: the job file nests four deep; a hostile file must not
/// overflow the stack.
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() != Some(c) {
            bail!("JSON: expected '{}' at byte {}", c as char, self.i);
        }
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value> {
        if !self.s[self.i..].starts_with(word.as_bytes()) {
            bail!("JSON: unexpected token at byte {}", self.i);
        }
        self.i += word.len();
        Ok(v)
    }

    fn value(&mut self) -> Result<Value> {
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(c) if c == b'-' || c.is_ascii_digit() => self.number(),
            Some(_) => bail!("JSON: unexpected character at byte {}", self.i),
            None => bail!("JSON: unexpected end"),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<Value>) -> Result<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            bail!("JSON: nested too deeply");
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn object(&mut self) -> Result<Value> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            members.push((k, self.value()?));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                _ => bail!("JSON: expected ',' or '}}' at byte {}", self.i),
            }
        }
    }

    fn array(&mut self) -> Result<Value> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                _ => bail!("JSON: expected ',' or ']' at byte {}", self.i),
            }
        }
    }

    fn number(&mut self) -> Result<Value> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let d = p.i;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.i += 1;
            }
            p.i > d
        };
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else if !digits(self) {
            bail!("JSON: bad number at byte {start}");
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                bail!("JSON: bad number at byte {start}");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                bail!("JSON: bad number at byte {start}");
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i])?;
        Ok(Value::Number(text.parse()?))
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self.s.get(self.i..self.i + 4).ok_or_else(|| anyhow::anyhow!("JSON: short \\u escape"))?;
        let v = u32::from_str_radix(std::str::from_utf8(h)?, 16)?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            // Plain bytes in one copy (a job file is ~3,000 path strings,
            // almost never escaped); the loop below sees only the rest.
            let run = self.s[self.i..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let end = run.map_or(self.s.len(), |n| self.i + n);
            out.extend_from_slice(&self.s[self.i..end]);
            self.i = end;
            let Some(c) = self.peek() else { bail!("JSON: unterminated string") };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else { bail!("JSON: unterminated string") };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                // A surrogate pair: the low half must follow.
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    bail!("JSON: lone surrogate at byte {}", self.i);
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    bail!("JSON: bad surrogate pair at byte {}", self.i);
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or_else(|| anyhow::anyhow!("JSON: bad \\u escape"))?
                        }
                        _ => bail!("JSON: bad escape at byte {}", self.i - 1),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => bail!("JSON: control character in string at byte {}", self.i - 1),
                c => out.push(c),
            }
        }
        // The input is a &str, and escapes add whole characters: valid UTF-8.
        Ok(String::from_utf8(out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dtlto_job_file() {
        let v = parse(
            r#"{"common":{"linker_output":"prog","args":["clang","-c"],"inputs":[]},
               "jobs":[{"args":["a.o","-o","a.1.7.native.o"],"inputs":["a.o"],"outputs":["a.1.7.native.o"]}]}"#,
        )
        .unwrap();
        let common = v.get("common").unwrap();
        assert_eq!(common.get("linker_output").unwrap().as_str(), Some("prog"));
        assert_eq!(common.get("args").unwrap().as_array().unwrap().len(), 2);
        let job = &v.get("jobs").unwrap().as_array().unwrap()[0];
        assert_eq!(job.get("outputs").unwrap().as_array().unwrap()[0].as_str(), Some("a.1.7.native.o"));
    }

    #[test]
    fn strings_numbers_and_literals() {
        assert_eq!(
            parse(r#""a\"b\\c\/\n\u00e9\ud83d\ude00""#).unwrap(),
            Value::String("a\"b\\c/\n\u{e9}\u{1F600}".into())
        );
        assert_eq!(parse(r#""libx.a(b.o at 88).2.6451.o""#).unwrap().as_str(), Some("libx.a(b.o at 88).2.6451.o"));
        assert_eq!(parse(" [1, -2.5e3, 0, true, false, null] ").unwrap().as_array().unwrap().len(), 6);
        assert_eq!(parse("-2.5e3").unwrap(), Value::Number(-2500.0));
        assert_eq!(parse("{}").unwrap(), Value::Object(vec![]));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "\"abc",
            "01",
            "1.",
            "-",
            "tru",
            "[1] 2",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"a\nb\"",
            "{\"a\":1,}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        assert!(parse(&deep).is_err(), "deep nesting must be refused, not overflow the stack");
    }
}
