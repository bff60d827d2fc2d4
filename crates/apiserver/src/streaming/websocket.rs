//! The server side of WebSocket (RFC 6455) as kubectl's clients use it: the opening handshake's
//! accept key, and messages over an upgraded connection. Written here rather than pulled in as a
//! crate because the API server needs only this much (no client, no extensions, no TLS of its
//! own) and the build is slow on small machines.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A message larger than this ends the connection: kubectl sends stdin in 32 KiB pieces and
/// port-forward data in SPDY frames of at most 16 MiB.
const MAX_MESSAGE: usize = 17 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("websocket: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: protocol error: {0}")]
    Protocol(&'static str),
}

/// `Sec-WebSocket-Accept` for the client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    let digest = sha1(format!("{}{ACCEPT_GUID}", key.trim()).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Binary(Vec<u8>),
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close,
}

/// Reads whole messages from a client (whose frames are masked), joining fragments.
pub struct Reader<R> {
    inner: R,
    buf: BytesMut,
    /// A fragmented message being joined; it outlives control frames returned in between.
    partial: Option<(u8, Vec<u8>)>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, buf: BytesMut::with_capacity(64 << 10), partial: None }
    }

    async fn fill(&mut self, n: usize) -> Result<bool, WsError> {
        while self.buf.len() < n {
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next message; `None` when the connection ends between frames.
    pub async fn next(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            if !self.fill(2).await? {
                return if self.buf.is_empty() && self.partial.is_none() { Ok(None) } else { Err(WsError::Protocol("connection ended inside a frame")) };
            }
            let (b0, b1) = (self.buf[0], self.buf[1]);
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            if b0 & 0x70 != 0 {
                return Err(WsError::Protocol("reserved bits set without a negotiated extension"));
            }
            if b1 & 0x80 == 0 {
                return Err(WsError::Protocol("client frame not masked"));
            }
            let (len, header) = match b1 & 0x7f {
                126 => {
                    if !self.fill(4).await? {
                        return Err(WsError::Protocol("connection ended inside a frame"));
                    }
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as u64, 4)
                }
                127 => {
                    if !self.fill(10).await? {
                        return Err(WsError::Protocol("connection ended inside a frame"));
                    }
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&self.buf[2..10]);
                    (u64::from_be_bytes(be), 10)
                }
                n => (n as u64, 2),
            };
            let already = self.partial.as_ref().map_or(0, |(_, data)| data.len());
            if len > MAX_MESSAGE as u64 || already + len as usize > MAX_MESSAGE {
                return Err(WsError::Protocol("message too large"));
            }
            let len = len as usize;
            if !self.fill(header + 4 + len).await? {
                return Err(WsError::Protocol("connection ended inside a frame"));
            }
            self.buf.advance(header);
            let mask = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
            self.buf.advance(4);
            let mut payload = self.buf.split_to(len).to_vec();
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
            match opcode {
                // Control frames may arrive between the fragments of a message.
                0x8 => return Ok(Some(Message::Close)),
                0x9 => return Ok(Some(Message::Ping(payload))),
                0xA => return Ok(Some(Message::Pong)),
                0x1 | 0x2 if self.partial.is_some() => return Err(WsError::Protocol("new message inside a fragmented one")),
                0x1 | 0x2 => self.partial = Some((opcode, payload)),
                0x0 => match self.partial.as_mut() {
                    Some((_, data)) => data.extend_from_slice(&payload),
                    None => return Err(WsError::Protocol("continuation without a message")),
                },
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
            if fin {
                if let Some((opcode, data)) = self.partial.take() {
                    return Ok(Some(if opcode == 0x1 { Message::Text(data) } else { Message::Binary(data) }));
                }
            }
        }
    }
}

/// One unmasked, unfragmented server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PONG: u8 = 0xA;

/// A normal closure (status 1000) and the shutdown of the connection after it.
pub async fn close<W: AsyncWrite + Unpin>(writer: &mut W) {
    let _ = writer.write_all(&frame(OP_CLOSE, &1000u16.to_be_bytes())).await;
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// SHA-1 (FIPS 180-4), needed only for the handshake's accept key.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*word);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (slot, value) in h.iter_mut().zip([a, b, c, d, e]) {
            *slot = slot.wrapping_add(value);
        }
    }
    let mut out = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let hex: String = sha1(b"").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let long = vec![b'a'; 1000];
        let hex: String = sha1(&long).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "291e9a6c66994949b57ba5e650361e98fc36b1ba");
    }

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn reads_masked_fragmented_and_control_frames() {
        let mut wire = client_frame(true, 0x2, b"\x00hello");
        wire.extend(client_frame(false, 0x2, b"\x01ab"));
        wire.extend(client_frame(true, 0x9, b"p"));
        wire.extend(client_frame(true, 0x0, &[b'c'; 300]));
        wire.extend(client_frame(true, 0x8, &1000u16.to_be_bytes()));
        let mut reader = Reader::new(&wire[..]);
        assert_eq!(reader.next().await.unwrap(), Some(Message::Binary(b"\x00hello".to_vec())));
        assert_eq!(reader.next().await.unwrap(), Some(Message::Ping(b"p".to_vec())));
        let mut joined = b"\x01ab".to_vec();
        joined.extend([b'c'; 300]);
        assert_eq!(reader.next().await.unwrap(), Some(Message::Binary(joined)));
        assert_eq!(reader.next().await.unwrap(), Some(Message::Close));
        assert_eq!(reader.next().await.unwrap(), None);

        let unmasked = [0x82u8, 0x01, 0x00];
        assert!(Reader::new(&unmasked[..]).next().await.is_err());
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        assert_eq!(frame(OP_BINARY, b"\x01hi"), vec![0x82, 3, 1, b'h', b'i']);
        let long = frame(OP_BINARY, &[0; 200]);
        assert_eq!(&long[..4], &[0x82, 126, 0, 200]);
        let huge = frame(OP_BINARY, &[0; 70000]);
        assert_eq!(&huge[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
