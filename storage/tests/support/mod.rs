//! What the engine does with one received envelope, on the store alone:
//! load the sessions, look up the skipped key, decrypt (current session,
//! then previous ones), commit the session, the skipped-key changes and the
//! message in one transaction.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kabar_crypto::{CryptoError, Envelope, Session};
use kabar_storage::*;

/// Receives `envelope` from `contact`: `Ok(plaintext)` once committed.
pub(crate) fn receive(
    store: &ProfileStore,
    contact: ContactId,
    envelope: &Envelope,
    now: u64,
) -> Result<Vec<u8>, CryptoError> {
    receive_all(store, contact, std::slice::from_ref(envelope), now).remove(0)
}

/// Receives a request's envelopes on one working copy (each decrypt sees
/// the skipped-key changes of the ones before) and commits once.
pub(crate) fn receive_all(
    store: &ProfileStore,
    contact: ContactId,
    envelopes: &[Envelope],
    now: u64,
) -> Vec<Result<Vec<u8>, CryptoError>> {
    let mut state = store.session(&contact).unwrap().expect("a session");
    let mut changes = SkippedKeyChanges::new(contact);
    let mut out = Vec::new();
    let mut messages = Vec::new();
    for envelope in envelopes {
        let mut tried = Vec::new();
        let mut done = None;
        for (index, snapshot) in state.all().enumerate() {
            let mut session = Session::from_snapshot(snapshot.clone()).unwrap();
            let found = changes.lookup(store, &session.id(), &envelope.header).unwrap();
            match session.decrypt_with(envelope, found) {
                Ok((plaintext, change)) => {
                    changes.record(store, &session.id(), change).unwrap();
                    done = Some((index, session, plaintext));
                    break;
                }
                Err(e) => tried.push(e),
            }
        }
        let Some((index, session, plaintext)) = done else {
            let gone = tried.contains(&CryptoError::MessageKeyGone);
            out.push(Err(if gone { CryptoError::MessageKeyGone } else { tried.remove(0) }));
            continue;
        };
        if index == 0 {
            state.current = session.snapshot();
        } else {
            state.promote(index - 1, session.snapshot());
        }
        messages.push(message(contact, envelope, &plaintext, now));
        out.push(Ok(plaintext));
    }
    if let Some(last) = messages.last_mut() {
        last.session = Some(state);
        let mut inbound = Inbound::new(contact);
        inbound.messages = messages;
        inbound.skipped = changes;
        store.commit_inbound(&inbound, now).unwrap();
    }
    out
}

/// Accepts a prekey message from `contact` as a new responder session,
/// which becomes current (the old current the newest previous), and
/// commits it with the keys it skipped.
pub(crate) fn accept(store: &ProfileStore, contact: ContactId, envelope: &Envelope, now: u64) -> Vec<u8> {
    let me = store.identity().unwrap();
    let spk = store.current_signed_prekey().unwrap();
    let (mut session, plaintext) = Session::respond(&me, &spk, None, envelope).unwrap();
    let mut changes = SkippedKeyChanges::new(contact);
    changes.record(store, &session.id(), session.take_skipped()).unwrap();
    let state = match store.session(&contact).unwrap() {
        Some(mut state) => {
            state.replace_current(session.snapshot());
            state
        }
        None => SessionState::new(session.snapshot()),
    };
    let mut m = message(contact, envelope, &plaintext, now);
    m.session = Some(state);
    let mut inbound = Inbound::new(contact);
    inbound.messages = vec![m];
    inbound.skipped = changes;
    store.commit_inbound(&inbound, now).unwrap();
    plaintext
}

fn message(contact: ContactId, envelope: &Envelope, plaintext: &[u8], now: u64) -> IncomingMessage {
    let id = envelope.message_id().0;
    IncomingMessage {
        contact,
        session: None,
        received_id: id,
        message: Some(MessageRecord {
            id,
            direction: Direction::Incoming,
            sent_at_ms: now,
            received_at_ms: Some(now),
            status: MessageStatus::Delivered,
            body: plaintext.to_vec(),
        }),
        consumed_one_time_prekey: None,
    }
}

/// Rows of a table, and the sealed size of a contact's session row, read
/// from the file itself.
pub(crate) fn rows(path: &std::path::Path, table: &str) -> usize {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    if table == "skipped_order" {
        let t = tx.open_table(TableDefinition::<&[u8], ()>::new("skipped_order")).unwrap();
        return t.len().unwrap() as usize;
    }
    let t = tx.open_table(TableDefinition::<&[u8], &[u8]>::new(table)).unwrap();
    t.len().unwrap() as usize
}

/// The sealed bytes of `contact`'s row in `sessions`, read from the file.
pub(crate) fn session_row_len(path: &std::path::Path, contact: &ContactId) -> usize {
    use redb::{ReadableDatabase, TableDefinition};
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(TableDefinition::<&[u8], &[u8]>::new("sessions")).unwrap();
    t.get(contact.0.as_slice()).unwrap().map_or(0, |v| v.value().len())
}
