//! A Redis remote, spoken in RESP2: `GET`/`SET` of `ltocache:<64 hex>`, with
//! `AUTH` and `SELECT` pipelined in front of the command so that a lookup is
//! one round trip whatever the URL asks for. Values are never given an
//! expiry: the server's `maxmemory-policy` (e.g. `allkeys-lru`) evicts.

use super::conn::Conn;
use super::{Failure, Fetched, Timeouts};
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Redis {
    pub target: Target,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

/// Keys are namespaced like ccache's (`ccache:<digest>`), so one server can
/// hold both.
pub const KEY_PREFIX: &str = "ltocache:";

/// One reply, as far as this client needs to tell them apart.
enum Reply {
    Ok,
    Bulk(Vec<u8>),
    Nil,
    TooLarge(u64),
}

impl Redis {
    fn connect(&self, t: &Timeouts) -> Result<Conn, Failure> {
        match &self.target {
            Target::Tcp { host, port } => Conn::tcp(host, *port, t.connect, t.operation),
            Target::Unix(path) => Conn::unix(path, t.connect, t.operation),
        }
    }

    /// Sends the login commands and `cmd` in one write and reads their
    /// replies; returns `cmd`'s.
    fn call(&self, cmd: &[&[u8]], t: &Timeouts, max: u64) -> Result<Reply, Failure> {
        let mut conn = self.connect(t)?;
        let mut out = Vec::with_capacity(64 + cmd.iter().map(|a| a.len() + 16).sum::<usize>());
        let mut preamble = 0;
        if let Some(pw) = &self.password {
            match &self.username {
                Some(u) => encode(&mut out, &[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => encode(&mut out, &[b"AUTH", pw.as_bytes()]),
            }
            preamble += 1;
        }
        if self.db != 0 {
            encode(&mut out, &[b"SELECT", self.db.to_string().as_bytes()]);
            preamble += 1;
        }
        encode(&mut out, cmd);
        conn.write_all(&out)?;
        for _ in 0..preamble {
            // AUTH and SELECT answer +OK or an error (wrong password, no such db).
            read_reply(&mut conn, 0)?;
        }
        read_reply(&mut conn, max)
    }

    pub fn get(&self, key_hex: &str, t: &Timeouts, max: u64) -> Result<Fetched, Failure> {
        let key = format!("{KEY_PREFIX}{key_hex}");
        match self.call(&[b"GET", key.as_bytes()], t, max)? {
            Reply::Bulk(v) => Ok(Fetched::Value(v)),
            Reply::Nil => Ok(Fetched::Missing),
            Reply::TooLarge(n) => Ok(Fetched::TooLarge(n)),
            Reply::Ok => Err(Failure::Error("GET answered a status".into())),
        }
    }

    pub fn put(&self, key_hex: &str, value: &[u8], t: &Timeouts) -> Result<(), Failure> {
        let key = format!("{KEY_PREFIX}{key_hex}");
        match self.call(&[b"SET", key.as_bytes(), value], t, 0)? {
            Reply::Ok => Ok(()),
            _ => Err(Failure::Error("SET did not answer OK".into())),
        }
    }
}

/// A RESP2 command: an array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one reply. An error reply (`-OOM ...`, `-WRONGPASS ...`) is a
/// failure; a bulk string over `max` bytes is not read.
fn read_reply(conn: &mut Conn, max: u64) -> Result<Reply, Failure> {
    let line = conn.line()?;
    let text = String::from_utf8_lossy(line.get(1..).unwrap_or_default()).into_owned();
    match line.first() {
        Some(b'+') => Ok(Reply::Ok),
        Some(b'-') => Err(Failure::Error(format!("redis: {text}"))),
        Some(b'$') => {
            let len: i64 = text.parse().map_err(|_| Failure::Error(format!("redis: bad length {text:?}")))?;
            if len < 0 {
                return Ok(Reply::Nil);
            }
            if len as u64 > max {
                return Ok(Reply::TooLarge(len as u64));
            }
            let v = conn.exact(len as usize)?;
            if conn.exact(2)? != b"\r\n" {
                return Err(Failure::Error("redis: bulk string not terminated".into()));
            }
            Ok(Reply::Bulk(v))
        }
        _ => Err(Failure::Error(format!("redis: unexpected reply {:?}", String::from_utf8_lossy(&line)))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        super::encode(&mut out, &[b"SET", b"k", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n");
    }
}
