//! One rule for contact names, whichever call gives the name: adding a
//! card (`contact.add`) and accepting a message request under a new name
//! (`request.accept` with `rename`) both go through
//! `Engine::check_name_for`, so a name always names one contact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kabar_crypto::ProfileKind;
use kabar_node::content::Content;
use kabar_node::control::{RpcError, codes};
use kabar_node::engine::{Action, Engine, EngineConfig, EngineError};
use kabar_node::ops::NewContact;
use kabar_storage::{ContactId, DataDir, KdfParams};

const T0: u64 = 1_764_000_000_000;

struct Party {
    _tmp: tempfile::TempDir,
    engine: Engine,
}

impl Party {
    fn new(name: &str) -> Party {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = DataDir::create(tmp.path(), b"pw", KdfParams::TESTNET).unwrap();
        let store = dir.create_profile(name, ProfileKind::Personal, T0 / 1000, &mut rand::rng()).unwrap();
        let config = EngineConfig { prekey_wait_ms: 0, ..EngineConfig::default() };
        Party { _tmp: tmp, engine: Engine::new(store, config).unwrap() }
    }

    /// This party's card, to be filed under `name`.
    fn card(&self, name: &str) -> NewContact {
        let own = self.engine.own_card().unwrap();
        NewContact {
            identity: own.identity,
            signed_prekey: own.signed_prekey,
            name: name.to_string(),
            addresses: Vec::new(),
            mailboxes: own.mailboxes,
        }
    }

    /// Adds `other`'s card under `name`, as `contact.add` does.
    fn add(&mut self, other: &Party, name: &str) -> Result<ContactId, EngineError> {
        let (added, _) = self.engine.add_contact_card(other.card(name), T0)?;
        Ok(self.engine.store().contact_id(&added.contact.identity))
    }
}

/// Delivers what `actions` transmit from `from` to `to`.
fn deliver(from: &mut Party, to: &mut Party, actions: Vec<Action>) {
    let from_key = from.engine.peer_key();
    for action in actions {
        if let Action::Transmit { envelopes, .. } = action {
            to.engine.on_request(&from_key, &envelopes, T0, &mut rand::rng()).unwrap();
        }
    }
}

/// Bob, who knows Carol as "Carol", and has a message request from Alice
/// (who has Bob's card; Bob does not have hers). Returns Bob's id of Alice.
fn bob_with_a_request() -> (Party, Party, Party, ContactId) {
    let (mut alice, mut bob, carol) = (Party::new("alice"), Party::new("bob"), Party::new("carol"));
    bob.add(&carol, "Carol").unwrap();
    let alice_bob = alice.add(&bob, "Bob").unwrap();
    let (_, actions) = alice.engine.send(&alice_bob, Content::text("hi, it's Alice"), T0, &mut rand::rng()).unwrap();
    deliver(&mut alice, &mut bob, actions);
    let bob_alice = bob.engine.store().contact_id_for_key(&alice.engine.peer_key());
    assert!(bob.engine.store().contact(&bob_alice).unwrap().unwrap().request, "Alice's message is a request");
    (alice, bob, carol, bob_alice)
}

#[test]
fn accepting_a_request_under_another_contacts_name_is_refused_as_contact_add_refuses_it() {
    let (alice, mut bob, _carol, bob_alice) = bob_with_a_request();
    let before = bob.engine.store().contact(&bob_alice).unwrap().unwrap();

    // contact.add's answer to a name another contact has…
    let by_add = RpcError::from(bob.add(&alice, "Carol").unwrap_err());
    assert_eq!(by_add.code, codes::INVALID_VALUE, "{by_add:?}");
    // …is request.accept's answer to a rename to it.
    let by_accept = RpcError::from(bob.engine.accept_request(&bob_alice, Some("Carol".into())).unwrap_err());
    assert_eq!(by_accept.code, by_add.code, "{by_accept:?}");

    // Nothing changed: still a pending request under its old name, and
    // "Carol" still names Carol alone.
    let after = bob.engine.store().contact(&bob_alice).unwrap().unwrap();
    assert_eq!((after.display_name.as_str(), after.request), (before.display_name.as_str(), true));
    assert_eq!(bob.engine.store().strangers().unwrap().len(), 1);
    assert_eq!(bob.engine.guard_status().pending_strangers, 1);
    let named_carol: Vec<_> =
        bob.engine.contact_list().unwrap().into_iter().filter(|c| c.display_name == "Carol").collect();
    assert_eq!(named_carol.len(), 1);
    assert_ne!(named_carol[0].identity.signing, alice.engine.peer_key());
}

#[test]
fn both_calls_refuse_the_same_bad_names_and_accept_a_free_one() {
    let (alice, mut bob, _carol, bob_alice) = bob_with_a_request();
    for bad in ["", "   ", &"x".repeat(65)] {
        let by_add = RpcError::from(bob.add(&alice, bad).unwrap_err());
        let by_accept = RpcError::from(bob.engine.accept_request(&bob_alice, Some(bad.to_string())).unwrap_err());
        assert_eq!((by_add.code, by_accept.code), (codes::INVALID_VALUE, codes::INVALID_VALUE), "{bad:?}");
    }
    assert!(bob.engine.store().contact(&bob_alice).unwrap().unwrap().request, "a refused accept changes nothing");

    // Its own current name is not "another contact's".
    let own = bob.engine.store().contact(&bob_alice).unwrap().unwrap().display_name;
    bob.engine.check_name_for(&own, &bob_alice).unwrap();
    let accepted = bob.engine.accept_request(&bob_alice, Some("Alice".into())).unwrap();
    assert_eq!((accepted.display_name.as_str(), accepted.request), ("Alice", false));
    assert!(bob.engine.store().strangers().unwrap().is_empty());
    // And now "Alice" is taken for a card of someone else.
    let other = Party::new("mallory");
    assert_eq!(RpcError::from(bob.add(&other, "Alice").unwrap_err()).code, codes::INVALID_VALUE);
}
