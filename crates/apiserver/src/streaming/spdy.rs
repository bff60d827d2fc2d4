//! The part of SPDY/3.1 a client of the kubelet's streaming protocols needs: frames, the header
//! blocks of the streams it opens, and reading whatever the server sends.
//!
//! Header blocks are zlib streams that continue from frame to frame. Ours are written as stored
//! (uncompressed) deflate blocks, each frame's ending with a sync flush, which any zlib reader
//! accepts; the zlib header
//! names no preset dictionary, so the server's reader does not use the SPDY one either. The
//! server's header blocks are never decompressed: a stream is known by the id we gave it, and
//! the replies' headers say nothing we need.
//!
//! There is no flow control: the kubelet's and containerd's SPDY implementation (spdystream)
//! neither sends nor honours WINDOW_UPDATE.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
/// Data frames carry at most 2^24-1 bytes; smaller pieces keep the streams interleaved.
const MAX_DATA: usize = 32 << 10;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data { stream: u32, fin: bool, data: Vec<u8> },
    Control { kind: u16, flags: u8, payload: Vec<u8> },
}

/// The next frame; `None` when the connection ends between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match reader.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    reader.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    if head[0] & 0x80 != 0 {
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(Frame::Control { kind, flags, payload }))
    } else {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        Ok(Some(Frame::Data { stream, fin: flags & FLAG_FIN != 0, data: payload }))
    }
}

/// The stream id a SYN_REPLY or RST_STREAM is about.
pub fn control_stream(payload: &[u8]) -> Option<u32> {
    payload.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    out
}

/// Data frames for `data` on `stream` (an empty one when only `fin` is to be said).
pub fn data(stream: u32, data: &[u8], fin: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut pieces: Vec<&[u8]> = data.chunks(MAX_DATA).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.push(if fin && i == last { FLAG_FIN } else { 0 });
        out.extend_from_slice(&(piece.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(piece);
    }
    out
}

/// The answer to a server's PING: the same frame back.
pub fn ping(payload: &[u8]) -> Vec<u8> {
    control(TYPE_PING, 0, payload)
}

/// Writes the zlib stream of one direction's header blocks.
#[derive(Default)]
pub struct HeaderWriter {
    started: bool,
}

impl HeaderWriter {
    /// The compressed form of a header block (name-value pairs, names lowercased as SPDY wants).
    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            plain.extend_from_slice(&(name.len() as u32).to_be_bytes());
            plain.extend_from_slice(name.as_bytes());
            plain.extend_from_slice(&(value.len() as u32).to_be_bytes());
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 16);
        if !self.started {
            // CMF 0x78 (deflate, 32 KiB window), FLG 0x01: no dictionary; a multiple of 31.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for piece in plain.chunks(u16::MAX as usize) {
            // A non-final stored block: its 3 header bits and the padding make one zero byte,
            // so every block, and so every frame, ends on a byte boundary.
            let len = piece.len() as u16;
            out.push(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(piece);
        }
        // An empty stored block, as zlib's sync flush writes: Go's inflater hands out a block's
        // bytes only when the next block starts, so without it the server would wait for the
        // following frame to read this one's headers.
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
        out
    }

    /// A SYN_STREAM opening `stream` with `headers`.
    pub fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)], fin: bool) -> Vec<u8> {
        let block = self.block(headers);
        let mut payload = Vec::with_capacity(10 + block.len());
        payload.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        // Priority 0 in the top three bits, then the unused credential slot.
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&block);
        control(TYPE_SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_through_the_reader() {
        let mut wire = data(5, b"hello", false);
        wire.extend(data(3, b"", true));
        wire.extend(ping(&7u32.to_be_bytes()));
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader).await.unwrap(), Some(Frame::Data { stream: 5, fin: false, data: b"hello".to_vec() }));
        assert_eq!(read_frame(&mut reader).await.unwrap(), Some(Frame::Data { stream: 3, fin: true, data: vec![] }));
        assert_eq!(read_frame(&mut reader).await.unwrap(), Some(Frame::Control { kind: TYPE_PING, flags: 0, payload: 7u32.to_be_bytes().to_vec() }));
        assert_eq!(read_frame(&mut reader).await.unwrap(), None);
        let big = data(1, &vec![1u8; MAX_DATA + 1], true);
        assert_eq!(big.len(), MAX_DATA + 1 + 16);
        assert_eq!(big[4], 0, "only the last piece carries FIN");
    }

    #[test]
    fn header_blocks_are_a_zlib_stream_of_stored_blocks() {
        let mut writer = HeaderWriter::default();
        let first = writer.syn_stream(1, &[("streamType", "error")], false);
        assert_eq!(&first[..8], &[0x80, 3, 0, 1, 0, 0, 0, (first.len() - 8) as u8]);
        assert_eq!(&first[8..12], &1u32.to_be_bytes());
        let block = &first[18..];
        assert_eq!(&block[..2], &[0x78, 0x01]);
        assert_eq!((0x78u32 * 256 + 0x01) % 31, 0);
        let plain_len = 4 + 4 + "streamtype".len() + 4 + "error".len();
        assert_eq!(&block[2..7], &[0, plain_len as u8, 0, !(plain_len as u8), 0xff]);
        assert_eq!(&block[7 + 8..7 + 18], b"streamtype");
        assert_eq!(&block[block.len() - 5..], &[0, 0, 0, 0xff, 0xff]);
        // Later blocks continue the stream: no second zlib header.
        let second = writer.syn_stream(3, &[("streamType", "stdin")], false);
        assert_eq!(second[18], 0);
    }
}
