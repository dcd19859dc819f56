//! A small HTTP/1.1 server side: read a request (bounded in size and time), write its
//! response, and either close (`connection: close`) or, with `STANDIN_KEEPALIVE=1`, read the
//! connection's next request ([`Conn`] keeps what the client sent ahead).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Request line plus headers may not exceed this.
pub const MAX_HEAD: usize = 64 * 1024;
/// Request bodies may not exceed this.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// The whole request must arrive within this (each read also times out).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// HTTP/1.1 without `connection: close`: the client lets the connection live on.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    /// A query parameter (no percent-decoding beyond `+`; the control endpoints need none).
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| v.replace('+', " "))
        })
    }
}

/// Why no request was read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed before sending a request (or timed out idle): answer nothing.
    Gone,
    /// A malformed request: answer 400 with this reason.
    Bad(String),
    /// Head or body too large: answer 413.
    TooLarge,
}

fn io_err(e: io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::InvalidData => ReadError::Bad("request is not UTF-8".into()),
        _ => ReadError::Gone,
    }
}

/// Read one line (up to `limit` bytes, CRLF or LF), checking the deadline.
fn read_line<R: BufRead>(
    r: &mut R,
    limit: &mut usize,
    deadline: Instant,
) -> Result<String, ReadError> {
    if Instant::now() > deadline {
        return Err(ReadError::Gone);
    }
    let mut buf = Vec::new();
    let n = Read::take(&mut *r, *limit as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(io_err)?;
    if n > *limit {
        return Err(ReadError::TooLarge);
    }
    *limit -= n;
    if n == 0 || !buf.ends_with(b"\n") {
        return Err(ReadError::Gone);
    }
    buf.pop();
    if buf.ends_with(b"\r") {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| ReadError::Bad("header is not UTF-8".into()))
}

/// A reader that fails with `TimedOut` once `deadline` passes (each read waits at most the time
/// left), so a client trickling bytes cannot hold a connection past the deadline.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request deadline passed",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// Read one request from `stream` within [`REQUEST_DEADLINE`].
pub fn read_request(stream: &TcpStream) -> Result<Request, ReadError> {
    read_request_within(stream, REQUEST_DEADLINE)
}

/// Read one request from `stream` within `limit`.
pub fn read_request_within(stream: &TcpStream, limit: Duration) -> Result<Request, ReadError> {
    Conn::new(stream).next(limit)
}

/// One connection's requests, one after another: bytes the client sent beyond a request stay
/// buffered for the next one.
pub struct Conn<'a> {
    r: BufReader<DeadlineReader<'a>>,
}

impl<'a> Conn<'a> {
    pub fn new(stream: &'a TcpStream) -> Conn<'a> {
        Conn {
            r: BufReader::new(DeadlineReader {
                stream,
                deadline: Instant::now(),
            }),
        }
    }

    /// The next request, which must arrive whole within `limit`.
    pub fn next(&mut self, limit: Duration) -> Result<Request, ReadError> {
        let deadline = Instant::now() + limit;
        self.r.get_mut().deadline = deadline;
        read_from(&mut self.r, deadline)
    }
}

fn read_from<R: BufRead>(r: &mut R, deadline: Instant) -> Result<Request, ReadError> {
    let mut limit = MAX_HEAD;
    let mut line = read_line(r, &mut limit, deadline)?;
    // Tolerate leading blank lines, as RFC 9112 allows.
    while line.is_empty() {
        line = read_line(r, &mut limit, deadline)?;
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(format!("malformed request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(ReadError::Bad(format!("malformed request line {line:?}")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let h = read_line(r, &mut limit, deadline)?;
        if h.is_empty() {
            break;
        }
        let Some((n, v)) = h.split_once(':') else {
            return Err(ReadError::Bad(format!("malformed header {h:?}")));
        };
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let closes = headers.iter().any(|(n, v)| {
        n == "connection" && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
    });
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
        keep_alive: version == "HTTP/1.1" && !closes,
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut l = MAX_HEAD;
            let size_line = read_line(r, &mut l, deadline)?;
            let size_hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| ReadError::Bad(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !read_line(r, &mut l, deadline)?.is_empty() {}
                break;
            }
            if req.body.len() + size > MAX_BODY {
                return Err(ReadError::TooLarge);
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..]).map_err(io_err)?;
            let mut crlf = MAX_HEAD;
            if !read_line(r, &mut crlf, deadline)?.is_empty() {
                return Err(ReadError::Bad("chunk not followed by CRLF".into()));
            }
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| ReadError::Bad(format!("bad content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(ReadError::TooLarge);
        }
        req.body.resize(len, 0);
        r.read_exact(&mut req.body).map_err(io_err)?;
    }
    if Instant::now() > deadline {
        return Err(ReadError::Gone);
    }
    Ok(req)
}

/// The reason phrase of the status codes the stand-in uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The response head (status line and headers, blank line included); `connection: close`
/// unless `keep` (uvicorn then sends no `connection` header).
pub fn head(
    status: u16,
    content_type: Option<&str>,
    content_length: Option<usize>,
    keep: bool,
) -> String {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nserver: uvicorn\r\n",
        reason(status)
    );
    if !keep {
        h.push_str("connection: close\r\n");
    }
    if let Some(ct) = content_type {
        h.push_str(&format!("content-type: {ct}\r\n"));
    }
    if let Some(n) = content_length {
        h.push_str(&format!("content-length: {n}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// Write a whole response; close our side unless `keep`.
pub fn answer(
    mut stream: &TcpStream,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    keep: bool,
) -> io::Result<()> {
    let mut out = head(status, content_type, Some(body.len()), keep).into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()?;
    if !keep {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// `read` on the server side of a connection whose client sends `raw` and closes its side.
    fn served<T>(raw: &[u8], read: impl FnOnce(&TcpStream) -> T) -> T {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let raw = raw.to_vec();
        let t = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            // The server may close early (too large): write errors are expected then.
            let _ = c.write_all(&raw);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
        });
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = read(&s);
        drop(s);
        t.join().unwrap();
        r
    }

    fn roundtrip(raw: &[u8]) -> Result<Request, ReadError> {
        served(raw, read_request)
    }

    #[test]
    fn parses_content_length_and_query() {
        let r = roundtrip(b"POST /v1/completions?x=1&mode=503 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nAuthorization: Bearer k\r\n\r\nbody").unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/completions");
        assert_eq!(r.query_param("mode").as_deref(), Some("503"));
        assert_eq!(r.header("AUTHORIZATION"), Some("Bearer k"));
        assert_eq!(r.body, b"body");
    }

    #[test]
    fn a_trickling_client_meets_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for b in b"GET /health HTTP/1.1\r\nHost: somewhere\r\n" {
                if c.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        let (s, _) = l.accept().unwrap();
        let t0 = Instant::now();
        let r = read_request_within(&s, Duration::from_millis(300));
        assert!(matches!(r, Err(ReadError::Gone)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(s);
        t.join().unwrap();
    }

    #[test]
    fn a_connection_s_next_request_is_read_from_what_came_ahead() {
        let raw = b"POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nxyGET /b HTTP/1.1\r\nconnection: keep-alive, close\r\n\r\nGET /c HTTP/1.0\r\n\r\n";
        let [a, b, c] = served(raw, |s| {
            let mut conn = Conn::new(s);
            [(); 3].map(|()| conn.next(Duration::from_secs(5)).unwrap())
        });
        assert_eq!(
            (a.path.as_str(), a.body.as_slice(), a.keep_alive),
            ("/a", &b"xy"[..], true)
        );
        assert_eq!((b.path.as_str(), b.keep_alive), ("/b", false));
        assert_eq!((c.path.as_str(), c.keep_alive), ("/c", false));
    }

    #[test]
    fn parses_chunked() {
        let r = roundtrip(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(matches!(
            roundtrip(b"hello\r\n\r\n"),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            roundtrip(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"),
            Err(ReadError::Bad(_))
        ));
        assert!(matches!(
            roundtrip(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Err(ReadError::Gone)
        ));
        assert!(matches!(
            roundtrip(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"),
            Err(ReadError::Gone)
        ));
        assert!(matches!(
            roundtrip(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            Err(ReadError::TooLarge)
        ));
        assert!(matches!(roundtrip(b""), Err(ReadError::Gone)));
        assert!(matches!(roundtrip(b"\r\n\r\n\r\n"), Err(ReadError::Gone)));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat(b'a').take(MAX_HEAD + 10));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(roundtrip(&big), Err(ReadError::TooLarge)));
    }
}
