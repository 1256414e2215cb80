//! Which connections stay open when idle: those to the peers a profile is
//! in a conversation with.
//!
//! A profile meets many peers it has nothing to say to (DHT queries walk
//! the network, relays, peers dialling it) and a few it talks with. Each
//! open connection costs about 70 KiB of memory (noise and yamux buffers,
//! measured in docs/BENCHMARKS.md), and behind NATs a conversation's
//! connection is dear to rebuild (a relay circuit, then hole punching). So
//! connections close after the swarm's short idle timeout
//! (`network::IDLE_TIMEOUT`), except to a peer envelopes went to or came
//! from in the last [`KEEP`]: those are kept open until then.
//!
//! The loop calls [`Behaviour::touch`] when envelopes go to or come from a
//! peer, and [`Behaviour::expire`] on its tick. At most [`MAX_KEPT`] peers
//! are kept; past it the one touched longest ago is let go first (it falls
//! back to the idle timeout; nothing else changes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// How long a conversation's connection stays open after its last envelope.
pub const KEEP: Duration = Duration::from_secs(300);
/// Most peers kept at once.
pub const MAX_KEPT: usize = 256;

/// Keeps the connections to recent conversation peers open.
#[derive(Default)]
pub struct Behaviour {
    /// Peers kept, until when.
    kept: HashMap<PeerId, Instant>,
    /// Open connections per peer (only peers with one).
    connections: HashMap<PeerId, HashSet<ConnectionId>>,
    /// Handler notifications to hand to the swarm.
    pending: VecDeque<ToSwarm<Infallible, bool>>,
}

impl Behaviour {
    /// Envelopes went to or came from `peer` now: keep its connections open
    /// for [`KEEP`].
    pub fn touch(&mut self, peer: PeerId, now: Instant) {
        let newly = self.kept.insert(peer, now + KEEP).is_none();
        if !newly {
            return;
        }
        if self.kept.len() > MAX_KEPT
            && let Some(oldest) = self.kept.iter().filter(|(p, _)| **p != peer).min_by_key(|(_, until)| **until)
        {
            let oldest = *oldest.0;
            self.kept.remove(&oldest);
            self.notify(oldest, false);
        }
        self.notify(peer, true);
    }

    /// Lets go of the peers whose time is up (call it on a tick).
    pub fn expire(&mut self, now: Instant) {
        let done: Vec<PeerId> = self.kept.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for peer in done {
            self.kept.remove(&peer);
            self.notify(peer, false);
        }
    }

    /// Whether `peer`'s connections are kept open now.
    pub fn is_kept(&self, peer: &PeerId) -> bool {
        self.kept.contains_key(peer)
    }

    fn notify(&mut self, peer: PeerId, keep: bool) {
        for connection in self.connections.get(&peer).into_iter().flatten() {
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*connection),
                event: keep,
            });
        }
    }

    fn established(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().insert(connection);
        Handler { keep: self.kept.contains_key(&peer) }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.established(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.established(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && let Some(set) = self.connections.get_mut(&closed.peer_id)
        {
            set.remove(&closed.connection_id);
            if set.is_empty() {
                self.connections.remove(&closed.peer_id);
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// One connection's part: no protocol, only whether to keep it open.
pub struct Handler {
    keep: bool,
}

impl libp2p::swarm::ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(n) => match n.protocol {},
            ConnectionEvent::FullyNegotiatedOutbound(n) => match n.protocol {},
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_peers_are_bounded_and_expire() {
        let mut b = Behaviour::default();
        let t0 = Instant::now();
        let first = PeerId::random();
        b.touch(first, t0);
        for i in 0..MAX_KEPT {
            b.touch(PeerId::random(), t0 + Duration::from_millis(1 + i as u64));
        }
        assert_eq!(b.kept.len(), MAX_KEPT);
        assert!(!b.is_kept(&first), "the peer touched longest ago is let go first");
        b.expire(t0 + KEEP + Duration::from_millis(MAX_KEPT as u64));
        assert!(b.kept.is_empty());
    }

    #[test]
    fn a_connection_is_told_when_its_peer_is_kept_and_let_go() {
        let mut b = Behaviour::default();
        let peer = PeerId::random();
        let handler = b.established(peer, ConnectionId::new_unchecked(1));
        assert!(!handler.keep);
        let t0 = Instant::now();
        b.touch(peer, t0);
        b.touch(peer, t0 + Duration::from_secs(1));
        let events: Vec<_> = b.pending.drain(..).collect();
        assert_eq!(events.len(), 1, "touching a kept peer again notifies nothing");
        assert!(matches!(events[0], ToSwarm::NotifyHandler { event: true, .. }));
        assert!(b.established(peer, ConnectionId::new_unchecked(2)).keep, "a new connection to a kept peer is kept");
        b.expire(t0 + KEEP + Duration::from_secs(1));
        let events: Vec<_> = b.pending.drain(..).collect();
        assert_eq!(events.len(), 2, "each connection is told");
        assert!(events.iter().all(|e| matches!(e, ToSwarm::NotifyHandler { event: false, .. })));
    }
}
