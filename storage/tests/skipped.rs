//! Skipped message keys as rows of their own (schema 7): the session row
//! does not grow with them, a used key is gone with the commit of its
//! message, eviction keeps the bound, and keys of previous sessions still
//! decrypt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kabar_crypto::ratchet::{MAX_SKIP_PER_CHAIN, MAX_SKIPPED_TOTAL};
use kabar_crypto::{CryptoError, Envelope, IdentityKeyPair, PrekeyBundle, ProfileKind, Session};
use kabar_storage::*;

mod support;

const NOW: u64 = 1_700_000_000_000;

struct Setup {
    _dir: tempfile::TempDir,
    data: DataDir,
    store: Option<ProfileStore>,
    peer: IdentityKeyPair,
    bundle: PrekeyBundle,
    contact: ContactId,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataDir::create(dir.path(), b"pw", KdfParams::TESTNET).unwrap();
        let store = data.create_profile("home", ProfileKind::Personal, NOW / 1000, &mut rand::rng()).unwrap();
        let peer = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
        let public = peer.public();
        let (contact, _) = store
            .upsert_contact(Contact {
                peer_id: public.signing.to_vec(),
                identity: public,
                signed_prekey: None,
                one_time_prekey: None,
                addresses: vec![],
                display_name: "Alice".into(),
                verified: false,
                blocked: false,
                identity_change: None,
                added_at_ms: NOW,
                request: false,
            })
            .unwrap();
        let spk = store.current_signed_prekey().unwrap();
        let bundle = PrekeyBundle {
            identity: store.identity().unwrap().public(),
            signed_prekey: spk.public(),
            one_time_prekey: None,
        };
        Setup { _dir: dir, data, store: Some(store), peer, bundle, contact }
    }

    fn store(&self) -> &ProfileStore {
        self.store.as_ref().unwrap()
    }

    /// The peer starts a session; we accept its message 0.
    fn start(&self) -> Session {
        let mut theirs = Session::initiate(&self.peer, &self.bundle, &mut rand::rng()).unwrap();
        let first = theirs.encrypt(b"start", &mut rand::rng()).unwrap();
        assert_eq!(support::accept(self.store(), self.contact, &first, NOW), b"start");
        theirs
    }

    fn path(&self) -> std::path::PathBuf {
        self.store().path().to_path_buf()
    }

    /// `kabar store check` of the profile (closed meanwhile).
    fn healthy(&mut self) -> bool {
        drop(self.store.take());
        let report = self.data.check_profile("home").unwrap();
        assert!(report.healthy, "{report:#?}");
        self.store = Some(self.data.open_profile("home").unwrap());
        report.healthy
    }

    /// Runs `f` on the file with the store closed.
    fn closed<T>(&mut self, f: impl FnOnce(&std::path::Path) -> T) -> T {
        let path = self.path();
        drop(self.store.take());
        let out = f(&path);
        self.store = Some(self.data.open_profile("home").unwrap());
        out
    }
}

fn send(theirs: &mut Session, n: usize) -> Vec<Envelope> {
    (0..n).map(|i| theirs.encrypt(format!("m{i}").as_bytes(), &mut rand::rng()).unwrap()).collect()
}

#[test]
fn the_session_row_does_not_grow_with_a_thousand_skipped_keys() {
    let mut s = Setup::new();
    let mut theirs = s.start();
    let contact = s.contact;
    let empty = s.closed(|path| support::session_row_len(path, &contact));
    let envs = send(&mut theirs, 1_001);
    assert_eq!(support::receive(s.store(), s.contact, &envs[1_000], NOW).unwrap(), b"m1000");
    assert_eq!(s.store().session(&s.contact).unwrap().unwrap().current.skipped_keys(), 1_000);
    let (row, keys) = s.closed(|path| (support::session_row_len(path, &contact), support::rows(path, "skipped_keys")));
    assert_eq!(keys, 1_000);
    // Schema 6 sealed about 68 bytes per key into this row (68 KiB here).
    assert!(row <= empty + 16 && row < 1_500, "{row} bytes with 1,000 keys; {empty} with none");
    assert!(s.healthy());
}

#[test]
fn a_used_key_is_gone_with_its_commit_and_never_decrypts_twice() {
    let mut s = Setup::new();
    let mut theirs = s.start();
    let envs = send(&mut theirs, 6);
    // One request: 5 skips 0..4, then 2 uses its key before the commit,
    // and 2 again in the same request is a duplicate.
    let results = support::receive_all(s.store(), s.contact, &[envs[5].clone(), envs[2].clone(), envs[2].clone()], NOW);
    assert_eq!(results[0].as_deref(), Ok(&b"m5"[..]));
    assert_eq!(results[1].as_deref(), Ok(&b"m2"[..]));
    assert_eq!(results[2], Err(CryptoError::MessageKeyGone));
    assert_eq!(s.closed(|p| support::rows(p, "skipped_keys")), 4);
    assert_eq!(support::receive(s.store(), s.contact, &envs[0], NOW).unwrap(), b"m0");
    assert_eq!(s.closed(|p| (support::rows(p, "skipped_keys"), support::rows(p, "skipped_order"))), (3, 3));
    assert_eq!(support::receive(s.store(), s.contact, &envs[0], NOW), Err(CryptoError::MessageKeyGone));
    assert_eq!(s.store().session(&s.contact).unwrap().unwrap().current.skipped_keys(), 3);
    assert!(s.healthy());
}

#[test]
fn eviction_keeps_the_bound_and_drops_the_oldest_keys() {
    let mut s = Setup::new();
    let mut theirs = s.start();
    let per_chain = MAX_SKIP_PER_CHAIN as usize;
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let envs = send(&mut theirs, per_chain + 1);
        support::receive(s.store(), s.contact, &envs[per_chain], NOW).unwrap();
        firsts.push(envs[0].clone());
        // A reply moves the peer to a new chain.
        let state = s.store().session(&s.contact).unwrap().unwrap();
        let mut ours = Session::from_snapshot(state.current.clone()).unwrap();
        let reply = ours.encrypt(b"r", &mut rand::rng()).unwrap();
        let mut state = state;
        state.current = ours.snapshot();
        s.store()
            .commit_outgoing(
                &[OutgoingMessage {
                    contact: s.contact,
                    session: Some(state),
                    message: MessageRecord {
                        id: reply.message_id().0,
                        direction: Direction::Outgoing,
                        sent_at_ms: NOW,
                        received_at_ms: None,
                        status: MessageStatus::Queued,
                        body: b"r".to_vec(),
                    },
                    envelope: reply.encode(),
                }],
                NOW,
            )
            .unwrap();
        theirs.decrypt(&reply).unwrap();
    }
    assert_eq!(s.store().session(&s.contact).unwrap().unwrap().current.skipped_keys(), MAX_SKIPPED_TOTAL);
    assert_eq!(s.closed(|p| (support::rows(p, "skipped_keys"), support::rows(p, "skipped_order"))), (2_000, 2_000));
    // The first chain's keys were evicted; the second's and third's remain.
    assert_eq!(support::receive(s.store(), s.contact, &firsts[0], NOW), Err(CryptoError::MessageKeyGone));
    assert_eq!(support::receive(s.store(), s.contact, &firsts[1], NOW).unwrap(), b"m0");
    assert_eq!(support::receive(s.store(), s.contact, &firsts[2], NOW).unwrap(), b"m0");
    assert!(s.healthy());
}

#[test]
fn keys_of_previous_sessions_decrypt_and_leave_with_their_session() {
    let mut s = Setup::new();
    let mut first = s.start();
    let envs = send(&mut first, 4);
    support::receive(s.store(), s.contact, &envs[3], NOW).unwrap(); // skips 0..2
    // A second session from the same peer: the first becomes previous.
    let mut second = s.start();
    let later = send(&mut second, 3);
    support::receive(s.store(), s.contact, &later[2], NOW).unwrap(); // skips 0, 1
    assert_eq!(s.closed(|p| support::rows(p, "skipped_keys")), 5);
    // A late message of the first session: its key is in the store.
    assert_eq!(support::receive(s.store(), s.contact, &envs[1], NOW).unwrap(), b"m1");
    let state = s.store().session(&s.contact).unwrap().unwrap();
    assert_eq!((state.current.skipped_keys(), state.previous[0].skipped_keys()), (2, 2), "the first is current again");
    assert_eq!(support::receive(s.store(), s.contact, &later[0], NOW).unwrap(), b"m0");
    // Four more sessions push the first two out: their keys go with them.
    for _ in 0..4 {
        s.start();
    }
    assert_eq!(s.store().session(&s.contact).unwrap().unwrap().previous.len(), MAX_PREVIOUS_SESSIONS);
    assert_eq!(s.closed(|p| (support::rows(p, "skipped_keys"), support::rows(p, "skipped_order"))), (1, 1));
    s.store().forget_contact(&s.contact).unwrap();
    assert_eq!(s.closed(|p| support::rows(p, "skipped_keys")), 0);
    assert!(s.healthy());
}
