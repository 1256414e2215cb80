//! The `/kabar/mailbox/1` codec: one request and one response per libp2p
//! stream, each framed as `u32 BE length ‖ body`.
//!
//! ```text
//! request  = op u8 ‖ fields                   (owner ops end with time_ms u64 ‖ sig 64)
//! response = status u8 ‖ fields               (fields only when status = OK, but DEPOSIT
//!                                              always carries accepted u16)
//! 0x01 REGISTER   mailbox 32 ‖ auth                                   → status
//! 0x02 DEPOSIT    mailbox 32 ‖ tag 16 ‖ cap_sig 64 ‖ count u16 (1..=64)
//!                 ‖ count × (u32 len ‖ envelope)                      → status ‖ accepted u16
//! 0x03 FETCH      mailbox 32 ‖ after u64 ‖ max u16 (1..=256) ‖ auth   → status ‖ more u8 ‖ count u16
//!                 ‖ count × (seq u64 ‖ tag 16 ‖ deposited_at_ms u64 ‖ u32 len ‖ envelope)
//! 0x04 DELETE     mailbox 32 ‖ count u16 (≤ 1024) ‖ count × seq u64 ‖ auth → status ‖ deleted u16
//! 0x05 REVOKE     mailbox 32 ‖ tag 16 ‖ revoked u8 (0/1) ‖ auth       → status
//! 0x06 UNREGISTER mailbox 32 ‖ auth                                   → status
//! 0x07 STATUS     mailbox 32 ‖ auth → status ‖ count u32 ‖ bytes u64 ‖ max_count u32 ‖ max_bytes u64 ‖ ttl_ms u64
//! auth = time_ms u64 ‖ sig 64
//! ```
//!
//! All integers are big-endian. Decoding is pure, total and bounded: it
//! rejects unknown ops, counts and lengths out of range, and trailing bytes,
//! so the encoding is canonical and an owner signature can be checked over
//! the re-encoded body. A larger or malformed frame is an error of its
//! stream only.

use std::io;

use futures::{AsyncRead, AsyncWrite};

use crate::wire::{read_frame, write_frame};
use kabar_crypto::envelope::MAX_ENVELOPE_LEN;
use libp2p::StreamProtocol;

use super::{Item, MailboxStatus, Status};

/// Largest request body: 4 MiB + 4 KiB.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024 + 4 * 1024;
/// Largest response body: 4 MiB + 64 KiB.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024 + 64 * 1024;
/// Most envelopes per deposit.
pub const MAX_DEPOSIT: usize = 64;
/// Most items per fetch.
pub const MAX_FETCH: u16 = 256;
/// Most envelope bytes per fetch page.
pub const MAX_FETCH_BYTES: usize = 4 * 1024 * 1024;
/// Most sequence numbers per delete.
pub const MAX_DELETE: usize = 1024;
/// Bytes of a fetched item besides its envelope.
pub const ITEM_OVERHEAD: usize = 8 + 16 + 8 + 4;
/// Bytes of a deposit request besides its envelopes (and their lengths).
pub const DEPOSIT_OVERHEAD: usize = 1 + 32 + 16 + 64 + 2;

// A fetch page of the largest items fits a response frame, and one envelope
// always fits a page.
const _: () = assert!(4 + MAX_FETCH as usize * ITEM_OVERHEAD + MAX_FETCH_BYTES <= MAX_RESPONSE_BYTES);
const _: () = assert!(MAX_ENVELOPE_LEN <= MAX_FETCH_BYTES);

/// An operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// 0x01: create the mailbox (idempotent).
    Register,
    /// 0x02: store envelopes (with a capability).
    Deposit,
    /// 0x03: read envelopes after a sequence number.
    Fetch,
    /// 0x04: delete envelopes by sequence number.
    Delete,
    /// 0x05: revoke or restore a tag.
    Revoke,
    /// 0x06: delete the mailbox and everything in it.
    Unregister,
    /// 0x07: usage and limits.
    Status,
}

impl Op {
    /// The op byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Op::Register => 1,
            Op::Deposit => 2,
            Op::Fetch => 3,
            Op::Delete => 4,
            Op::Revoke => 5,
            Op::Unregister => 6,
            Op::Status => 7,
        }
    }

    /// The op of a byte.
    pub fn from_byte(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Register,
            2 => Op::Deposit,
            3 => Op::Fetch,
            4 => Op::Delete,
            5 => Op::Revoke,
            6 => Op::Unregister,
            7 => Op::Status,
            _ => return None,
        })
    }
}

/// The authentication ending an owner request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerAuth {
    /// The owner's clock, ms since the Unix epoch.
    pub time_ms: u64,
    /// Ed25519 signature by the mailbox key over [`super::owner_message`].
    pub signature: [u8; 64],
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create the mailbox.
    Register {
        /// Mailbox id.
        mailbox: [u8; 32],
        /// Owner authentication.
        auth: OwnerAuth,
    },
    /// Store envelopes.
    Deposit {
        /// Mailbox id.
        mailbox: [u8; 32],
        /// Capability tag.
        tag: [u8; 16],
        /// Capability signature.
        cap_sig: [u8; 64],
        /// 1..=64 envelopes.
        envelopes: Vec<Vec<u8>>,
    },
    /// Read envelopes.
    Fetch {
        /// Mailbox id.
        mailbox: [u8; 32],
        /// Items with a greater seq.
        after: u64,
        /// Most items (1..=256).
        max: u16,
        /// Owner authentication.
        auth: OwnerAuth,
    },
    /// Delete envelopes.
    Delete {
        /// Mailbox id.
        mailbox: [u8; 32],
        /// Their sequence numbers (at most 1,024).
        seqs: Vec<u64>,
        /// Owner authentication.
        auth: OwnerAuth,
    },
    /// Revoke or restore a tag.
    Revoke {
        /// Mailbox id.
        mailbox: [u8; 32],
        /// The tag.
        tag: [u8; 16],
        /// True to revoke, false to restore.
        revoked: bool,
        /// Owner authentication.
        auth: OwnerAuth,
    },
    /// Delete the mailbox.
    Unregister {
        /// Mailbox id.
        mailbox: [u8; 32],
        /// Owner authentication.
        auth: OwnerAuth,
    },
    /// Usage and limits.
    Status {
        /// Mailbox id.
        mailbox: [u8; 32],
        /// Owner authentication.
        auth: OwnerAuth,
    },
}

impl Request {
    /// Its op.
    pub fn op(&self) -> Op {
        match self {
            Request::Register { .. } => Op::Register,
            Request::Deposit { .. } => Op::Deposit,
            Request::Fetch { .. } => Op::Fetch,
            Request::Delete { .. } => Op::Delete,
            Request::Revoke { .. } => Op::Revoke,
            Request::Unregister { .. } => Op::Unregister,
            Request::Status { .. } => Op::Status,
        }
    }

    /// The mailbox it is about.
    pub fn mailbox(&self) -> &[u8; 32] {
        match self {
            Request::Register { mailbox, .. }
            | Request::Deposit { mailbox, .. }
            | Request::Fetch { mailbox, .. }
            | Request::Delete { mailbox, .. }
            | Request::Revoke { mailbox, .. }
            | Request::Unregister { mailbox, .. }
            | Request::Status { mailbox, .. } => mailbox,
        }
    }

    /// The owner authentication (None for a deposit).
    pub fn auth(&self) -> Option<&OwnerAuth> {
        match self {
            Request::Deposit { .. } => None,
            Request::Register { auth, .. }
            | Request::Fetch { auth, .. }
            | Request::Delete { auth, .. }
            | Request::Revoke { auth, .. }
            | Request::Unregister { auth, .. }
            | Request::Status { auth, .. } => Some(auth),
        }
    }

    /// The owner authentication, to fill in the signature.
    pub(crate) fn auth_mut(&mut self) -> Option<&mut OwnerAuth> {
        match self {
            Request::Deposit { .. } => None,
            Request::Register { auth, .. }
            | Request::Fetch { auth, .. }
            | Request::Delete { auth, .. }
            | Request::Revoke { auth, .. }
            | Request::Unregister { auth, .. }
            | Request::Status { auth, .. } => Some(auth),
        }
    }

    /// The body an owner signs: the encoded request without its trailing
    /// 64-byte signature. None for a deposit, or a request out of bounds.
    pub fn unsigned_body(&self) -> Option<Vec<u8>> {
        self.auth()?;
        let mut body = encode_request(self).ok()?;
        body.truncate(body.len() - 64);
        Some(body)
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Status only: a refusal of any op but DEPOSIT, or OK to REGISTER,
    /// REVOKE and UNREGISTER.
    Done(Status),
    /// The answer to DEPOSIT.
    Deposited {
        /// OK if all were stored.
        status: Status,
        /// How many (a prefix, in order) were stored durably.
        accepted: u16,
    },
    /// OK to FETCH.
    Fetched {
        /// More items are waiting after these.
        more: bool,
        /// The items, ascending seq.
        items: Vec<Item>,
    },
    /// OK to DELETE.
    Deleted {
        /// How many were there and are gone.
        deleted: u16,
    },
    /// OK to STATUS.
    Status(MailboxStatus),
}

impl Response {
    /// The refusal of a request of `op` with `status`.
    pub fn refusal(op: Op, status: Status) -> Response {
        match op {
            Op::Deposit => Response::Deposited { status, accepted: 0 },
            _ => Response::Done(status),
        }
    }

    /// Its status.
    pub fn status(&self) -> Status {
        match self {
            Response::Done(s) | Response::Deposited { status: s, .. } => *s,
            _ => Status::Ok,
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn put_auth(out: &mut Vec<u8>, auth: &OwnerAuth) {
    out.extend_from_slice(&auth.time_ms.to_be_bytes());
    out.extend_from_slice(&auth.signature);
}

/// Encodes a request body (without the outer length). Fails when a count or
/// length is out of bounds.
pub fn encode_request(req: &Request) -> io::Result<Vec<u8>> {
    let mut out = vec![req.op().to_byte()];
    out.extend_from_slice(req.mailbox());
    match req {
        Request::Register { auth, .. } | Request::Unregister { auth, .. } | Request::Status { auth, .. } => {
            put_auth(&mut out, auth);
        }
        Request::Deposit { tag, cap_sig, envelopes, .. } => {
            if envelopes.is_empty() || envelopes.len() > MAX_DEPOSIT {
                return Err(invalid("a deposit carries 1 to 64 envelopes"));
            }
            if envelopes.iter().any(|e| e.len() > MAX_ENVELOPE_LEN) {
                return Err(invalid("envelope too large"));
            }
            let total = DEPOSIT_OVERHEAD + envelopes.iter().map(|e| 4 + e.len()).sum::<usize>();
            if total > MAX_REQUEST_BYTES {
                return Err(invalid("deposit too large"));
            }
            out.reserve(total);
            out.extend_from_slice(tag);
            out.extend_from_slice(cap_sig);
            out.extend_from_slice(&(envelopes.len() as u16).to_be_bytes());
            for e in envelopes {
                out.extend_from_slice(&(e.len() as u32).to_be_bytes());
                out.extend_from_slice(e);
            }
        }
        Request::Fetch { after, max, auth, .. } => {
            if *max == 0 || *max > MAX_FETCH {
                return Err(invalid("a fetch asks for 1 to 256 items"));
            }
            out.extend_from_slice(&after.to_be_bytes());
            out.extend_from_slice(&max.to_be_bytes());
            put_auth(&mut out, auth);
        }
        Request::Delete { seqs, auth, .. } => {
            if seqs.len() > MAX_DELETE {
                return Err(invalid("a delete names at most 1024 items"));
            }
            out.extend_from_slice(&(seqs.len() as u16).to_be_bytes());
            for s in seqs {
                out.extend_from_slice(&s.to_be_bytes());
            }
            put_auth(&mut out, auth);
        }
        Request::Revoke { tag, revoked, auth, .. } => {
            out.extend_from_slice(tag);
            out.push(u8::from(*revoked));
            put_auth(&mut out, auth);
        }
    }
    Ok(out)
}

/// A cursor over a body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("truncated frame"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn flag(&mut self) -> io::Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(invalid("a flag is 0 or 1")),
        }
    }

    fn bytes(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(invalid("length over the limit"));
        }
        Ok(self.take(len)?.to_vec())
    }

    fn auth(&mut self) -> io::Result<OwnerAuth> {
        Ok(OwnerAuth { time_ms: self.u64()?, signature: self.array()? })
    }

    fn finish<T>(self, value: T) -> io::Result<T> {
        if self.0.is_empty() { Ok(value) } else { Err(invalid("trailing bytes")) }
    }
}

/// Decodes a request body.
pub fn decode_request(body: &[u8]) -> io::Result<Request> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(invalid("request too large"));
    }
    let mut r = Reader(body);
    let op = Op::from_byte(r.u8()?).ok_or_else(|| invalid("unknown op"))?;
    let mailbox = r.array::<32>()?;
    let req = match op {
        Op::Register => Request::Register { mailbox, auth: r.auth()? },
        Op::Unregister => Request::Unregister { mailbox, auth: r.auth()? },
        Op::Status => Request::Status { mailbox, auth: r.auth()? },
        Op::Deposit => {
            let tag = r.array()?;
            let cap_sig = r.array()?;
            let count = r.u16()? as usize;
            if count == 0 || count > MAX_DEPOSIT {
                return Err(invalid("a deposit carries 1 to 64 envelopes"));
            }
            let mut envelopes = Vec::with_capacity(count);
            for _ in 0..count {
                envelopes.push(r.bytes(MAX_ENVELOPE_LEN)?);
            }
            Request::Deposit { mailbox, tag, cap_sig, envelopes }
        }
        Op::Fetch => {
            let after = r.u64()?;
            let max = r.u16()?;
            if max == 0 || max > MAX_FETCH {
                return Err(invalid("a fetch asks for 1 to 256 items"));
            }
            Request::Fetch { mailbox, after, max, auth: r.auth()? }
        }
        Op::Delete => {
            let count = r.u16()? as usize;
            if count > MAX_DELETE {
                return Err(invalid("a delete names at most 1024 items"));
            }
            let mut seqs = Vec::with_capacity(count);
            for _ in 0..count {
                seqs.push(r.u64()?);
            }
            Request::Delete { mailbox, seqs, auth: r.auth()? }
        }
        Op::Revoke => {
            let tag = r.array()?;
            let revoked = r.flag()?;
            Request::Revoke { mailbox, tag, revoked, auth: r.auth()? }
        }
    };
    r.finish(req)
}

/// Encodes a response body. Fails when a fetch page is out of bounds.
pub fn encode_response(res: &Response) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match res {
        Response::Done(status) => out.push(status.to_byte()),
        Response::Deposited { status, accepted } => {
            out.push(status.to_byte());
            out.extend_from_slice(&accepted.to_be_bytes());
        }
        Response::Fetched { more, items } => {
            let bytes: usize = items.iter().map(|i| i.envelope.len()).sum();
            if items.len() > MAX_FETCH as usize
                || bytes > MAX_FETCH_BYTES
                || items.iter().any(|i| i.envelope.len() > MAX_ENVELOPE_LEN)
            {
                return Err(invalid("fetch page too large"));
            }
            out.reserve(4 + items.len() * ITEM_OVERHEAD + bytes);
            out.push(Status::Ok.to_byte());
            out.push(u8::from(*more));
            out.extend_from_slice(&(items.len() as u16).to_be_bytes());
            for i in items {
                out.extend_from_slice(&i.seq.to_be_bytes());
                out.extend_from_slice(&i.tag);
                out.extend_from_slice(&i.deposited_at_ms.to_be_bytes());
                out.extend_from_slice(&(i.envelope.len() as u32).to_be_bytes());
                out.extend_from_slice(&i.envelope);
            }
        }
        Response::Deleted { deleted } => {
            out.push(Status::Ok.to_byte());
            out.extend_from_slice(&deleted.to_be_bytes());
        }
        Response::Status(s) => {
            out.push(Status::Ok.to_byte());
            out.extend_from_slice(&s.count.to_be_bytes());
            out.extend_from_slice(&s.bytes.to_be_bytes());
            out.extend_from_slice(&s.max_count.to_be_bytes());
            out.extend_from_slice(&s.max_bytes.to_be_bytes());
            out.extend_from_slice(&s.ttl_ms.to_be_bytes());
        }
    }
    Ok(out)
}

/// Decodes the response body to a request of `op`.
pub fn decode_response(op: Op, body: &[u8]) -> io::Result<Response> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(invalid("response too large"));
    }
    let mut r = Reader(body);
    let status = Status::from_byte(r.u8()?).ok_or_else(|| invalid("unknown status"))?;
    if op == Op::Deposit {
        let accepted = r.u16()?;
        if accepted as usize > MAX_DEPOSIT || (status == Status::Ok && accepted == 0) {
            return Err(invalid("accepted count out of range"));
        }
        return r.finish(Response::Deposited { status, accepted });
    }
    if status != Status::Ok {
        return r.finish(Response::Done(status));
    }
    let res = match op {
        Op::Register | Op::Revoke | Op::Unregister | Op::Deposit => Response::Done(status),
        Op::Fetch => {
            let more = r.flag()?;
            let count = r.u16()?;
            if count > MAX_FETCH {
                return Err(invalid("too many items"));
            }
            let mut items = Vec::with_capacity(count as usize);
            let mut bytes = 0usize;
            for _ in 0..count {
                let seq = r.u64()?;
                let tag = r.array()?;
                let deposited_at_ms = r.u64()?;
                let envelope = r.bytes(MAX_ENVELOPE_LEN)?;
                bytes += envelope.len();
                items.push(crate::mailbox::Item { seq, tag, deposited_at_ms, envelope });
            }
            if bytes > MAX_FETCH_BYTES {
                return Err(invalid("fetch page too large"));
            }
            Response::Fetched { more, items }
        }
        Op::Delete => {
            let deleted = r.u16()?;
            if deleted as usize > MAX_DELETE {
                return Err(invalid("deleted count out of range"));
            }
            Response::Deleted { deleted }
        }
        Op::Status => Response::Status(MailboxStatus {
            count: r.u32()?,
            bytes: r.u64()?,
            max_count: r.u32()?,
            max_bytes: r.u64()?,
            ttl_ms: r.u64()?,
        }),
    };
    r.finish(res)
}

/// The libp2p codec of [`super::PROTOCOL`].
///
/// A response is decoded according to the op of the request written on the
/// same stream: libp2p's request-response handler writes the request and
/// reads the response with one clone of the codec, which remembers the op.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailboxCodec {
    op: Option<Op>,
}

impl libp2p::request_response::Codec for MailboxCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

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
        let op = self.op.ok_or_else(|| invalid("a response without a request"))?;
        decode_response(op, &read_frame(io, MAX_RESPONSE_BYTES).await?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()> {
        self.op = Some(req.op());
        write_frame(io, &encode_request(&req)?).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()> {
        write_frame(io, &encode_response(&res)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPS: [Op; 7] = [Op::Register, Op::Deposit, Op::Fetch, Op::Delete, Op::Revoke, Op::Unregister, Op::Status];

    fn auth() -> OwnerAuth {
        OwnerAuth { time_ms: 1_764_000_000_000, signature: [9; 64] }
    }

    fn samples() -> Vec<Request> {
        let mailbox = [3; 32];
        vec![
            Request::Register { mailbox, auth: auth() },
            Request::Deposit { mailbox, tag: [4; 16], cap_sig: [5; 64], envelopes: vec![vec![1; 10], vec![]] },
            Request::Fetch { mailbox, after: 77, max: 256, auth: auth() },
            Request::Delete { mailbox, seqs: vec![1, 2, u64::MAX], auth: auth() },
            Request::Revoke { mailbox, tag: [6; 16], revoked: true, auth: auth() },
            Request::Unregister { mailbox, auth: auth() },
            Request::Status { mailbox, auth: auth() },
        ]
    }

    #[test]
    fn requests_round_trip_byte_exact() {
        for req in samples() {
            let body = encode_request(&req).unwrap();
            assert_eq!(decode_request(&body).unwrap(), req);
            if let Some(unsigned) = req.unsigned_body() {
                assert_eq!(&body[..body.len() - 64], &unsigned[..]);
                assert_eq!(&body[body.len() - 64..], &[9; 64]);
            }
        }
        // REGISTER, byte by byte.
        let body = encode_request(&samples()[0]).unwrap();
        assert_eq!(body.len(), 1 + 32 + 8 + 64);
        assert_eq!(body[0], 0x01);
        assert_eq!(&body[33..41], &1_764_000_000_000u64.to_be_bytes());
    }

    #[test]
    fn responses_round_trip() {
        let cases = [
            (Op::Register, Response::Done(Status::Ok)),
            (Op::Fetch, Response::Done(Status::BadSignature)),
            (Op::Deposit, Response::Deposited { status: Status::QuotaFull, accepted: 3 }),
            (
                Op::Fetch,
                Response::Fetched {
                    more: true,
                    items: vec![crate::mailbox::Item {
                        seq: 5,
                        tag: [1; 16],
                        deposited_at_ms: 9,
                        envelope: vec![7; 100],
                    }],
                },
            ),
            (Op::Delete, Response::Deleted { deleted: 4 }),
            (Op::Status, Response::Status(MailboxStatus { count: 1, bytes: 2, max_count: 3, max_bytes: 4, ttl_ms: 5 })),
        ];
        for (op, res) in cases {
            assert_eq!(decode_response(op, &encode_response(&res).unwrap()).unwrap(), res);
        }
        assert_eq!(encode_response(&Response::refusal(Op::Deposit, Status::Revoked)).unwrap(), vec![4, 0, 0]);
    }

    #[test]
    fn bounds_are_enforced() {
        let mailbox = [0; 32];
        let deposit = |envelopes| Request::Deposit { mailbox, tag: [0; 16], cap_sig: [0; 64], envelopes };
        assert!(encode_request(&deposit(vec![])).is_err());
        assert!(encode_request(&deposit(vec![vec![]; MAX_DEPOSIT + 1])).is_err());
        assert!(encode_request(&deposit(vec![vec![0; MAX_ENVELOPE_LEN + 1]])).is_err());
        assert!(encode_request(&Request::Fetch { mailbox, after: 0, max: 0, auth: auth() }).is_err());
        assert!(encode_request(&Request::Fetch { mailbox, after: 0, max: 257, auth: auth() }).is_err());
        assert!(encode_request(&Request::Delete { mailbox, seqs: vec![0; MAX_DELETE + 1], auth: auth() }).is_err());
        // An envelope length past the limit, an unknown op, a bad flag, trailing bytes.
        let mut body = encode_request(&deposit(vec![vec![1]])).unwrap();
        let at = DEPOSIT_OVERHEAD;
        body[at..at + 4].copy_from_slice(&((MAX_ENVELOPE_LEN + 1) as u32).to_be_bytes());
        assert!(decode_request(&body).is_err());
        assert!(decode_request(&[9; 200]).is_err());
        let mut revoke = encode_request(&samples()[4]).unwrap();
        revoke[1 + 32 + 16] = 2;
        assert!(decode_request(&revoke).is_err());
        let mut register = encode_request(&samples()[0]).unwrap();
        register.push(0);
        assert!(decode_request(&register).is_err());
        assert!(decode_response(Op::Register, &[0, 0]).is_err());
        assert!(decode_response(Op::Register, &[11]).is_err());
        assert!(decode_response(Op::Deposit, &[0]).is_err());
        assert!(decode_response(Op::Fetch, &[0, 0, 1, 1]).is_err());
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let mailbox = any::<[u8; 32]>();
        let auth = (any::<u64>(), prop::collection::vec(any::<u8>(), 64))
            .prop_map(|(time_ms, sig)| OwnerAuth { time_ms, signature: sig.try_into().unwrap() });
        prop_oneof![
            (mailbox, auth.clone()).prop_map(|(mailbox, auth)| Request::Register { mailbox, auth }),
            (
                mailbox,
                any::<[u8; 16]>(),
                prop::collection::vec(any::<u8>(), 64),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..=MAX_DEPOSIT)
            )
                .prop_map(|(mailbox, tag, sig, envelopes)| Request::Deposit {
                    mailbox,
                    tag,
                    cap_sig: sig.try_into().unwrap(),
                    envelopes
                }),
            (mailbox, any::<u64>(), 1..=MAX_FETCH, auth.clone())
                .prop_map(|(mailbox, after, max, auth)| Request::Fetch { mailbox, after, max, auth }),
            (mailbox, prop::collection::vec(any::<u64>(), 0..100), auth.clone())
                .prop_map(|(mailbox, seqs, auth)| Request::Delete { mailbox, seqs, auth }),
            (mailbox, any::<[u8; 16]>(), any::<bool>(), auth.clone())
                .prop_map(|(mailbox, tag, revoked, auth)| Request::Revoke { mailbox, tag, revoked, auth }),
            (mailbox, auth.clone()).prop_map(|(mailbox, auth)| Request::Unregister { mailbox, auth }),
            (mailbox, auth).prop_map(|(mailbox, auth)| Request::Status { mailbox, auth }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
            let _ = decode_request(&bytes);
            for op in OPS {
                let _ = decode_response(op, &bytes);
            }
        }

        #[test]
        fn requests_round_trip(req in arb_request()) {
            let body = encode_request(&req).unwrap();
            prop_assert_eq!(decode_request(&body).unwrap(), req);
        }

        #[test]
        fn fetch_pages_round_trip(
            more in any::<bool>(),
            items in prop::collection::vec(
                (any::<u64>(), any::<[u8; 16]>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..200)),
                0..50,
            ),
        ) {
            let items: Vec<_> = items
                .into_iter()
                .map(|(seq, tag, deposited_at_ms, envelope)| crate::mailbox::Item { seq, tag, deposited_at_ms, envelope })
                .collect();
            let res = Response::Fetched { more, items };
            prop_assert_eq!(decode_response(Op::Fetch, &encode_response(&res).unwrap()).unwrap(), res);
        }
    }
}
