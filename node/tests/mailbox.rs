//! A service node hosting mailboxes on 127.0.0.1, driven by
//! `MailboxClient`s over real TCP connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kabar_node::mailbox::{Capability, MailboxClient, MailboxError, MailboxLimits, OwnerKey, Status};
use kabar_node::service::{ServiceConfig, ServiceNode};

const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn service(dir: &std::path::Path, limits: MailboxLimits) -> (ServiceNode, libp2p::Multiaddr) {
    let mut config = ServiceConfig::new(dir.to_path_buf());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mailbox = Some(limits);
    let node = ServiceNode::start(config).await.unwrap();
    let addresses = tokio::time::timeout(WAIT, node.wait_listening(1)).await.unwrap();
    assert!(node.status().mailbox);
    (node, addresses[0].parse().unwrap())
}

fn refused<T: std::fmt::Debug>(r: Result<T, MailboxError>) -> Status {
    match r {
        Err(MailboxError::Refused(status)) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_senders_use_a_mailbox_over_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let limits = MailboxLimits { max_count: 5, ..Default::default() };
    let (node, address) = service(dir.path(), limits).await;

    let key = OwnerKey::generate(&mut rand::rng());
    let mut owner = MailboxClient::connect(&address, WAIT).await.unwrap();
    assert_eq!(owner.host(), node.peer_id());
    owner.register(&key, now_ms()).await.unwrap();
    owner.register(&key, now_ms()).await.unwrap();
    // A request signed with a clock 11 minutes off.
    assert_eq!(refused(owner.register(&key, now_ms() - 11 * 60 * 1000).await), Status::Stale);

    // Two senders, each on its own throwaway identity.
    let alice = key.capability([1; 16]);
    let bob = key.capability([2; 16]);
    let mut sender = MailboxClient::connect(&address, WAIT).await.unwrap();
    let mut other = MailboxClient::connect(&address, WAIT).await.unwrap();
    assert_ne!(sender.local_peer_id(), other.local_peer_id());
    assert_ne!(sender.local_peer_id(), owner.local_peer_id());
    let out = sender.deposit(&alice, &[b"sealed 1".to_vec(), b"sealed 2".to_vec()]).await.unwrap();
    assert_eq!((out.accepted, out.status), (2, Status::Ok));
    let out = other.deposit(&bob, &[b"sealed 3".to_vec()]).await.unwrap();
    assert_eq!((out.accepted, out.status), (1, Status::Ok));

    let (items, more) = owner.fetch(&key, 0, 100, now_ms()).await.unwrap();
    assert!(!more);
    let bodies: Vec<_> = items.iter().map(|i| i.envelope.as_slice()).collect();
    assert_eq!(bodies, [&b"sealed 1"[..], b"sealed 2", b"sealed 3"]);
    assert_eq!(items[2].tag, [2; 16]);
    assert!(items.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(owner.delete(&key, &[items[0].seq, items[0].seq], now_ms()).await.unwrap(), 1);
    let (after, _) = owner.fetch(&key, 0, 100, now_ms()).await.unwrap();
    assert_eq!(after.len(), 2);
    let (page, more) = owner.fetch(&key, 0, 1, now_ms()).await.unwrap();
    assert_eq!((page.len(), more), (1, true));

    // A stranger has no mailbox here, and cannot forge a capability.
    let stranger = OwnerKey::generate(&mut rand::rng());
    let mut thief = MailboxClient::connect(&address, WAIT).await.unwrap();
    assert_eq!(refused(thief.fetch(&stranger, 0, 10, now_ms()).await), Status::UnknownMailbox);
    assert_eq!(refused(thief.delete(&stranger, &[items[1].seq], now_ms()).await), Status::UnknownMailbox);
    let forged = Capability { mailbox: key.mailbox_id(), ..stranger.capability([1; 16]) };
    assert!(!forged.verify());
    assert_eq!(refused(thief.deposit(&forged, &[b"spam".to_vec()]).await), Status::BadSignature);

    // A revoked tag is refused until restored.
    owner.revoke(&key, [2; 16], true, now_ms()).await.unwrap();
    assert_eq!(refused(other.deposit(&bob, &[b"again".to_vec()]).await), Status::Revoked);
    let out = sender.deposit(&alice, &[b"sealed 4".to_vec()]).await.unwrap();
    assert_eq!(out.status, Status::Ok);
    owner.revoke(&key, [2; 16], false, now_ms()).await.unwrap();

    // Quota: 3 held, 5 at most: 2 of 4 are stored.
    let out = other.deposit(&bob, &vec![b"x".to_vec(); 4]).await.unwrap();
    assert_eq!((out.accepted, out.status), (2, Status::QuotaFull));
    assert!(out.status.is_transient());
    let status = owner.status(&key, now_ms()).await.unwrap();
    assert_eq!((status.count, status.max_count), (5, 5));

    owner.unregister(&key, now_ms()).await.unwrap();
    assert_eq!(refused(owner.status(&key, now_ms()).await), Status::UnknownMailbox);
    assert_eq!(refused(sender.deposit(&alice, &[b"late".to_vec()]).await), Status::UnknownMailbox);
    drop((owner, sender, other, thief));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_survive_a_restart_of_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let key = OwnerKey::generate(&mut rand::rng());
    let cap = key.capability([7; 16]);
    let first_seq = {
        let (node, address) = service(dir.path(), MailboxLimits::default()).await;
        let mut client = MailboxClient::connect(&address, WAIT).await.unwrap();
        client.register(&key, now_ms()).await.unwrap();
        client.deposit(&cap, &[b"kept".to_vec()]).await.unwrap();
        let (items, _) = client.fetch(&key, 0, 10, now_ms()).await.unwrap();
        drop(client);
        node.shutdown().await;
        items[0].seq
    };
    let (node, address) = service(dir.path(), MailboxLimits::default()).await;
    let mut client = MailboxClient::connect(&address, WAIT).await.unwrap();
    client.deposit(&cap, &[b"new".to_vec()]).await.unwrap();
    let (items, _) = client.fetch(&key, 0, 10, now_ms()).await.unwrap();
    assert_eq!(items[0].envelope, b"kept");
    assert_eq!(items[1].seq, first_seq + 1);
    drop(client);
    node.shutdown().await;
}

#[tokio::test]
async fn a_service_without_mailboxes_does_not_speak_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServiceConfig::new(dir.path().to_path_buf());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let node = ServiceNode::start(config).await.unwrap();
    let address: libp2p::Multiaddr = node.wait_listening(1).await[0].parse().unwrap();
    assert!(!node.status().mailbox);
    let key = OwnerKey::generate(&mut rand::rng());
    let mut client = MailboxClient::connect(&address, WAIT).await.unwrap();
    let err = client.register(&key, now_ms()).await.unwrap_err();
    assert!(matches!(err, MailboxError::Protocol(_)), "{err:?}");
    drop(client);
    node.shutdown().await;
}
