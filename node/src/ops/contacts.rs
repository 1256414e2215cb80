//! Contacts: finding one, the name rule, adding from a card, requests and
//! verification.

use kabar_crypto::{IdentityPublic, SafetyNumber, SignedPrekeyPublic};
use kabar_storage::{Contact, ContactId, ContactMailbox, StoreError};

use crate::engine::{Action, Engine, EngineError, PeerKey, check_contact_name};

/// A contact as the user names it: by its display name, or by its PeerId
/// (the caller decodes a PeerId into its Ed25519 key).
#[derive(Debug, Clone, Copy)]
pub struct ContactRef<'a> {
    /// What the user gave: a display name, or a PeerId.
    pub name: &'a str,
    /// The Ed25519 key inside `name`, if `name` is a PeerId.
    pub peer_key: Option<PeerKey>,
}

/// A contact to add, as its card describes it.
#[derive(Debug, Clone)]
pub struct NewContact {
    /// Its identity (kind included).
    pub identity: IdentityPublic,
    /// Its current signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// The name to file it under.
    pub name: String,
    /// Where it listens (multiaddrs as text).
    pub addresses: Vec<String>,
    /// Where it takes envelopes while offline.
    pub mailboxes: Vec<ContactMailbox>,
}

/// A contact added (or updated) from its card.
#[derive(Debug, Clone)]
pub struct ContactAdded {
    /// The contact as stored.
    pub contact: Contact,
    /// The card carried a new identity for a known contact.
    pub identity_changed: bool,
}

/// A contact's safety number.
#[derive(Debug)]
pub struct Verification {
    /// The contact, as it was before this call.
    pub contact: Contact,
    /// The safety number of this profile and the contact.
    pub safety_number: SafetyNumber,
    /// Whether the contact is verified now.
    pub verified: bool,
}

/// What this profile's card carries besides its name and addresses.
#[derive(Debug, Clone)]
pub struct OwnCard {
    /// The profile's identity.
    pub identity: IdentityPublic,
    /// Its current signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// Its mailboxes, with the card's deposit capability in each.
    pub mailboxes: Vec<ContactMailbox>,
}

impl Engine {
    /// The contact `who` names: by display name first, then by PeerId.
    pub fn find_contact(&self, who: ContactRef<'_>) -> Result<(ContactId, Contact), EngineError> {
        if let Some(found) = self.store().contact_by_name(who.name)? {
            return Ok(found);
        }
        // A PeerId names the Ed25519 key: one keyed lookup, no scan.
        let by_key = match who.peer_key {
            Some(key) => self.store().contact_by_peer_key(&key)?,
            None => None,
        };
        by_key.ok_or_else(|| EngineError::NoContact(who.name.to_string()))
    }

    /// The rule for a name `contact` is given (`contact.add`, and
    /// `request.accept` with a new name): a valid contact name
    /// ([`check_contact_name`]) that no other contact has, so that a name
    /// always names one contact.
    pub fn check_name_for(&self, name: &str, contact: &ContactId) -> Result<(), EngineError> {
        check_contact_name(name)?;
        if let Some((other, _)) = self.store().contact_by_name(name)?
            && other != *contact
        {
            return Err(StoreError::Invalid(format!("another contact is already named {name:?}")).into());
        }
        Ok(())
    }

    /// Renames a contact, under the rule of every contact name
    /// ([`Engine::check_name_for`]); the contact and its name index change
    /// in one transaction. Naming a new customer (a business profile's
    /// pending stranger) is acting on it: it is settled, never dropped. A
    /// message request is named by accepting it ([`Engine::accept_request`]).
    pub fn rename_contact(&mut self, id: &ContactId, name: &str) -> Result<Contact, EngineError> {
        let contact = self.store().contact(id)?.ok_or_else(|| StoreError::NotFound("contact".into()))?;
        if contact.request {
            return Err(EngineError::RenameRequest(contact.display_name));
        }
        self.check_name_for(name, id)?;
        Ok(self.store().settle_contact(id, |c| c.display_name = name.to_string())?)
    }

    /// Adds (or updates) a contact from its card: the name rule
    /// ([`Engine::check_name_for`]), never this profile's own card. The
    /// contact, its mailboxes and its settling (a pending stranger with that
    /// identity) are one transaction; then its queued messages may go.
    pub fn add_contact_card(
        &mut self,
        new: NewContact,
        now_ms: u64,
    ) -> Result<(ContactAdded, Vec<Action>), EngineError> {
        check_contact_name(&new.name)?;
        if self.peer_key() == new.identity.signing {
            return Err(EngineError::OwnCard);
        }
        let id = self.store().contact_id(&new.identity);
        self.check_name_for(&new.name, &id)?;
        let signing = new.identity.signing;
        let mut contact = Contact::new(new.identity, Some(new.signed_prekey), new.name, now_ms);
        contact.addresses = new.addresses;
        let (id, identity_changed) = self.add_contact(contact, &new.mailboxes)?;
        let contact = self.store().contact(&id)?.ok_or_else(|| StoreError::NotFound("contact".into()))?;
        let actions = self.on_peer_reachable(&signing, now_ms)?;
        Ok((ContactAdded { contact, identity_changed }, actions))
    }

    /// Every contact.
    pub fn contact_list(&self) -> Result<Vec<Contact>, EngineError> {
        Ok(self.store().contacts()?.into_iter().map(|(_, c)| c).collect())
    }

    /// Message requests: strangers who wrote to a personal profile, not
    /// accepted and not blocked.
    pub fn requests(&self) -> Result<Vec<Contact>, EngineError> {
        Ok(self.store().contacts()?.into_iter().map(|(_, c)| c).filter(|c| c.request && !c.blocked).collect())
    }

    /// The safety number with a contact; `confirm` marks the contact
    /// verified and clears an identity-change warning.
    pub fn verify_contact(&mut self, contact: &ContactId, confirm: bool) -> Result<Verification, EngineError> {
        let c = self.store().contact(contact)?.ok_or_else(|| StoreError::NotFound("contact".into()))?;
        let ours = self.store().identity()?.public();
        let safety_number = SafetyNumber::new(&ours, &c.identity);
        if confirm {
            self.store().update_contact(contact, |c| {
                c.verified = true;
                c.identity_change = None;
            })?;
        }
        let verified = confirm || c.verified;
        Ok(Verification { contact: c, safety_number, verified })
    }

    /// What this profile's card carries: identity, current signed prekey,
    /// mailboxes.
    pub fn own_card(&self) -> Result<OwnCard, EngineError> {
        Ok(OwnCard {
            identity: self.store().identity()?.public(),
            signed_prekey: self.store().current_signed_prekey()?.public(),
            mailboxes: self.card_mailboxes()?,
        })
    }
}
