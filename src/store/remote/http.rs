//! An HTTP/1.1 remote: `GET` and `PUT` of one value per key, as a WebDAV
//! server (nginx `dav_methods PUT`), a plain object store or bazel-remote
//! (`/ac/<64 hex>`) offers them. One request per connection
//! (`Connection: close`): a wrapped compile makes at most two requests, and
//! a connection kept for later would only be a stale one.

use super::conn::Conn;
use super::{Failure, Fetched, Timeouts};

/// Where a key's value lives under the URL's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `<prefix>/<first two hex digits>/<the other 62>`: no directory on the
    /// server holds more than 1/256 of the keys.
    Subdirs,
    /// `<prefix>/<64 hex>`.
    Flat,
    /// `<prefix>/ac/<64 hex>`: bazel-remote's action cache, which must then
    /// run with `--disable_http_ac_validation` (our values are not protobufs).
    Bazel,
}

#[derive(Clone, Debug)]
pub struct Http {
    pub host: String,
    pub port: u16,
    /// The URL's path without its trailing slash.
    pub prefix: String,
    pub layout: Layout,
    /// The value of an `Authorization` header (Basic from the URL's
    /// user:password, or Bearer from `bearer-token`).
    pub authorization: Option<String>,
}

/// A status line and headers longer than this are not an HTTP server's.
const MAX_HEADERS: usize = 100;

impl Http {
    fn path(&self, key_hex: &str) -> String {
        match self.layout {
            Layout::Subdirs => format!("{}/{}/{}", self.prefix, &key_hex[..2], &key_hex[2..]),
            Layout::Flat => format!("{}/{key_hex}", self.prefix),
            Layout::Bazel => format!("{}/ac/{key_hex}", self.prefix),
        }
    }

    fn request(&self, method: &str, key_hex: &str, body: &[u8], t: &Timeouts) -> Result<(Conn, Response), Failure> {
        let mut conn = Conn::tcp(&self.host, self.port, t.connect, t.operation)?;
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: ltocache/{}\r\nConnection: close\r\n",
            self.path(key_hex),
            self.port,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(a) = &self.authorization {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        if method == "PUT" {
            head.push_str(&format!("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        if body.len() < 64 << 10 {
            // One segment for a small value: head and body in one write.
            let mut all = head.into_bytes();
            all.extend_from_slice(body);
            conn.write_all(&all)?;
        } else {
            conn.write_all(head.as_bytes())?;
            conn.write_all(body)?;
        }
        let response = read_head(&mut conn)?;
        Ok((conn, response))
    }

    pub fn get(&self, key_hex: &str, t: &Timeouts, max: u64) -> Result<Fetched, Failure> {
        let (mut conn, r) = self.request("GET", key_hex, &[], t)?;
        match r.status {
            200 => {}
            404 => return Ok(Fetched::Missing),
            s => return Err(Failure::Error(format!("GET answered HTTP {s}"))),
        }
        let body = if r.chunked {
            read_chunked(&mut conn, max)?
        } else if let Some(len) = r.content_length {
            if len > max {
                return Ok(Fetched::TooLarge(len));
            }
            Some(conn.exact(len as usize)?)
        } else {
            conn.until_close(max)?
        };
        Ok(match body {
            Some(b) => Fetched::Value(b),
            None => Fetched::TooLarge(max + 1),
        })
    }

    pub fn put(&self, key_hex: &str, value: &[u8], t: &Timeouts) -> Result<(), Failure> {
        let (_conn, r) = self.request("PUT", key_hex, value, t)?;
        match r.status {
            200..=299 => Ok(()),
            s => Err(Failure::Error(format!("PUT answered HTTP {s}"))),
        }
    }
}

struct Response {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
}

fn read_head(conn: &mut Conn) -> Result<Response, Failure> {
    let bad = |what: &str| Failure::Error(format!("not an HTTP answer: {what}"));
    let status_line = conn.line()?;
    let text = String::from_utf8_lossy(&status_line);
    let mut parts = text.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad(&text));
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| bad(&text))?;
    let mut r = Response { status, content_length: None, chunked: false };
    for _ in 0..MAX_HEADERS {
        let line = conn.line()?;
        if line.is_empty() {
            return Ok(r);
        }
        let line = String::from_utf8_lossy(&line);
        let Some((name, value)) = line.split_once(':') else { return Err(bad(&line)) };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            r.content_length = Some(value.parse().map_err(|_| bad(&line))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            r.chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Err(bad("too many headers"))
}

/// A chunked body of at most `max` bytes (`None` past it).
fn read_chunked(conn: &mut Conn, max: u64) -> Result<Option<Vec<u8>>, Failure> {
    let mut out = Vec::new();
    loop {
        let line = conn.line()?;
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| u64::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or_else(|| Failure::Error("bad chunk size".into()))?;
        if size == 0 {
            // Trailers, then the empty line.
            while !conn.line()?.is_empty() {}
            return Ok(Some(out));
        }
        if out.len() as u64 + size > max {
            return Ok(None);
        }
        out.extend_from_slice(&conn.exact(size as usize)?);
        conn.line()?;
    }
}

/// `Basic` credentials: base64 of `user:password` (RFC 7617).
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for chunk in input.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_rfc_7617_base64() {
        // RFC 7617's own example.
        assert_eq!(basic_auth("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "c"), "Basic YWI6Yw==");
    }

    #[test]
    fn layouts_place_keys_as_ccache_and_bazel_remote_do() {
        let h = |layout| Http { host: "h".into(), port: 1, prefix: "/c".into(), layout, authorization: None };
        let k = "ab".to_string() + &"0".repeat(62);
        assert_eq!(h(Layout::Subdirs).path(&k), format!("/c/ab/{}", "0".repeat(62)));
        assert_eq!(h(Layout::Flat).path(&k), format!("/c/{k}"));
        assert_eq!(h(Layout::Bazel).path(&k), format!("/c/ac/{k}"));
    }
}
