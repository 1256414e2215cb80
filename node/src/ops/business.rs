//! A business profile's settings: its profile, hours, greeting and away
//! message, catalog, quick replies and labels. The store checks each
//! record's limits and refuses them on a personal profile.

use kabar_storage::{Automations, AwaySchedule, BusinessHours, BusinessProfile, CatalogItem, Label, QuickReply};

use crate::engine::{Engine, EngineError};

/// The colour a label is created with when none is given.
pub const DEFAULT_LABEL_COLOUR: &str = "#607d8b";

/// A change to the business profile: each field given replaces the stored
/// one.
#[derive(Debug, Clone, Default)]
pub struct BusinessProfileChange {
    /// Its name.
    pub name: Option<String>,
    /// Its category.
    pub category: Option<String>,
    /// One line about it.
    pub about: Option<String>,
    /// A longer description.
    pub description: Option<String>,
    /// Its postal address.
    pub address: Option<String>,
    /// Its email address.
    pub email: Option<String>,
    /// Its website.
    pub website: Option<String>,
}

/// A quick reply's shortcut as stored: without its leading `/`.
fn shortcut_key(shortcut: &str) -> &str {
    shortcut.trim_start_matches('/')
}

impl Engine {
    /// The business profile.
    pub fn business_profile(&self) -> Result<BusinessProfile, EngineError> {
        Ok(self.store().business_profile()?)
    }

    /// Changes the business profile; an over-long field refuses the whole
    /// change (nothing changes).
    pub fn update_business_profile(&mut self, change: BusinessProfileChange) -> Result<BusinessProfile, EngineError> {
        let mut profile = self.store().business_profile()?;
        for (given, slot) in [
            (change.name, &mut profile.name),
            (change.category, &mut profile.category),
            (change.about, &mut profile.about),
            (change.description, &mut profile.description),
            (change.address, &mut profile.address),
            (change.email, &mut profile.email),
            (change.website, &mut profile.website),
        ] {
            if let Some(value) = given {
                *slot = value;
            }
        }
        self.store().set_business_profile(&profile)?;
        Ok(profile)
    }

    /// Replaces the opening hours.
    pub fn set_business_hours(&mut self, hours: BusinessHours) -> Result<BusinessHours, EngineError> {
        self.store().set_business_hours(&hours)?;
        Ok(hours)
    }

    /// The greeting and the away message, and when the away message goes.
    pub fn automations(&self) -> Result<Automations, EngineError> {
        Ok(self.store().automations()?)
    }

    /// Sets the greeting (`None`: no greeting).
    pub fn set_greeting(&mut self, greeting: Option<String>) -> Result<Automations, EngineError> {
        let mut automations = self.store().automations()?;
        automations.greeting = greeting;
        self.store().set_automations(&automations)?;
        Ok(automations)
    }

    /// Sets when the away message is sent, and (if given) its text. A
    /// schedule other than [`AwaySchedule::Off`] needs a text, given now or
    /// before; `Off` forgets the text.
    pub fn set_away(&mut self, schedule: AwaySchedule, text: Option<String>) -> Result<Automations, EngineError> {
        let mut automations = self.store().automations()?;
        automations.away_schedule = schedule;
        if let Some(text) = text {
            automations.away_message = Some(text);
        }
        if automations.away_schedule == AwaySchedule::Off {
            automations.away_message = None;
        } else if automations.away_message.is_none() {
            return Err(EngineError::AwayWithoutText);
        }
        self.store().set_automations(&automations)?;
        Ok(automations)
    }

    /// Adds a catalog item (its id is given by the store).
    pub fn add_catalog_item(&mut self, item: CatalogItem) -> Result<CatalogItem, EngineError> {
        Ok(self.store().put_catalog_item(item)?)
    }

    /// The catalog.
    pub fn catalog(&self) -> Result<Vec<CatalogItem>, EngineError> {
        Ok(self.store().catalog()?)
    }

    /// Removes a catalog item.
    pub fn remove_catalog_item(&mut self, id: &[u8; 8]) -> Result<(), EngineError> {
        Ok(self.store().remove_catalog_item(id)?)
    }

    /// Saves a quick reply under `shortcut` (with or without its `/`).
    pub fn add_quick_reply(&mut self, shortcut: &str, text: &str) -> Result<QuickReply, EngineError> {
        let reply = QuickReply { shortcut: shortcut_key(shortcut).to_string(), text: text.to_string() };
        self.store().put_quick_reply(&reply)?;
        Ok(reply)
    }

    /// The quick replies.
    pub fn quick_replies(&self) -> Result<Vec<QuickReply>, EngineError> {
        Ok(self.store().quick_replies()?)
    }

    /// Removes the quick reply `shortcut` (with or without its `/`).
    pub fn remove_quick_reply(&mut self, shortcut: &str) -> Result<(), EngineError> {
        Ok(self.store().remove_quick_reply(shortcut_key(shortcut))?)
    }

    /// Creates a label (colour [`DEFAULT_LABEL_COLOUR`] if none is given).
    pub fn add_label(&mut self, name: &str, colour: Option<&str>) -> Result<Label, EngineError> {
        Ok(self.store().add_label(name, colour.unwrap_or(DEFAULT_LABEL_COLOUR))?)
    }

    /// The labels.
    pub fn labels(&self) -> Result<Vec<Label>, EngineError> {
        Ok(self.store().labels()?)
    }

    /// The label with this name.
    pub fn label_named(&self, name: &str) -> Result<Label, EngineError> {
        self.store()
            .labels()?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| EngineError::NoLabel(name.to_string()))
    }

    /// Deletes the label with this name.
    pub fn remove_label_named(&mut self, name: &str) -> Result<(), EngineError> {
        let label = self.label_named(name)?;
        Ok(self.store().remove_label(&label.id)?)
    }
}
