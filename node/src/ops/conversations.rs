//! Conversations: the inbox, closing and reopening, labels on a
//! conversation.

use std::collections::HashMap;

use kabar_crypto::ProfileKind;
use kabar_storage::{Contact, ContactId, Conversation, ConversationStatus, MessageRecord};

use crate::engine::{Engine, EngineError};
use crate::ops::ContactRef;

/// One conversation of the inbox.
#[derive(Debug, Clone)]
pub struct ConversationSummary {
    /// The contact it is with.
    pub contact: Contact,
    /// Its state: unread count, labels, open or closed, last activity.
    pub conversation: Conversation,
    /// The names of its labels (a business profile's; none on a personal
    /// one).
    pub labels: Vec<String>,
    /// Its last message, with its number.
    pub last: Option<(u64, MessageRecord)>,
}

impl Engine {
    /// The inbox: every conversation with a contact, by last activity,
    /// newest first.
    pub fn inbox(&self) -> Result<Vec<ConversationSummary>, EngineError> {
        let store = self.store();
        let label_names: HashMap<[u8; 16], String> = match store.kind() {
            ProfileKind::Business => store.labels()?.into_iter().map(|l| (l.id, l.name)).collect(),
            ProfileKind::Personal => HashMap::new(),
        };
        let mut list = Vec::new();
        for (id, conversation) in store.conversations()? {
            let Some(contact) = store.contact(&id)? else { continue };
            let last = self.history_page(&id, 1, None)?.pop();
            let labels = conversation.labels.iter().filter_map(|l| label_names.get(l).cloned()).collect();
            list.push(ConversationSummary { contact, conversation, labels, last });
        }
        list.sort_by_key(|s| std::cmp::Reverse(s.conversation.last_activity_ms));
        Ok(list)
    }

    /// Closes or reopens the conversation with `who` (business profiles
    /// only); a new message from the customer reopens it.
    pub fn set_conversation_status(
        &mut self,
        who: ContactRef<'_>,
        status: ConversationStatus,
    ) -> Result<ConversationStatus, EngineError> {
        if self.store().kind() != ProfileKind::Business {
            return Err(EngineError::NotBusiness("closing conversations"));
        }
        let (id, _) = self.find_contact(who)?;
        let conversation = self.store().update_conversation(&id, |c| c.status = status)?;
        Ok(conversation.status)
    }

    /// Applies (or removes) a label on the conversation with `contact`;
    /// returns how many labels it has now. A label is applied once.
    pub fn label_conversation(
        &mut self,
        contact: &ContactId,
        label: &[u8; 16],
        apply: bool,
    ) -> Result<usize, EngineError> {
        let conversation = self.store().update_conversation(contact, |c| {
            c.labels.retain(|l| l != label);
            if apply {
                c.labels.push(*label);
            }
        })?;
        Ok(conversation.labels.len())
    }
}
