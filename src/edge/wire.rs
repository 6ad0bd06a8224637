//! HTTP/1.1 as the edge speaks it to its upstream: the request head it writes, the response
//! head it reads (with `httparse`), and the response body's framing (RFC 9112 §6.3).
//!
//! The client side is written here rather than taken from hyper because hyper's client drives
//! each connection from a task of its own, with channels to the request's task for the
//! request, the response and every body frame; a proxy that forwards from the client's task
//! does the same work with none of those hand-offs. Clients still meet hyper: it parses what
//! they send, hostile input included. Everything here is pure: it reads and writes buffers.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};

/// A response head larger than this is refused: no upstream of ours sends one, and the edge
/// does not buffer without bound.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines per response head read; more is refused.
const MAX_HEADERS: usize = 128;

/// What the upstream sent that is not HTTP/1.1 as the edge reads it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("response head: {0}")]
    Head(httparse::Error),
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("status {0}: the edge does not forward protocol switches")]
    Switching(u16),
    #[error("content-length {0:?} is not one length")]
    ContentLength(String),
    #[error("chunked body: bad chunk size line")]
    ChunkSize,
    #[error("chunked body: chunk not followed by CRLF")]
    ChunkEnd,
    #[error("chunked body: trailers over {MAX_HEAD} bytes")]
    Trailers,
}

/// Writes the head of `req` as sent upstream: its method and target (origin form), its
/// headers as they are (hop-by-hop ones already stripped), a `host` from `authority` when the
/// client sent none, and `transfer-encoding: chunked` when its body is to be chunked.
pub fn encode_head(req: &Parts, authority: &str, chunked: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !req.headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked request body, framed.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked request body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A response head, read.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Decoder,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// What [`parse_head`] found at the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// An interim (1xx) response, consumed: the final one follows.
    Interim,
    Final(Head),
}

/// Reads a response head from the front of `buf`, consuming it when complete. `method` is the
/// request's: a response to HEAD has no body whatever its headers say.
///
/// # Errors
/// A head that is not HTTP/1.x, too large, a protocol switch, or with conflicting lengths.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Parsed, Malformed> {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(Malformed::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(e) => return Err(Malformed::Head(e)),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Malformed::Head(httparse::Error::Status))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Malformed::Switching(code));
    }
    if status.is_informational() {
        let _ = buf.split_to(len);
        return Ok(Parsed::Interim);
    }
    // Where each header's name and value sit in the head, so that the values can share the
    // head's memory once it leaves the buffer instead of each being copied.
    let base = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Malformed::Head(httparse::Error::HeaderName))?;
        let start = h.value.as_ptr() as usize - base;
        spans.push((name, start, start + h.value.len()));
    }
    let http10 = res.version == Some(0);
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Malformed::Head(httparse::Error::HeaderValue))?;
        headers.append(name, value);
    }
    let (body, length_known) = framing(&headers, status, method)?;
    let keep_alive = length_known && keeps_alive(&headers, http10);
    Ok(Parsed::Final(Head { status, headers, body, keep_alive }))
}

/// The body's framing, and whether its end is known without the connection closing.
fn framing(headers: &HeaderMap, status: StatusCode, method: &Method) -> Result<(Decoder, bool), Malformed> {
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Decoder::Length(0), true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Chunked only when it is the last coding; any other is read to the close. With a
        // content-length as well, the coding wins and the connection is not reused (a message
        // framed two ways is how requests are smuggled).
        let last =
            headers.get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).last();
        let chunked = last.is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        let reusable = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked { (Decoder::Chunked(Chunk::Size), reusable) } else { (Decoder::UntilClose, false) });
    }
    let mut length = None;
    for v in &headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let bad = || Malformed::ContentLength(String::from_utf8_lossy(v.as_bytes()).into_owned());
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let n: u64 = std::str::from_utf8(part).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            if length.is_some_and(|l| l != n) {
                return Err(bad());
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Decoder::Length(n), true),
        None => (Decoder::UntilClose, false),
    })
}

/// HTTP/1.1 keeps the connection unless told to close; 1.0 closes it unless told to keep it.
fn keeps_alive(headers: &HeaderMap, http10: bool) -> bool {
    let says = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    };
    if http10 { says(b"keep-alive") } else { !says(b"close") }
}

/// Where a chunked body's decoding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes of it left.
    Data(u64),
    /// After a chunk's data, at its CRLF.
    DataEnd,
    /// After the last chunk, at the trailer section (read and dropped).
    Trailers,
}

/// How much of the response body is left, and how its end is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the upstream closes the connection.
    UntilClose,
    Done,
}

/// What the next bytes of a body are.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no more of the body; read more.
    NeedMore,
    End,
}

impl Decoder {
    /// Takes the next piece of body from the front of `buf`.
    ///
    /// # Errors
    /// A chunked body that breaks its framing.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match *self {
                Self::Done => return Ok(Decoded::End),
                Self::Length(0) => {
                    *self = Self::Done;
                    return Ok(Decoded::End);
                }
                Self::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let (data, left) = take_up_to(buf, left);
                    *self = Self::Length(left);
                    return Ok(Decoded::Data(data));
                }
                Self::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Self::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        *self = Self::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < 1024 => return Ok(Decoded::NeedMore),
                    _ => return Err(Malformed::ChunkSize),
                },
                Self::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let (data, left) = take_up_to(buf, left);
                    *self = Self::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                    return Ok(Decoded::Data(data));
                }
                Self::Chunked(Chunk::DataEnd) => match buf.get(..2) {
                    None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(Decoded::NeedMore),
                    Some(b"\r\n") => {
                        let _ = buf.split_to(2);
                        *self = Self::Chunked(Chunk::Size);
                    }
                    _ => return Err(Malformed::ChunkEnd),
                },
                Self::Chunked(Chunk::Trailers) => {
                    // Trailer fields are dropped: the edge does not forward trailers.
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        return if buf.len() > MAX_HEAD { Err(Malformed::Trailers) } else { Ok(Decoded::NeedMore) };
                    };
                    let _ = buf.split_to(eol + 2);
                    if eol == 0 {
                        *self = Self::Done;
                    }
                }
            }
        }
    }

    /// Whether the body's end is in `buf` with no data before it, so that the connection can
    /// be given back before the body is asked for: true for a body read to its length, and
    /// for a chunked one whose last chunk (without trailers) has arrived.
    pub fn ends_in(&self, buf: &[u8]) -> bool {
        match self {
            Self::Done | Self::Length(0) => true,
            Self::Chunked(Chunk::DataEnd) => buf == b"\r\n0\r\n\r\n",
            Self::Chunked(Chunk::Size) => buf == b"0\r\n\r\n",
            _ => false,
        }
    }

    /// Whether the upstream closing the connection now ends the body rather than cuts it.
    pub fn ends_at_close(&self) -> bool {
        matches!(self, Self::UntilClose | Self::Done)
    }

    /// The exact number of body bytes left, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(n) => Some(*n),
            Self::Done => Some(0),
            _ => None,
        }
    }
}

/// Up to `left` bytes from the front of `buf`, and how many of `left` remain after them.
fn take_up_to(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    (buf.split_to(n).freeze(), left - n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Parsed, Malformed> {
        parse_head(&mut BytesMut::from(raw), &method)
    }

    fn final_head(raw: &str) -> Head {
        match head(raw, Method::GET) {
            Ok(Parsed::Final(h)) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn the_request_head_keeps_method_target_and_headers_and_gains_a_host_when_it_has_none() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("http://shop.example/item/7?colour=red")
            .header("x-request-id", "abc")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut out = Vec::new();
        encode_head(&req, "10.0.0.1:8080", true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /item/7?colour=red HTTP/1.1\r\nx-request-id: abc\r\nhost: 10.0.0.1:8080\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        let req = http::Request::builder().uri("/").header("host", "shop").body(()).unwrap().into_parts().0;
        let mut out = Vec::new();
        encode_head(&req, "10.0.0.1:8080", false, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "GET / HTTP/1.1\r\nhost: shop\r\n\r\n");
        let mut out = Vec::new();
        encode_chunk(b"hello, upstream", &mut out);
        assert_eq!(out, b"f\r\nhello, upstream\r\n");
    }

    #[test]
    fn a_head_is_read_only_when_complete_and_leaves_the_body_in_the_buffer() {
        let raw = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello";
        for cut in [0, 10, raw.len() - 6] {
            assert!(matches!(head(&raw[..cut], Method::GET), Ok(Parsed::Incomplete)), "{cut}");
        }
        let mut buf = BytesMut::from(raw);
        let Ok(Parsed::Final(h)) = parse_head(&mut buf, &Method::GET) else { panic!() };
        assert_eq!(h.status, 200);
        assert_eq!(h.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!((h.body, h.keep_alive), (Decoder::Length(5), true));
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn interim_responses_are_skipped_and_protocol_switches_refused() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(parse_head(&mut buf, &Method::POST), Ok(Parsed::Interim)));
        let Ok(Parsed::Final(h)) = parse_head(&mut buf, &Method::POST) else { panic!() };
        assert_eq!(h.status, 201);
        assert!(buf.is_empty());
        let switch = head("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n", Method::GET);
        assert_eq!(switch.unwrap_err(), Malformed::Switching(101));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&str, Method, Decoder, bool); 9] = [
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", Method::GET, Decoder::Length(3), true),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", Method::GET, Decoder::Length(3), true),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", Method::HEAD, Decoder::Length(0), true),
            ("HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\n\r\n", Method::GET, Decoder::Length(0), true),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                Decoder::Chunked(Chunk::Size),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Method::GET,
                Decoder::Chunked(Chunk::Size),
                false,
            ),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Method::GET, Decoder::UntilClose, false),
            ("HTTP/1.1 200 OK\r\n\r\n", Method::GET, Decoder::UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n",
                Method::GET,
                Decoder::Length(0),
                false,
            ),
        ];
        for (raw, method, body, keep_alive) in cases {
            let Ok(Parsed::Final(h)) = head(raw, method) else { panic!("{raw:?}") };
            assert_eq!((h.body, h.keep_alive), (body, keep_alive), "{raw:?}");
        }
        assert!(!final_head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(final_head("HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n").keep_alive);
    }

    #[test]
    fn bad_heads_are_refused_with_what_is_wrong() {
        for (raw, want) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n", "is not one length"),
            ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "is not one length"),
            ("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n", "is not one length"),
            ("SSH-2.0-OpenSSH_9.6\r\n\r\n", "response head"),
            ("HTTP/1.1 999x OK\r\n\r\n", "response head"),
        ] {
            let err = head(raw, Method::GET).unwrap_err();
            assert!(err.to_string().contains(want), "{raw:?}: {err}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&huge, Method::GET).unwrap_err(), Malformed::HeadTooLarge);
    }

    /// Decodes `wire` fed in pieces of `step` bytes; the body, or the first error.
    fn decode_in_steps(mut d: Decoder, wire: &[u8], step: usize) -> Result<(Vec<u8>, usize), Malformed> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::End => return Ok((body, buf.len())),
                Decoded::NeedMore if fed < wire.len() => {
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
                Decoded::NeedMore => panic!("ran out of input after {body:?}"),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_pieces_they_arrive_in() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, left) = decode_in_steps(Decoder::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            // The next response's bytes are left alone (as many as were fed).
            assert!(left <= 4, "step {step}");
        }
        for (bad, want) in [(&b"zz\r\n"[..], Malformed::ChunkSize), (b"2\r\nabXY", Malformed::ChunkEnd)] {
            assert_eq!(decode_in_steps(Decoder::Chunked(Chunk::Size), bad, 1).unwrap_err(), want);
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_leaves_what_follows() {
        let (body, left) = decode_in_steps(Decoder::Length(5), b"helloHTTP/1.1", 3).unwrap();
        // Fed three bytes at a time: the second piece ends the body one byte into what follows.
        assert_eq!((body.as_slice(), left), (&b"hello"[..], 1));
        let mut d = Decoder::Chunked(Chunk::DataEnd);
        assert!(d.ends_in(b"\r\n0\r\n\r\n") && !d.ends_in(b"\r\n0\r\nx: 1\r\n\r\n"));
        assert_eq!(d.decode(&mut BytesMut::from("\r\n0\r\n\r\n")), Ok(Decoded::End));
        assert!(Decoder::UntilClose.ends_at_close() && !Decoder::Length(1).ends_at_close());
    }

    proptest::proptest! {
        /// However a body is cut into chunks (with or without extensions and trailers), and
        /// however the bytes arrive, the decoder gives back the body and stops at its end.
        #[test]
        fn any_chunked_body_decodes_to_itself(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cuts in proptest::collection::vec(1usize..200, 1..8),
            step in 1usize..64,
            extension: bool,
            trailer: bool,
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                let size = if extension { format!("{n:X};name=\"v\"\r\n") } else { format!("{n:x}\r\n") };
                wire.extend_from_slice(size.as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend_from_slice(if trailer { b"0\r\nx-sum: 1\r\n\r\n" } else { b"0\r\n\r\n" });
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let (decoded, _) = decode_in_steps(Decoder::Chunked(Chunk::Size), &wire, step).unwrap();
            proptest::prop_assert_eq!(decoded, body);
        }

        /// Whatever bytes an upstream sends, reading them is an answer or an error, never a
        /// panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_head(&mut BytesMut::from(&bytes[..]), &Method::GET);
            let mut prefixed = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
            prefixed.extend_from_slice(&bytes);
            let _ = parse_head(&mut prefixed, &Method::GET);
            for start in [Decoder::Chunked(Chunk::Size), Decoder::Chunked(Chunk::Trailers), Decoder::Length(7)] {
                let mut d = start;
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Decoded::Data(_)) = d.decode(&mut buf) {}
            }
        }
    }
}
