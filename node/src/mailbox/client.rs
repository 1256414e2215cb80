//! [`MailboxClient`]: one connection to a mailbox host from a fresh random
//! libp2p identity, so the host cannot link it to a profile or to any other
//! connection. Dropping the client drops its swarm and closes the connection.
//!
//! The calls take `&mut self` and drive the client's own swarm; they are safe
//! to cancel (a cancelled call's response is ignored by later calls), but a
//! cancelled deposit may or may not have been stored.

use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, noise, tcp, yamux};

use super::wire::{
    DEPOSIT_OVERHEAD, MAX_DEPOSIT, MAX_FETCH, MAX_REQUEST_BYTES, MailboxCodec, OwnerAuth, Request, Response,
};
use super::{Capability, Item, MailboxError, MailboxStatus, OwnerKey, PROTOCOL, Status, owner_message};

/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepositOutcome {
    /// How many envelopes (a prefix, in order) were stored durably.
    pub accepted: usize,
    /// OK if all were; otherwise why the rest were not (e.g. QuotaFull).
    pub status: Status,
}

/// A connection to one mailbox host.
pub struct MailboxClient {
    swarm: Swarm<request_response::Behaviour<MailboxCodec>>,
    host: PeerId,
    address: Multiaddr,
}

impl std::fmt::Debug for MailboxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxClient").field("host", &self.host).finish_non_exhaustive()
    }
}

impl MailboxClient {
    /// Dials `host` (a multiaddr ending in `/p2p/<host PeerId>`) with a
    /// fresh random libp2p identity (TCP or QUIC, Noise, Yamux), within
    /// `timeout`.
    pub async fn connect(host: &Multiaddr, timeout: Duration) -> Result<Self, MailboxError> {
        let Some(Protocol::P2p(host_id)) = host.iter().last() else {
            return Err(MailboxError::Dial(format!("{host} does not end in /p2p/<PeerId>")));
        };
        let dial = |e: &dyn std::fmt::Display| MailboxError::Dial(e.to_string());
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| dial(&e))?
            .with_quic()
            .with_dns()
            .map_err(|e| dial(&e))?
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    MailboxCodec::default(),
                    [(PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default()
                        .with_request_timeout(CALL_TIMEOUT)
                        .with_max_concurrent_streams(8),
                )
            })
            .map_err(|e| dial(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm.dial(host.clone()).map_err(|e| dial(&e))?;
        let wait = async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == host_id => return Ok(()),
                    SwarmEvent::OutgoingConnectionError { error, .. } => return Err(dial(&error)),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| MailboxError::Timeout)??;
        Ok(MailboxClient { swarm, host: host_id, address: host.clone() })
    }

    /// The throwaway PeerId of this connection.
    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The host's PeerId.
    pub fn host(&self) -> PeerId {
        self.host
    }

    /// Creates the mailbox of `key` (idempotent).
    pub async fn register(&mut self, key: &OwnerKey, now_ms: u64) -> Result<(), MailboxError> {
        let req = Request::Register { mailbox: key.mailbox_id(), auth: auth(now_ms) };
        self.owner_call(key, req).await.and_then(expect_done)
    }

    /// Deposits envelopes, in requests of at most 64 envelopes and 4 MiB,
    /// stopping at the first refusal. `accepted` counts the envelopes (a
    /// prefix, in order) stored durably; `status` is OK when all were.
    /// A refusal before anything was stored is an error (`Refused`), except
    /// QuotaFull, which is an outcome with `accepted` 0.
    pub async fn deposit(&mut self, cap: &Capability, envelopes: &[Vec<u8>]) -> Result<DepositOutcome, MailboxError> {
        let mut accepted = 0;
        let mut rest = envelopes;
        while !rest.is_empty() {
            let mut n = 0;
            let mut size = DEPOSIT_OVERHEAD;
            while n < rest.len() && n < MAX_DEPOSIT && (n == 0 || size + 4 + rest[n].len() <= MAX_REQUEST_BYTES) {
                size += 4 + rest[n].len();
                n += 1;
            }
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let req = Request::Deposit {
                mailbox: cap.mailbox,
                tag: cap.tag,
                cap_sig: cap.signature,
                envelopes: batch.to_vec(),
            };
            match self.call(req).await? {
                Response::Deposited { status, accepted: n } => {
                    accepted += usize::from(n);
                    if status == Status::Ok && usize::from(n) == batch.len() {
                        continue;
                    }
                    if accepted == 0 && status != Status::QuotaFull {
                        return Err(MailboxError::Refused(status));
                    }
                    let status = if status == Status::Ok { Status::Storage } else { status };
                    return Ok(DepositOutcome { accepted, status });
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(DepositOutcome { accepted, status: Status::Ok })
    }

    /// Items with a seq above `after`, ascending, at most `max` (capped at
    /// 256) and 4 MiB; true if more are waiting.
    pub async fn fetch(
        &mut self,
        key: &OwnerKey,
        after: u64,
        max: u16,
        now_ms: u64,
    ) -> Result<(Vec<Item>, bool), MailboxError> {
        let max = max.clamp(1, MAX_FETCH);
        let req = Request::Fetch { mailbox: key.mailbox_id(), after, max, auth: auth(now_ms) };
        match self.owner_call(key, req).await? {
            Response::Fetched { more, items } => Ok((items, more)),
            other => Err(refused_or_unexpected(&other)),
        }
    }

    /// Deletes items by seq (unknown seqs are ignored); returns how many
    /// were deleted. More than 1,024 seqs go in several requests.
    pub async fn delete(&mut self, key: &OwnerKey, seqs: &[u64], now_ms: u64) -> Result<u16, MailboxError> {
        let mut deleted: u16 = 0;
        for chunk in seqs.chunks(super::wire::MAX_DELETE) {
            let req = Request::Delete { mailbox: key.mailbox_id(), seqs: chunk.to_vec(), auth: auth(now_ms) };
            match self.owner_call(key, req).await? {
                Response::Deleted { deleted: n } => deleted = deleted.saturating_add(n),
                other => return Err(refused_or_unexpected(&other)),
            }
        }
        Ok(deleted)
    }

    /// Revokes (`revoked` true) or restores a capability tag.
    pub async fn revoke(
        &mut self,
        key: &OwnerKey,
        tag: [u8; 16],
        revoked: bool,
        now_ms: u64,
    ) -> Result<(), MailboxError> {
        let req = Request::Revoke { mailbox: key.mailbox_id(), tag, revoked, auth: auth(now_ms) };
        self.owner_call(key, req).await.and_then(expect_done)
    }

    /// Deletes the mailbox, its items and revocations.
    pub async fn unregister(&mut self, key: &OwnerKey, now_ms: u64) -> Result<(), MailboxError> {
        let req = Request::Unregister { mailbox: key.mailbox_id(), auth: auth(now_ms) };
        self.owner_call(key, req).await.and_then(expect_done)
    }

    /// The mailbox's usage and limits.
    pub async fn status(&mut self, key: &OwnerKey, now_ms: u64) -> Result<MailboxStatus, MailboxError> {
        let req = Request::Status { mailbox: key.mailbox_id(), auth: auth(now_ms) };
        match self.owner_call(key, req).await? {
            Response::Status(s) => Ok(s),
            other => Err(refused_or_unexpected(&other)),
        }
    }

    /// Signs an owner request for this connection and sends it.
    async fn owner_call(&mut self, key: &OwnerKey, mut req: Request) -> Result<Response, MailboxError> {
        let unsigned = req.unsigned_body().ok_or_else(|| MailboxError::Protocol("request out of bounds".into()))?;
        let signature = key.sign(&owner_message(&self.host, &self.local_peer_id(), &unsigned));
        if let Some(auth) = req.auth_mut() {
            auth.signature = signature;
        }
        self.call(req).await
    }

    async fn call(&mut self, req: Request) -> Result<Response, MailboxError> {
        super::wire::encode_request(&req).map_err(|e| MailboxError::Protocol(e.to_string()))?;
        let id = self.swarm.behaviour_mut().send_request_with_addresses(&self.host, req, vec![self.address.clone()]);
        tokio::time::timeout(CALL_TIMEOUT, self.wait(id)).await.map_err(|_| MailboxError::Timeout)?
    }

    async fn wait(&mut self, id: OutboundRequestId) -> Result<Response, MailboxError> {
        loop {
            match self.swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                }) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, .. })
                    if request_id == id =>
                {
                    return Err(match error {
                        OutboundFailure::Timeout => MailboxError::Timeout,
                        OutboundFailure::DialFailure | OutboundFailure::ConnectionClosed => {
                            MailboxError::Dial(error.to_string())
                        }
                        other => MailboxError::Protocol(other.to_string()),
                    });
                }
                _ => {}
            }
        }
    }
}

fn auth(time_ms: u64) -> OwnerAuth {
    OwnerAuth { time_ms, signature: [0; 64] }
}

fn unexpected(res: &Response) -> MailboxError {
    MailboxError::Protocol(format!("unexpected answer (status {})", res.status()))
}

fn refused_or_unexpected(res: &Response) -> MailboxError {
    match res {
        Response::Done(status) if *status != Status::Ok => MailboxError::Refused(*status),
        other => unexpected(other),
    }
}

fn expect_done(res: Response) -> Result<(), MailboxError> {
    match res {
        Response::Done(Status::Ok) => Ok(()),
        other => Err(refused_or_unexpected(&other)),
    }
}
