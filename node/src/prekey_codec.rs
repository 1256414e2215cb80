//! The libp2p codec of `/kabar/prekey/1` ([`crate::prekeys`]).
//!
//! One request, one response, on a fresh stream:
//!
//! ```text
//! request  = 0x01                      (prekeys::REQUEST_V1, then the writer closes)
//! response = PrekeyResponse::encode()  (at most prekeys::MAX_RESPONSE_LEN bytes, then the writer closes)
//! ```
//!
//! Reads are bounded before anything is decoded: a request reader reads at
//! most 2 bytes and accepts exactly `[0x01]`; a response reader reads at
//! most [`MAX_RESPONSE_LEN`] + 1 bytes and fails if there are more, or
//! none (a responder that declines closes without answering). Anything
//! else is an error of the stream only ([`io::ErrorKind::InvalidData`]).
//! The response's content is decoded and verified by the engine
//! ([`crate::prekeys::PrekeyResponse::decode`]).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::prekeys::{MAX_RESPONSE_LEN, REQUEST_V1};

/// Protocol name ([`crate::prekeys::PROTOCOL`]).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(crate::prekeys::PROTOCOL);

/// A `/kabar/prekey/1` request: it carries nothing but its version byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrekeyRequest;

/// The codec of [`PROTOCOL`]; responses are the raw bytes of
/// [`crate::prekeys::PrekeyResponse::encode`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PrekeyCodec;

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads until the writer closes, at most `max` bytes.
async fn read_at_most<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(max);
    io.take(max as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

impl libp2p::request_response::Codec for PrekeyCodec {
    type Protocol = StreamProtocol;
    type Request = PrekeyRequest;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Request> {
        // Two bytes at most: enough to see that a request is too long.
        match read_at_most(io, 2).await?.as_slice() {
            [REQUEST_V1] => Ok(PrekeyRequest),
            _ => Err(invalid("a prekey request is exactly one byte, 0x01")),
        }
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response> {
        let bytes = read_at_most(io, MAX_RESPONSE_LEN + 1).await?;
        if bytes.len() > MAX_RESPONSE_LEN {
            return Err(invalid("prekey response over the size limit"));
        }
        if bytes.is_empty() {
            // The responder closed without answering (over a budget, or it
            // refuses us).
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no prekey response"));
        }
        Ok(bytes)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        _: Self::Request,
    ) -> io::Result<()> {
        io.write_all(&[REQUEST_V1]).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()> {
        if res.len() > MAX_RESPONSE_LEN {
            return Err(invalid("prekey response over the size limit"));
        }
        io.write_all(&res).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    fn read_request(bytes: &[u8]) -> io::Result<PrekeyRequest> {
        block_on(PrekeyCodec.read_request(&PROTOCOL, &mut Cursor::new(bytes.to_vec())))
    }

    fn read_response(bytes: &[u8]) -> io::Result<Vec<u8>> {
        block_on(PrekeyCodec.read_response(&PROTOCOL, &mut Cursor::new(bytes.to_vec())))
    }

    #[test]
    fn the_protocol_name_is_the_specified_one() {
        assert_eq!(PROTOCOL.as_ref(), "/kabar/prekey/1");
    }

    #[test]
    fn a_request_is_exactly_one_byte_0x01() {
        assert_eq!(read_request(&[REQUEST_V1]).unwrap(), PrekeyRequest);
        for bad in [&[][..], &[0x00], &[0x02], &[0xff], &[REQUEST_V1, REQUEST_V1], &[REQUEST_V1, 0x00, 0x00]] {
            let err = read_request(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        // A long request is not read to its end.
        let mut io = Cursor::new(vec![REQUEST_V1; 10_000]);
        assert!(block_on(PrekeyCodec.read_request(&PROTOCOL, &mut io)).is_err());
        assert_eq!(io.position(), 2);
    }

    #[test]
    fn a_response_is_bounded_and_not_empty() {
        let full = vec![7u8; MAX_RESPONSE_LEN];
        assert_eq!(read_response(&full).unwrap(), full);
        assert_eq!(read_response(&[1, 2, 3]).unwrap(), [1, 2, 3]);
        let err = read_response(&vec![7u8; MAX_RESPONSE_LEN + 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut io = Cursor::new(vec![7u8; 100_000]);
        assert!(block_on(PrekeyCodec.read_response(&PROTOCOL, &mut io)).is_err());
        assert_eq!(io.position(), MAX_RESPONSE_LEN as u64 + 1);
        assert_eq!(read_response(&[]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn writers_write_exactly_the_frame() {
        let mut io = Cursor::new(Vec::new());
        block_on(PrekeyCodec.write_request(&PROTOCOL, &mut io, PrekeyRequest)).unwrap();
        assert_eq!(io.into_inner(), [REQUEST_V1]);
        let response = vec![9u8; MAX_RESPONSE_LEN];
        let mut io = Cursor::new(Vec::new());
        block_on(PrekeyCodec.write_response(&PROTOCOL, &mut io, response.clone())).unwrap();
        assert_eq!(io.into_inner(), response);
        let mut io = Cursor::new(Vec::new());
        assert!(block_on(PrekeyCodec.write_response(&PROTOCOL, &mut io, vec![0; MAX_RESPONSE_LEN + 1])).is_err());
        assert!(io.into_inner().is_empty());
    }
}
