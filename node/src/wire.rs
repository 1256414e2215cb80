//! The `/kabar/envelope/1` request-response protocol: a request carries one
//! or more encoded envelopes, the response acknowledges each.
//!
//! Framing on a fresh libp2p stream (one request, one response):
//!
//! ```text
//! request  = u32 BE total length ‖ u16 BE count ‖ count × (u32 BE len ‖ envelope bytes)
//! response = u32 BE total length ‖ u16 BE count ‖ count × (status u8 [‖ reason u8 if status = 2])
//! status   = 0 accepted | 1 duplicate | 2 rejected
//! reason   = 0 malformed | 1 no session | 2 undecryptable | 3 blocked | 4 storage | 5 unknown prekey | 6 identity mismatch
//! ```
//!
//! Bounds: at most [`MAX_BATCH`] envelopes and [`MAX_REQUEST_BYTES`] per
//! request; a larger or malformed frame is an error of the stream only.
//! Decoding is pure, total and bounded.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use kabar_crypto::envelope::MAX_ENVELOPE_LEN;
use libp2p::StreamProtocol;

/// Protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kabar/envelope/1");
/// Most envelopes per request.
pub const MAX_BATCH: usize = 256;
/// Largest request frame (after the length prefix): 4 MiB.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest response frame (after the length prefix).
pub const MAX_RESPONSE_BYTES: usize = 2 + 2 * MAX_BATCH;

/// Why a receiver rejected an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// It did not decode as an envelope.
    Malformed,
    /// No session, and not a prekey message.
    NoSession,
    /// Authentication failed, or the prekey message did not verify.
    Undecryptable,
    /// The sender is blocked.
    Blocked,
    /// The receiver could not store it; retry later.
    Storage,
    /// A prekey message named a prekey the receiver does not hold.
    UnknownPrekey,
    /// A prekey message's identity is not the connection's PeerId.
    IdentityMismatch,
}

impl RejectReason {
    fn to_byte(self) -> u8 {
        match self {
            RejectReason::Malformed => 0,
            RejectReason::NoSession => 1,
            RejectReason::Undecryptable => 2,
            RejectReason::Blocked => 3,
            RejectReason::Storage => 4,
            RejectReason::UnknownPrekey => 5,
            RejectReason::IdentityMismatch => 6,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => RejectReason::Malformed,
            1 => RejectReason::NoSession,
            2 => RejectReason::Undecryptable,
            3 => RejectReason::Blocked,
            4 => RejectReason::Storage,
            5 => RejectReason::UnknownPrekey,
            6 => RejectReason::IdentityMismatch,
            _ => return None,
        })
    }

    /// True if sending the same envelope again might succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, RejectReason::Storage | RejectReason::UnknownPrekey | RejectReason::NoSession)
    }
}

/// The receiver's verdict on one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Stored durably.
    Accepted,
    /// Already stored before; not stored again.
    Duplicate,
    /// Not stored.
    Rejected(RejectReason),
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Encodes a request body (without the outer length).
pub fn encode_request(envelopes: &[Vec<u8>]) -> io::Result<Vec<u8>> {
    if envelopes.len() > MAX_BATCH {
        return Err(invalid("too many envelopes in one request"));
    }
    let total: usize = 2 + envelopes.iter().map(|e| 4 + e.len()).sum::<usize>();
    if total > MAX_REQUEST_BYTES {
        return Err(invalid("request too large"));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(envelopes.len() as u16).to_be_bytes());
    for e in envelopes {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Decodes a request body. Each envelope must be at most
/// `MAX_ENVELOPE_LEN` bytes; the frame must end exactly after the last.
pub fn decode_request(body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let (count, mut rest) = split_u16(body)?;
    if count > MAX_BATCH {
        return Err(invalid("too many envelopes in one request"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if rest.len() < 4 {
            return Err(invalid("truncated request"));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if len > MAX_ENVELOPE_LEN || len > rest.len() {
            return Err(invalid("bad envelope length"));
        }
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(invalid("trailing bytes in request"));
    }
    Ok(out)
}

/// Encodes a response body.
pub fn encode_response(acks: &[Ack]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 2 * acks.len());
    out.extend_from_slice(&(acks.len().min(MAX_BATCH) as u16).to_be_bytes());
    for ack in acks.iter().take(MAX_BATCH) {
        match ack {
            Ack::Accepted => out.push(0),
            Ack::Duplicate => out.push(1),
            Ack::Rejected(r) => {
                out.push(2);
                out.push(r.to_byte());
            }
        }
    }
    out
}

/// Decodes a response body.
pub fn decode_response(body: &[u8]) -> io::Result<Vec<Ack>> {
    let (count, mut rest) = split_u16(body)?;
    if count > MAX_BATCH {
        return Err(invalid("too many acknowledgements"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (&status, tail) = rest.split_first().ok_or_else(|| invalid("truncated response"))?;
        rest = tail;
        out.push(match status {
            0 => Ack::Accepted,
            1 => Ack::Duplicate,
            2 => {
                let (&reason, tail) = rest.split_first().ok_or_else(|| invalid("truncated response"))?;
                rest = tail;
                Ack::Rejected(RejectReason::from_byte(reason).ok_or_else(|| invalid("unknown reject reason"))?)
            }
            _ => return Err(invalid("unknown acknowledgement status")),
        });
    }
    if !rest.is_empty() {
        return Err(invalid("trailing bytes in response"));
    }
    Ok(out)
}

fn split_u16(body: &[u8]) -> io::Result<(usize, &[u8])> {
    if body.len() < 2 {
        return Err(invalid("truncated frame"));
    }
    Ok((u16::from_be_bytes([body[0], body[1]]) as usize, &body[2..]))
}

/// Reads one `u32 BE length ‖ body` frame of at most `max` bytes (shared
/// with the mailbox protocol).
pub(crate) async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid("frame over the size limit"));
    }
    // Grow with what arrives: a peer that declares 4 MiB and sends 10 bytes
    // costs 10 bytes, not 4 MiB.
    let mut body = Vec::with_capacity(len.min(FRAME_CHUNK));
    (&mut *io).take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "frame shorter than its length"));
    }
    Ok(body)
}

/// What a frame reader reserves before bytes arrive.
const FRAME_CHUNK: usize = 16 * 1024;

/// Writes one frame and closes the writing side of the stream.
pub(crate) async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    io.write_all(&(body.len() as u32).to_be_bytes()).await?;
    io.write_all(body).await?;
    io.close().await
}

/// The libp2p codec of [`PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeCodec;

impl libp2p::request_response::Codec for EnvelopeCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<Vec<u8>>;
    type Response = Vec<Ack>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Request> {
        decode_request(&read_frame(io, MAX_REQUEST_BYTES).await?)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response> {
        decode_response(&read_frame(io, MAX_RESPONSE_BYTES).await?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()> {
        write_frame(io, &encode_request(&req)?).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()> {
        write_frame(io, &encode_response(&res)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let envs = vec![vec![1u8; 10], vec![], vec![7u8; 300]];
        assert_eq!(decode_request(&encode_request(&envs).unwrap()).unwrap(), envs);
        let acks = vec![Ack::Accepted, Ack::Duplicate, Ack::Rejected(RejectReason::Blocked)];
        assert_eq!(decode_response(&encode_response(&acks)).unwrap(), acks);
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(encode_request(&vec![vec![0u8; 1]; MAX_BATCH + 1]).is_err());
        let mut body = ((MAX_BATCH + 1) as u16).to_be_bytes().to_vec();
        body.extend(std::iter::repeat_n(0, 4 * (MAX_BATCH + 1)));
        assert!(decode_request(&body).is_err());
        // An envelope length past the envelope limit.
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend(((MAX_ENVELOPE_LEN + 1) as u32).to_be_bytes());
        assert!(decode_request(&body).is_err());
        assert!(decode_request(&[0, 1, 0, 0, 0, 5, 1]).is_err());
        assert!(decode_request(&[0, 0, 9]).is_err());
        assert!(decode_response(&[0, 1, 9]).is_err());
        assert!(decode_response(&[0, 1, 2, 99]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
