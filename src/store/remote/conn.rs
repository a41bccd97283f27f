//! One connection to a remote with real socket timeouts: connect bounded by
//! the connect timeout, and every read and write bounded by what is left of
//! the operation's deadline, so a server that accepts and never answers (or
//! trickles one byte at a time) costs at most the operation timeout.

use super::Failure;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub struct Conn {
    sock: Sock,
    deadline: Instant,
    /// Bytes read from the socket and not yet consumed.
    buf: Vec<u8>,
    pos: usize,
}

/// A request line or header longer than this is a broken server.
const LINE_MAX: usize = 16 << 10;

impl Conn {
    /// Connects to `host:port` within `connect`; the operation then has `op`.
    pub fn tcp(host: &str, port: u16, connect: Duration, op: Duration) -> Result<Conn, Failure> {
        let start = Instant::now();
        // Name resolution is getaddrinfo, which takes no timeout: an IP
        // address (the usual setting for a build farm) resolves without I/O.
        let addrs: Vec<_> =
            (host, port).to_socket_addrs().map_err(|e| Failure::Error(format!("resolving {host}: {e}")))?.collect();
        let mut last = Failure::Error(format!("{host} has no address"));
        for addr in addrs {
            let left = connect.saturating_sub(start.elapsed());
            if left.is_zero() {
                last = Failure::Timeout(format!("connecting to {addr}"));
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    // Requests are written whole; waiting for more to send
                    // (Nagle) would add a round trip's delay to each.
                    let _ = s.set_nodelay(true);
                    return Ok(Conn::new(Sock::Tcp(s), op));
                }
                Err(e) => last = Failure::from_io(&format!("connecting to {addr}"), &e),
            }
        }
        Err(last)
    }

    /// Connects to a Unix socket without blocking past `connect` (a listener
    /// whose backlog is full makes a blocking `connect` wait indefinitely).
    pub fn unix(path: &Path, connect: Duration, op: Duration) -> Result<Conn, Failure> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let what = || format!("connecting to {}", path.display());
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: a zeroed sockaddr_un is valid; the path is copied in bounds
        // (checked against sun_path's size, leaving the terminating NUL).
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        if bytes.len() >= addr.sun_path.len() {
            return Err(Failure::Error(format!("{}: socket path too long", what())));
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // SAFETY: plain socket calls on a descriptor we own; `addr` lives
        // across the call; the descriptor is owned by the UnixStream after.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0);
            if fd < 0 {
                return Err(Failure::from_io(&what(), &std::io::Error::last_os_error()));
            }
            let stream = UnixStream::from_raw_fd(fd);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINPROGRESS) {
                    // EAGAIN: the server's backlog is full; not worth waiting for.
                    return Err(Failure::from_io(&what(), &e));
                }
                let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                if libc::poll(&mut p, 1, connect.as_millis().min(i32::MAX as u128) as i32) != 1 {
                    return Err(Failure::Timeout(what()));
                }
            }
            stream.set_nonblocking(false).map_err(|e| Failure::from_io(&what(), &e))?;
            Ok(Conn::new(Sock::Unix(stream), op))
        }
    }

    fn new(sock: Sock, op: Duration) -> Conn {
        Conn { sock, deadline: Instant::now() + op, buf: Vec::new(), pos: 0 }
    }

    /// What is left of the operation's time, or a timeout when nothing is.
    fn left(&self, what: &str) -> Result<Duration, Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        // A zero timeout means "none" to the socket layer: never pass it.
        if left < Duration::from_millis(1) {
            return Err(Failure::Timeout(what.to_string()));
        }
        Ok(left)
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), Failure> {
        while !data.is_empty() {
            let left = self.left("sending")?;
            let n = match &mut self.sock {
                Sock::Tcp(s) => s.set_write_timeout(Some(left)).and_then(|()| s.write(data)),
                Sock::Unix(s) => s.set_write_timeout(Some(left)).and_then(|()| s.write(data)),
            };
            match n {
                Ok(0) => return Err(Failure::Error("connection closed while sending".into())),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::from_io("sending", &e)),
            }
        }
        Ok(())
    }

    /// Reads more bytes into the buffer; false at end of stream.
    fn fill(&mut self) -> Result<bool, Failure> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 64 << 10];
        loop {
            let left = self.left("waiting for the answer")?;
            let n = match &mut self.sock {
                Sock::Tcp(s) => s.set_read_timeout(Some(left)).and_then(|()| s.read(&mut chunk)),
                Sock::Unix(s) => s.set_read_timeout(Some(left)).and_then(|()| s.read(&mut chunk)),
            };
            match n {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::from_io("waiting for the answer", &e)),
            }
        }
    }

    /// One line without its CRLF (or LF).
    pub fn line(&mut self) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let mut line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() - self.pos > LINE_MAX {
                return Err(Failure::Error("answer line too long".into()));
            }
            if !self.fill()? {
                return Err(Failure::Error("connection closed mid-answer".into()));
            }
        }
    }

    /// Exactly `n` bytes (the caller has bounded `n`).
    pub fn exact(&mut self, n: usize) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos == self.buf.len() && !self.fill()? {
                return Err(Failure::Error(format!("answer truncated at {} of {n} bytes", out.len())));
            }
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(out)
    }

    /// Everything until the server closes, at most `max` bytes (`None` past it).
    pub fn until_close(&mut self, max: u64) -> Result<Option<Vec<u8>>, Failure> {
        loop {
            if (self.buf.len() - self.pos) as u64 > max {
                return Ok(None);
            }
            if !self.fill()? {
                let out = self.buf[self.pos..].to_vec();
                self.pos = self.buf.len();
                return Ok(Some(out));
            }
        }
    }
}
