//! The courier of one profile: the tasks that carry envelopes to contacts'
//! mailboxes and fetch the profile's own, each over a connection with a
//! fresh, throwaway libp2p identity ([`MailboxClient`]). Results come back to
//! the profile's event loop as [`CourierEvent`]s, where the engine handles
//! them: the network tasks never touch the store.
//!
//! Fetching follows *persist before acknowledge*: the task hands each page
//! to the loop and deletes on the host only the sequence numbers the engine
//! returns once the page is committed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kabar_storage::{ContactMailbox, OwnMailbox};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::engine::PeerKey;
use crate::mailbox::{DepositOutcome, Item, MailboxClient, MailboxError, OwnerKey};

/// How often a profile fetches its mailboxes (besides on start, when a
/// mailbox is added, and when it reconnects to a mailbox host).
pub const FETCH_EVERY: Duration = Duration::from_secs(30);
/// After a failed fetch round, the next comes this soon, doubling up to
/// [`FETCH_EVERY`].
pub const FETCH_RETRY_MIN: Duration = Duration::from_secs(2);
/// Dialling a mailbox host may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most deposits under way at once; more wait for the next failure or tick.
pub const MAX_DEPOSITS_IN_FLIGHT: usize = 16;
/// Envelopes per fetched page.
pub const FETCH_PAGE: u16 = 64;
/// Most pages per fetch round (the rest waits for the next round).
pub const MAX_PAGES: usize = 100;

/// The answer to a mailbox change: the profile's mailboxes, or why not.
pub type MailboxReply = oneshot::Sender<Result<Vec<String>, crate::rpc_error::RpcError>>;
/// The answer to "fetch now": `{"fetched": n, "errors": [..]}`.
pub type FetchReply = oneshot::Sender<serde_json::Value>;

/// Someone waiting for fresh fetch rounds of every mailbox.
struct FetchWaiter {
    /// Mailboxes whose fresh round has not ended yet.
    remaining: HashSet<String>,
    /// Mailboxes whose round was already under way when asked: that round
    /// does not count (it may have started before what they wait for).
    stale: HashSet<String>,
    fetched: usize,
    errors: Vec<String>,
    reply: FetchReply,
}

/// What the courier's tasks report to the profile's loop.
pub enum CourierEvent {
    /// A deposit finished.
    Deposited {
        /// Recipient.
        peer: PeerKey,
        /// Its message ids.
        message_ids: Vec<[u8; 16]>,
        /// What the host said.
        result: Result<DepositOutcome, MailboxError>,
    },
    /// A page of our mailbox at `address`: commit it, then answer with the
    /// sequence numbers the host may delete.
    Page {
        /// The mailbox.
        address: String,
        /// Its envelopes.
        items: Vec<Item>,
        /// Where to answer.
        reply: oneshot::Sender<Vec<u64>>,
    },
    /// A fetch round ended (envelopes handed over, or why it stopped).
    Fetched {
        /// The mailbox.
        address: String,
        /// How many envelopes it handed over.
        result: Result<usize, MailboxError>,
    },
    /// A mailbox registration finished.
    Registered {
        /// The new mailbox.
        mailbox: OwnMailbox,
        /// What the host said.
        result: Result<(), MailboxError>,
        /// The caller waiting for it.
        reply: MailboxReply,
    },
}

/// One of our mailboxes as `node info` and `mailbox.list` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MailboxState {
    /// The host (multiaddr with `/p2p/`).
    pub address: String,
    /// When the last fetch round ended, Unix ms (0: not yet).
    pub last_fetch_ms: u64,
    /// Why it failed, if it did.
    pub last_error: Option<String>,
    /// Envelopes fetched since the profile started.
    pub fetched: u64,
}

/// The courier of one profile.
pub struct Courier {
    tx: mpsc::Sender<CourierEvent>,
    deposits: usize,
    fetching: HashSet<String>,
    next_fetch: Instant,
    hosts: HashMap<PeerId, String>,
    states: Vec<MailboxState>,
    deposited: u64,
    fetch_retry: Duration,
    waiters: Vec<FetchWaiter>,
}

fn spawn_reporting(tx: mpsc::Sender<CourierEvent>, work: impl Future<Output = CourierEvent> + Send + 'static) {
    tokio::spawn(async move {
        let event = work.await;
        let _ = tx.send(event).await;
    });
}

impl Courier {
    /// A courier and the receiver of its events (bounded).
    pub fn new() -> (Self, mpsc::Receiver<CourierEvent>) {
        let (tx, rx) = mpsc::channel(64);
        let courier = Courier {
            tx,
            deposits: 0,
            fetching: HashSet::new(),
            next_fetch: Instant::now(),
            hosts: HashMap::new(),
            states: Vec::new(),
            deposited: 0,
            fetch_retry: FETCH_RETRY_MIN,
            waiters: Vec::new(),
        };
        (courier, rx)
    }

    /// Our mailboxes changed (or the profile started): remember their hosts.
    pub fn set_mailboxes(&mut self, own: &[OwnMailbox]) {
        self.hosts = own
            .iter()
            .filter_map(|m| {
                let addr: Multiaddr = m.address.parse().ok()?;
                Some((crate::network::relay_peer(&addr)?, m.address.clone()))
            })
            .collect();
        let mut states = Vec::with_capacity(own.len());
        for m in own {
            states.push(
                self.states
                    .iter()
                    .find(|s| s.address == m.address)
                    .cloned()
                    .unwrap_or_else(|| MailboxState { address: m.address.clone(), ..MailboxState::default() }),
            );
        }
        self.states = states;
        // Waiters stop waiting for mailboxes that are gone.
        for w in &mut self.waiters {
            w.remaining.retain(|a| own.iter().any(|m| &m.address == a));
            w.stale.retain(|a| own.iter().any(|m| &m.address == a));
        }
        self.answer_done();
    }

    /// Our mailboxes, for the profile's status.
    pub fn states(&self) -> &[MailboxState] {
        &self.states
    }

    /// Deposits envelopes in a contact's mailbox. When too many deposits are
    /// under way, it fails at once (the engine tries again later).
    pub fn deposit(
        &mut self,
        peer: PeerKey,
        mailbox: ContactMailbox,
        message_ids: Vec<[u8; 16]>,
        envelopes: Vec<Vec<u8>>,
    ) {
        let cap = crate::offline::capability(&mailbox);
        let address = mailbox.address.parse::<Multiaddr>();
        let busy = self.deposits >= MAX_DEPOSITS_IN_FLIGHT;
        self.deposits += 1;
        spawn_reporting(self.tx.clone(), async move {
            let result = async {
                if busy {
                    return Err(MailboxError::Dial("too many deposits under way".into()));
                }
                let cap = cap.ok_or_else(|| MailboxError::Protocol("a malformed capability".into()))?;
                let address = address.map_err(|e| MailboxError::Dial(e.to_string()))?;
                let mut client = MailboxClient::connect(&address, CONNECT_TIMEOUT).await?;
                client.deposit(&cap, &envelopes).await
            }
            .await;
            tracing::debug!(envelopes = envelopes.len(), ?result, "deposit done");
            CourierEvent::Deposited { peer, message_ids, result }
        });
    }

    /// A deposit reported back; `stored` envelopes were taken.
    pub fn deposit_done(&mut self, stored: usize) {
        self.deposits = self.deposits.saturating_sub(1);
        self.deposited += stored as u64;
    }

    /// Envelopes this profile deposited in contacts' mailboxes since it started.
    pub fn deposited(&self) -> u64 {
        self.deposited
    }

    /// Registers a new mailbox: creates it on the host and revokes the tags
    /// of blocked contacts there.
    pub fn register(&mut self, mailbox: OwnMailbox, revoke: Vec<[u8; 16]>, reply: MailboxReply) {
        spawn_reporting(self.tx.clone(), async move {
            let key = OwnerKey::from_bytes(&mailbox.key);
            let address = mailbox.address.clone();
            let result = async {
                let address = address.parse::<Multiaddr>().map_err(|e| MailboxError::Dial(e.to_string()))?;
                let mut client = MailboxClient::connect(&address, CONNECT_TIMEOUT).await?;
                client.register(&key, crate::network::now_ms()).await?;
                for tag in revoke {
                    client.revoke(&key, tag, true, crate::network::now_ms()).await?;
                }
                Ok(())
            }
            .await;
            CourierEvent::Registered { mailbox, result, reply }
        });
    }

    /// Deletes a mailbox on its host (best effort: an unreachable host drops
    /// it after its time to live).
    pub fn unregister(&self, mailbox: OwnMailbox) {
        tokio::spawn(async move {
            let key = OwnerKey::from_bytes(&mailbox.key);
            let result = async {
                let address = mailbox.address.parse::<Multiaddr>().map_err(|e| MailboxError::Dial(e.to_string()))?;
                let mut client = MailboxClient::connect(&address, CONNECT_TIMEOUT).await?;
                client.unregister(&key, crate::network::now_ms()).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not delete the mailbox on its host");
            }
        });
    }

    /// Revokes or restores a tag in one of our mailboxes (best effort,
    /// logged; registering a mailbox revokes every blocked contact's tag).
    pub fn revoke(&self, mailbox: OwnMailbox, tag: [u8; 16], revoked: bool) {
        tokio::spawn(async move {
            let key = OwnerKey::from_bytes(&mailbox.key);
            let result = async {
                let address = mailbox.address.parse::<Multiaddr>().map_err(|e| MailboxError::Dial(e.to_string()))?;
                let mut client = MailboxClient::connect(&address, CONNECT_TIMEOUT).await?;
                client.revoke(&key, tag, revoked, crate::network::now_ms()).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not change a deposit tag on the mailbox host");
            }
        });
    }

    /// Fetches every mailbox in `own` not being fetched now.
    pub fn fetch_all(&mut self, own: &[OwnMailbox]) {
        self.next_fetch = Instant::now() + FETCH_EVERY;
        for m in own {
            self.fetch(m);
        }
    }

    /// Fetches every mailbox now and answers `reply` once a round that
    /// started after this call has ended for each (at most 16 waiting).
    pub fn fetch_now(&mut self, own: &[OwnMailbox], reply: FetchReply) {
        if own.is_empty() || self.waiters.len() >= 16 {
            let error = if own.is_empty() { "no mailboxes" } else { "too many fetches waiting" };
            let _ = reply.send(serde_json::json!({"fetched": 0, "errors": [error]}));
            return;
        }
        let remaining: HashSet<String> = own.iter().map(|m| m.address.clone()).collect();
        let stale = remaining.iter().filter(|a| self.fetching.contains(*a)).cloned().collect();
        self.waiters.push(FetchWaiter { remaining, stale, fetched: 0, errors: Vec::new(), reply });
        self.fetch_all(own);
    }

    /// Fetches our mailbox at `address` (one of `own`) now, unless it is
    /// being fetched; the periodic schedule of the others is left alone.
    pub fn fetch_mailbox(&mut self, own: &[OwnMailbox], address: &str) {
        if let Some(m) = own.iter().find(|m| m.address == address) {
            self.fetch(m);
        }
    }

    /// True when the periodic fetch is due.
    pub fn fetch_due(&self) -> bool {
        Instant::now() >= self.next_fetch
    }

    /// The mailbox hosted by `peer`, if any (we just connected to it).
    pub fn hosted_by(&self, peer: &PeerId) -> Option<&String> {
        self.hosts.get(peer)
    }

    fn fetch(&mut self, own: &OwnMailbox) {
        if !self.fetching.insert(own.address.clone()) {
            return;
        }
        let tx = self.tx.clone();
        let address = own.address.clone();
        let key = OwnerKey::from_bytes(&own.key);
        spawn_reporting(self.tx.clone(), async move {
            let result = fetch_round(&address, &key, &tx).await;
            CourierEvent::Fetched { address, result }
        });
    }

    /// A fetch round ended. A failed one is tried again soon (the host may
    /// be restarting), backing off. Returns true if a waiter needs a fresh
    /// round of this mailbox (start it with [`Courier::fetch_all`]).
    pub fn fetched(&mut self, address: &str, result: &Result<usize, MailboxError>) -> bool {
        self.fetching.remove(address);
        let mut again = false;
        for w in &mut self.waiters {
            if w.stale.remove(address) {
                again = true;
            } else if w.remaining.remove(address) {
                match result {
                    Ok(n) => w.fetched += n,
                    Err(e) => w.errors.push(format!("{address}: {e}")),
                }
            }
        }
        self.answer_done();
        if result.is_err() {
            self.next_fetch = self.next_fetch.min(Instant::now() + self.fetch_retry);
            self.fetch_retry = (self.fetch_retry * 2).min(FETCH_EVERY);
        } else {
            self.fetch_retry = FETCH_RETRY_MIN;
        }
        if let Some(state) = self.states.iter_mut().find(|s| s.address == address) {
            state.last_fetch_ms = crate::network::now_ms();
            match result {
                Ok(n) => {
                    state.fetched += *n as u64;
                    state.last_error = None;
                }
                Err(e) => state.last_error = Some(e.to_string()),
            }
        }
        again
    }

    /// Answers the waiters that wait for nothing any more.
    fn answer_done(&mut self) {
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|w| w.remaining.is_empty());
        self.waiters = waiting;
        for w in done {
            let _ = w.reply.send(serde_json::json!({"fetched": w.fetched, "errors": w.errors}));
        }
    }
}

/// Fetches pages until the mailbox is empty (or [`MAX_PAGES`]): each page
/// goes to the loop, which commits it and answers with what may be deleted.
async fn fetch_round(address: &str, key: &OwnerKey, tx: &mpsc::Sender<CourierEvent>) -> Result<usize, MailboxError> {
    let addr = address.parse::<Multiaddr>().map_err(|e| MailboxError::Dial(e.to_string()))?;
    let mut client = MailboxClient::connect(&addr, CONNECT_TIMEOUT).await?;
    let (mut after, mut total) = (0u64, 0usize);
    for _ in 0..MAX_PAGES {
        let (items, more) = client.fetch(key, after, FETCH_PAGE, crate::network::now_ms()).await?;
        let Some(last) = items.last().map(|i| i.seq) else { break };
        total += items.len();
        let (reply, answer) = oneshot::channel();
        let page = CourierEvent::Page { address: address.to_string(), items, reply };
        if tx.send(page).await.is_err() {
            break; // the profile stopped
        }
        let Ok(deletable) = answer.await else { break };
        for chunk in deletable.chunks(1024) {
            client.delete(key, chunk, crate::network::now_ms()).await?;
        }
        after = last;
        if !more {
            break;
        }
    }
    Ok(total)
}
