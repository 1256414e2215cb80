//! The `/kabar/envelope/1` request-response protocol: a request carries one
//! or more encoded envelopes, the response acknowledges each.
//!
//! Framing on a fresh libp2p stream (one request, one response):
//!
//! ```text
//! request  = u32 BE total length ‖ u16 BE count ‖ count × (u32 BE len ‖ envelope bytes)
//! response = u32 BE total length ‖ u16 BE count ‖ count × (status u8 [‖ reason u8 if status = 2])
//! status   = 0 accepted | 1 duplicate | 2 rejected
//! reason   = 0 malformed | 1 no session | 2 undecryptable | 3 blocked | 4 storage | 5 unknown prekey | 6 identity mismatch | 7 busy
//!            (any other reason: unknown, treated as transient)
//! ```
//!
//! Bounds: at most [`MAX_BATCH`] envelopes and [`MAX_REQUEST_BYTES`] per
//! request; a larger or malformed frame is an error of the stream only.
//! Decoding is pure, total and bounded.
//!
//! A frame reader's buffer grows with the bytes that arrive (at most twice
//! what arrived, never more than the declared length), so declaring 4 MiB
//! and sending 10 bytes costs kilobytes. Across all streams of a profile,
//! the buffers of inbound requests being read are charged to one
//! [`InflightBudget`] (the codec's, [`DEFAULT_INFLIGHT_BYTES`] = 64 MiB by
//! default): a read reserves from it before its buffer grows and releases
//! everything when [`EnvelopeCodec`]'s `read_request` returns, fails or is
//! dropped. A read that cannot reserve fails at once ("profile busy"), its
//! stream is reset and [`InflightBudget::refused`] counts it; the sender
//! retries later. A request read whole is charged again to the same
//! budget ([`InflightBudget::hold`]) while it waits for the profile's
//! engine, until its acknowledgements are sent, so requests queued for a
//! slow disk count too; one that does not fit is dropped unanswered and
//! counted the same way. The same budget holds at most [`DEFAULT_INFLIGHT_STREAMS`]
//! frames being read at once (each connection also has at most 16 streams,
//! each peer 4 connections). Without the budget, 1024 connections × 16
//! streams × 4 MiB could be held. Responses are at most [`MAX_RESPONSE_BYTES`] and are not
//! charged.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
/// Default [`InflightBudget`] of a profile: 64 MiB, room for 16 full
/// requests ([`MAX_REQUEST_BYTES`]) being read at once.
pub const DEFAULT_INFLIGHT_BYTES: usize = 16 * MAX_REQUEST_BYTES;
/// Default number of inbound request frames a profile reads at once, over
/// all its connections (a connection has at most 16 streams, a peer 4
/// connections).
pub const DEFAULT_INFLIGHT_STREAMS: usize = 256;

/// The error text of a read refused because the budget is exhausted.
const BUSY: &str = "profile busy: inbound bytes in flight at the limit";
/// The error text of a read refused because every frame slot is taken.
const BUSY_STREAMS: &str = "profile busy: inbound requests being read at the limit";

/// Bytes that inbound request frames may hold in memory at once, shared by
/// every stream of a profile. Cheap to clone: clones share one budget.
#[derive(Clone, Debug)]
pub struct InflightBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    capacity: usize,
    in_use: AtomicUsize,
    max_streams: usize,
    streams: AtomicUsize,
    refused: AtomicU64,
}

impl InflightBudget {
    /// A budget of `capacity` bytes and [`DEFAULT_INFLIGHT_STREAMS`] frames.
    pub fn new(capacity: usize) -> Self {
        InflightBudget::with_streams(capacity, DEFAULT_INFLIGHT_STREAMS)
    }

    /// A budget of `capacity` bytes and `max_streams` frames read at once.
    pub fn with_streams(capacity: usize, max_streams: usize) -> Self {
        InflightBudget {
            inner: Arc::new(BudgetInner {
                capacity,
                in_use: AtomicUsize::new(0),
                max_streams,
                streams: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Frames being read now.
    pub fn streams(&self) -> usize {
        self.inner.streams.load(Ordering::Acquire)
    }

    /// The most bytes that may be reserved at once.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes reserved now by frames being read.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Acquire)
    }

    /// Frames refused so far because the bytes or the frame slots were
    /// exhausted.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Reserves `n` bytes if they fit under the capacity.
    fn try_reserve(&self, n: usize) -> bool {
        let capacity = self.inner.capacity;
        self.inner
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| cur.checked_add(n).filter(|&v| v <= capacity))
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.inner.in_use.fetch_sub(n, Ordering::AcqRel);
    }

    /// Holds `bytes` of the budget for a request that has been read and
    /// waits for the engine (the profile's loop holds it until the
    /// request's acknowledgements are sent); `None`, counted as refused,
    /// when they do not fit.
    pub fn hold(&self, bytes: usize) -> Option<Held> {
        if self.try_reserve(bytes) {
            Some(Held { budget: self.clone(), bytes })
        } else {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Takes a frame slot if one is free.
    fn try_stream(&self) -> bool {
        let max = self.inner.max_streams;
        self.inner
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| (cur < max).then_some(cur + 1))
            .is_ok()
    }
}

impl Default for InflightBudget {
    /// A budget of [`DEFAULT_INFLIGHT_BYTES`].
    fn default() -> Self {
        InflightBudget::new(DEFAULT_INFLIGHT_BYTES)
    }
}

/// Bytes of a budget held by a request waiting for the engine
/// ([`InflightBudget::hold`]); released when dropped.
#[derive(Debug)]
pub struct Held {
    budget: InflightBudget,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// What one frame read holds of a budget; dropping it (on every exit path,
/// including a dropped read future) releases it.
#[derive(Debug)]
pub(crate) struct Reservation<'a> {
    budget: Option<&'a InflightBudget>,
    held: usize,
    /// Holds one of the budget's frame slots.
    slot: bool,
}

impl<'a> Reservation<'a> {
    /// Takes a frame slot of `budget` (none without a budget); fails with
    /// the "profile busy" error when every slot is taken.
    fn new(budget: Option<&'a InflightBudget>) -> io::Result<Self> {
        if let Some(b) = budget
            && !b.try_stream()
        {
            b.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::other(BUSY_STREAMS));
        }
        Ok(Reservation { budget, held: 0, slot: budget.is_some() })
    }

    /// Holds at least `total` bytes, reserving the difference; without a
    /// budget, always succeeds. A refusal is counted once per frame (the
    /// read ends with it).
    fn grow_to(&mut self, total: usize) -> io::Result<()> {
        let Some(budget) = self.budget else { return Ok(()) };
        let more = total.saturating_sub(self.held);
        if more == 0 {
            return Ok(());
        }
        if !budget.try_reserve(more) {
            budget.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::other(BUSY));
        }
        self.held += more;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.budget
            && self.held > 0
        {
            budget.release(self.held);
        }
        if let Some(budget) = self.budget
            && self.slot
        {
            budget.inner.streams.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

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
    /// The sender is over one of the receiver's budgets; retry later.
    Busy,
    /// The receiver no longer holds this message's key (it was evicted, or
    /// the sender's state was rolled back) and never received the message:
    /// the sender should encrypt the message again under its current
    /// session (a decryption-failure receipt).
    KeyGone,
    /// It decrypted, but its content does not decode (text over the limit,
    /// not UTF-8, malformed, or a content type or version this receiver does
    /// not know): refused, not stored. Final.
    BadContent,
    /// A reason this version does not know (from a later one): transient.
    Unknown(u8),
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
            RejectReason::Busy => 7,
            RejectReason::KeyGone => 8,
            RejectReason::BadContent => 9,
            RejectReason::Unknown(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            0 => RejectReason::Malformed,
            1 => RejectReason::NoSession,
            2 => RejectReason::Undecryptable,
            3 => RejectReason::Blocked,
            4 => RejectReason::Storage,
            5 => RejectReason::UnknownPrekey,
            6 => RejectReason::IdentityMismatch,
            7 => RejectReason::Busy,
            8 => RejectReason::KeyGone,
            9 => RejectReason::BadContent,
            other => RejectReason::Unknown(other),
        }
    }

    /// True if sending the same envelope again might succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            RejectReason::Storage
                | RejectReason::UnknownPrekey
                | RejectReason::NoSession
                | RejectReason::Busy
                | RejectReason::Unknown(_)
        )
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
                Ack::Rejected(RejectReason::from_byte(reason))
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
/// with the mailbox protocol). Not charged to any budget.
pub(crate) async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    Ok(read_frame_inner(io, max, None).await?.0)
}

/// [`read_frame`], charging the body's buffer to `budget` as it grows. The
/// returned [`Reservation`] holds the charge until dropped; a read that
/// cannot reserve fails at once with the "profile busy" error.
pub(crate) async fn read_frame_budgeted<'b, T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    budget: &'b InflightBudget,
) -> io::Result<(Vec<u8>, Reservation<'b>)> {
    read_frame_inner(io, max, Some(budget)).await
}

async fn read_frame_inner<'b, T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    budget: Option<&'b InflightBudget>,
) -> io::Result<(Vec<u8>, Reservation<'b>)> {
    let mut reservation = Reservation::new(budget)?;
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid("frame over the size limit"));
    }
    // Grow with what arrives: a peer that declares 4 MiB and sends 10 bytes
    // costs one chunk, not 4 MiB. The buffer doubles (at least one chunk,
    // at most the declared length), so a frame costs at most twice what
    // arrived and a complete frame exactly its length; each growth is
    // reserved before it is allocated.
    let mut body: Vec<u8> = Vec::new();
    let mut filled = 0;
    while filled < len {
        if filled == body.len() {
            let target = (body.len() * 2).max(body.len() + FRAME_CHUNK).min(len);
            reservation.grow_to(target)?;
            body.reserve_exact(target - body.len());
            // The allocator may round up: charge what is really held.
            reservation.grow_to(body.capacity())?;
            body.resize(target, 0);
        }
        let n = io.read(&mut body[filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "frame shorter than its length"));
        }
        filled += n;
    }
    Ok((body, reservation))
}

/// The smallest step a frame reader's buffer grows by.
const FRAME_CHUNK: usize = 16 * 1024;

/// Writes one frame and closes the writing side of the stream.
pub(crate) async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    io.write_all(&(body.len() as u32).to_be_bytes()).await?;
    io.write_all(body).await?;
    io.close().await
}

/// The libp2p codec of [`PROTOCOL`]. Clones share one [`InflightBudget`]
/// (libp2p clones the codec for each connection): give each profile's
/// behaviour its own codec.
#[derive(Clone, Debug)]
pub struct EnvelopeCodec {
    budget: InflightBudget,
}

impl EnvelopeCodec {
    /// A codec whose inbound request reads are charged to `budget`.
    pub fn new(budget: InflightBudget) -> Self {
        EnvelopeCodec { budget }
    }

    /// The budget inbound request reads are charged to (for `in_use` and
    /// `refused`).
    pub fn budget(&self) -> &InflightBudget {
        &self.budget
    }
}

impl Default for EnvelopeCodec {
    /// A codec with a fresh budget of [`DEFAULT_INFLIGHT_BYTES`].
    fn default() -> Self {
        EnvelopeCodec::new(InflightBudget::default())
    }
}

impl libp2p::request_response::Codec for EnvelopeCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<Vec<u8>>;
    type Response = Vec<Ack>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Request> {
        // The reservation is held until the body is decoded and released
        // when this returns: the envelopes are bounded elsewhere from then.
        let (body, _held) = read_frame_budgeted(io, MAX_REQUEST_BYTES, &self.budget).await?;
        decode_request(&body)
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
        // A reason from a later version is read, and is transient.
        let acks = decode_response(&[0, 1, 2, 99]).unwrap();
        assert_eq!(acks, [Ack::Rejected(RejectReason::Unknown(99))]);
        assert!(RejectReason::Unknown(99).is_transient());
        assert_eq!(encode_response(&acks), [0, 1, 2, 99]);
        assert!(decode_response(&[0, 1, 2]).is_err(), "a reason is still required");
    }

    #[test]
    fn a_reservation_is_bounded_and_released_on_drop() {
        let budget = InflightBudget::new(100);
        let mut a = Reservation::new(Some(&budget)).unwrap();
        a.grow_to(60).unwrap();
        a.grow_to(50).unwrap(); // Already held.
        assert_eq!(budget.in_use(), 60);
        let mut b = Reservation::new(Some(&budget)).unwrap();
        b.grow_to(40).unwrap();
        let err = b.grow_to(41).unwrap_err();
        assert!(err.to_string().contains("profile busy"));
        assert_eq!((budget.in_use(), budget.refused()), (100, 1));
        drop(a);
        assert_eq!(budget.in_use(), 40);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        // Without a budget nothing is charged or refused.
        Reservation::new(None).unwrap().grow_to(usize::MAX).unwrap();
    }

    #[test]
    fn a_complete_frame_is_charged_exactly_its_length() {
        let budget = InflightBudget::new(MAX_REQUEST_BYTES);
        let len = MAX_REQUEST_BYTES - 12_345;
        let mut bytes = (len as u32).to_be_bytes().to_vec();
        bytes.resize(4 + len, 7);
        let mut io = futures::io::Cursor::new(bytes);
        let (body, held) =
            futures::executor::block_on(read_frame_budgeted(&mut io, MAX_REQUEST_BYTES, &budget)).unwrap();
        assert_eq!(body.len(), len);
        assert!(body.iter().all(|&b| b == 7));
        assert!(budget.in_use() >= len && budget.in_use() <= MAX_REQUEST_BYTES);
        drop(held);
        assert_eq!(budget.in_use(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
