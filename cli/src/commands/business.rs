//! `kabar business …` (a business profile's tools), and the customer's
//! side of a shop: `kabar catalog` and `kabar order`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::Ctx;
use crate::client::{Client, TimedOut};
use crate::out::outln;
use crate::output::{self, cell};
use crate::{s, safe, show};

#[derive(Debug, Subcommand)]
pub(crate) enum BusinessCommand {
    /// The business profile.
    #[command(subcommand)]
    Profile(BusinessProfileCommand),
    /// Catalog items.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Quick replies (/shortcut → text).
    #[command(subcommand)]
    Reply(ReplyCommand),
    /// The greeting sent on a customer's first message (and after 14 days of silence).
    #[command(subcommand)]
    Greeting(GreetingCommand),
    /// The away message.
    #[command(subcommand)]
    Away(AwayCommand),
    /// Opening hours.
    #[command(subcommand)]
    Hours(HoursCommand),
    /// Labels for conversations.
    #[command(subcommand)]
    Label(LabelCommand),
    /// Close a conversation after the transaction (a new message reopens it).
    ///
    /// Example: kabar --profile shop business close Dana
    Close {
        /// Customer name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BusinessProfileCommand {
    /// Set fields of the business profile.
    ///
    /// Example: kabar --profile shop business profile set --name "Marigold Bakery" --about "Fresh bread daily"
    Set {
        /// Business name.
        #[arg(long)]
        name: Option<String>,
        /// Category.
        #[arg(long)]
        category: Option<String>,
        /// One line, at most 139 characters.
        #[arg(long)]
        about: Option<String>,
        /// At most 512 characters.
        #[arg(long)]
        description: Option<String>,
        /// Street address.
        #[arg(long)]
        address: Option<String>,
        /// E-mail.
        #[arg(long)]
        email: Option<String>,
        /// Web site.
        #[arg(long)]
        website: Option<String>,
    },
    /// Show the business profile.
    ///
    /// Example: kabar --profile shop business profile show
    Show,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Add an item.
    ///
    /// Example: kabar --profile shop business catalog add Sourdough --price 4.50 --currency EUR
    Add {
        /// Item name.
        name: String,
        /// Price, e.g. 4.50.
        #[arg(long)]
        price: String,
        /// ISO 4217 currency.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List items.
    ///
    /// Example: kabar --profile shop business catalog list
    List,
    /// Remove an item by id.
    ///
    /// Example: kabar --profile shop business catalog remove 3f9a0c2d11b4e5a6
    Remove {
        /// Item id (from `catalog list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReplyCommand {
    /// Save a quick reply.
    ///
    /// Example: kabar --profile shop business reply add /thanks "Thank you for your order!"
    Add {
        /// The shortcut, e.g. /thanks.
        shortcut: String,
        /// The text it sends.
        text: String,
    },
    /// List quick replies.
    ///
    /// Example: kabar --profile shop business reply list
    List,
    /// Remove a quick reply.
    ///
    /// Example: kabar --profile shop business reply remove /thanks
    Remove {
        /// The shortcut.
        shortcut: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GreetingCommand {
    /// Set the greeting.
    ///
    /// Example: kabar --profile shop business greeting set "Welcome to Marigold!"
    Set {
        /// The greeting text.
        text: String,
    },
    /// Turn the greeting off.
    ///
    /// Example: kabar --profile shop business greeting off
    Off,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AwayCommand {
    /// Set when the away message goes out, and its text.
    ///
    /// Example: kabar --profile shop business away set --schedule outside-hours --text "Closed; back at 9"
    Set {
        /// always, outside-hours, HH:MM-HH:MM or off.
        #[arg(long)]
        schedule: String,
        /// The away message.
        #[arg(long)]
        text: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum HoursCommand {
    /// Set opening hours, e.g. mon=09:00-17:00 sat=10:00-14:00 (days not given are closed).
    ///
    /// Example: kabar --profile shop business hours set mon=09:00-17:00 tue=09:00-17:00 --utc-offset 60
    Set {
        /// DAY=HH:MM-HH:MM, DAY in mon…sun.
        days: Vec<String>,
        /// Minutes the shop's local time is ahead of UTC.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        utc_offset: i64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LabelCommand {
    /// Define a label (at most 20).
    ///
    /// Example: kabar --profile shop business label add Paid --colour "#00aa00"
    Add {
        /// Label name.
        name: String,
        /// Colour as #rrggbb.
        #[arg(long, default_value = "#607d8b")]
        colour: String,
    },
    /// List labels.
    ///
    /// Example: kabar --profile shop business label list
    List,
    /// Apply a label to a conversation.
    ///
    /// Example: kabar --profile shop business label apply Paid Dana
    Apply {
        /// Label name.
        label: String,
        /// Customer name.
        name: String,
    },
    /// Delete a label (it is taken off every conversation).
    ///
    /// Example: kabar --profile shop business label remove Paid
    Remove {
        /// Label name.
        label: String,
    },
}

pub(crate) fn run(ctx: &Ctx, b: &BusinessCommand) -> Result<()> {
    let json = ctx.json;
    let p = |v: Value| ctx.p(v);
    let mut client = ctx.client()?;
    let pretty = |v: &Value| outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match b {
        BusinessCommand::Profile(BusinessProfileCommand::Show) => {
            let v = client.call("business.profile.get", p(json!({})))?;
            show(json, &v, |v| {
                for f in ["name", "category", "about", "description", "address", "email", "website"] {
                    outln!("{f:<12} {}", cell(&v[f]))?;
                }
                Ok(())
            })
        }
        BusinessCommand::Profile(BusinessProfileCommand::Set {
            name,
            category,
            about,
            description,
            address,
            email,
            website,
        }) => {
            let v = client.call(
                "business.profile.set",
                p(json!({"name": name, "category": category, "about": about, "description": description, "address": address, "email": email, "website": website})),
            )?;
            show(json, &v, |_| outln!("business profile saved"))
        }
        BusinessCommand::Catalog(CatalogCommand::Add { name, price, currency, description }) => {
            let price_minor = parse_price(price)?;
            let v = client.call(
                "business.catalog.add",
                p(json!({"name": name, "price_minor": price_minor, "currency": currency, "description": description})),
            )?;
            show(json, &v, |v| outln!("added {} {} ({})", cell(&v["name"]), output::money(v), cell(&v["id"])))
        }
        BusinessCommand::Catalog(CatalogCommand::List) => {
            let v = client.call("business.catalog.list", p(json!({})))?;
            show(json, &v, print_catalog)
        }
        BusinessCommand::Catalog(CatalogCommand::Remove { id }) => {
            let v = client.call("business.catalog.remove", p(json!({"id": id})))?;
            show(json, &v, |_| outln!("removed"))
        }
        BusinessCommand::Reply(ReplyCommand::Add { shortcut, text }) => {
            let v = client.call("business.reply.add", p(json!({"shortcut": shortcut, "text": text})))?;
            show(json, &v, |v| outln!("/{} saved", cell(&v["shortcut"])))
        }
        BusinessCommand::Reply(ReplyCommand::List) => {
            let v = client.call("business.reply.list", p(json!({})))?;
            show(json, &v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| vec![format!("/{}", cell(&r["shortcut"])), cell(&r["text"])])
                    .collect();
                output::table(&["SHORTCUT", "TEXT"], &rows)
            })
        }
        BusinessCommand::Reply(ReplyCommand::Remove { shortcut }) => {
            let v = client.call("business.reply.remove", p(json!({"shortcut": shortcut})))?;
            show(json, &v, |_| outln!("removed"))
        }
        BusinessCommand::Greeting(g) => {
            let text = match g {
                GreetingCommand::Set { text } => Some(text.clone()),
                GreetingCommand::Off => None,
            };
            let v = client.call("business.greeting.set", p(json!({"text": text})))?;
            show(json, &v, |v| if v["greeting"].is_null() { outln!("greeting off") } else { outln!("greeting set") })
        }
        BusinessCommand::Away(AwayCommand::Set { schedule, text }) => {
            let v = client.call("business.away.set", p(json!({"schedule": schedule, "text": text})))?;
            show(json, &v, |_| outln!("away message: {}", safe::printable(schedule)))
        }
        BusinessCommand::Hours(HoursCommand::Set { days, utc_offset }) => {
            let mut map = serde_json::Map::new();
            for d in days {
                let (day, hours) =
                    d.split_once('=').ok_or_else(|| anyhow!("{d:?}: write DAY=HH:MM-HH:MM, e.g. mon=09:00-17:00"))?;
                map.insert(day.to_string(), json!(hours));
            }
            let v = client.call("business.hours.set", p(json!({"days": map, "utc_offset_minutes": utc_offset})))?;
            show(json, &v, |_| outln!("opening hours saved"))
        }
        BusinessCommand::Label(l) => {
            let v = match l {
                LabelCommand::Add { name, colour } => {
                    client.call("business.label.add", p(json!({"name": name, "colour": colour})))?
                }
                LabelCommand::List => client.call("business.label.list", p(json!({})))?,
                LabelCommand::Apply { label, name } => {
                    client.call("business.label.apply", p(json!({"label": label, "with": name})))?
                }
                LabelCommand::Remove { label } => client.call("business.label.remove", p(json!({"name": label})))?,
            };
            show(json, &v, |v| match l {
                LabelCommand::List => {
                    let rows: Vec<Vec<String>> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| vec![cell(&x["name"]), cell(&x["colour"])])
                        .collect();
                    output::table(&["LABEL", "COLOUR"], &rows)
                }
                _ => pretty(&json!("ok")),
            })
        }
        BusinessCommand::Close { name } => {
            let v = client.call("business.close", p(json!({"with": name})))?;
            show(json, &v, |_| outln!("conversation with {} closed", safe::printable(name)))
        }
    }
}

/// "4.50" → 450 minor units.
pub(crate) fn parse_price(text: &str) -> Result<u64> {
    let bad = || anyhow!("{text:?} is not a price; write e.g. 4.50");
    let (units, frac) = text.split_once(['.', ',']).unwrap_or((text, ""));
    let digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if units.is_empty() || frac.len() > 2 || !digits(units) || !digits(frac) {
        return Err(bad());
    }
    let cents = match frac.len() {
        0 => 0,
        1 => frac.parse::<u64>()? * 10,
        _ => frac.parse::<u64>()?,
    };
    units.parse::<u64>().ok().and_then(|u| u.checked_mul(100)).and_then(|u| u.checked_add(cents)).ok_or_else(bad)
}

/// A catalog (the business's own, or one a business sent) for humans.
pub(crate) fn print_catalog(v: &Value) -> Result<()> {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                cell(&i["name"]),
                output::money(i),
                if i["available"] == true { "yes".into() } else { "no".into() },
                cell(&i["description"]),
                cell(&i["id"]),
            ]
        })
        .collect();
    output::table(&["ITEM", "PRICE", "AVAILABLE", "DESCRIPTION", "ID"], &rows)
}

/// The newest catalog a business sent us, from the conversation.
pub(crate) fn latest_catalog(client: &mut Client, profile: &str, name: &str) -> Result<Option<Value>> {
    let h = client.call("message.history", json!({"profile": profile, "with": name, "limit": 200}))?;
    Ok(h["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["direction"] == "in" && m["content"]["type"] == "catalog")
        .map(|m| m["content"]["items"].clone()))
}

pub(crate) fn catalog(dir: &Path, profile: &str, name: &str, timeout: u64, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    client.subscribe()?;
    let before = latest_catalog(&mut client, profile, name)?;
    client.call("catalog.request", json!({"profile": profile, "to": name}))?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let event = client.next_event(deadline)?;
        match event {
            None => return Err(TimedOut(format!("{name} did not answer within {timeout} s")).into()),
            Some(e) if e["event"] == "message_received" && e["kind"] == "catalog" => {
                let items = latest_catalog(&mut client, profile, name)?.or(before).unwrap_or(json!([]));
                return show(json, &items, print_catalog);
            }
            Some(_) => {}
        }
    }
}

pub(crate) fn order(
    dir: &Path,
    profile: &str,
    name: &str,
    args: &[String],
    note: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut client = Client::connect(dir)?;
    let catalog = latest_catalog(&mut client, profile, name)?
        .ok_or_else(|| anyhow!("no catalog from {name} yet; fetch it first: kabar catalog {name}"))?;
    let items = catalog.as_array().cloned().unwrap_or_default();
    let mut lines: Vec<Value> = Vec::new();
    for arg in args {
        let (item, qty) = match arg.rsplit_once('x') {
            Some((i, q)) if !i.is_empty() && q.parse::<u32>().is_ok() => (i.to_string(), q.parse::<u32>()?),
            _ if arg.starts_with('x') && arg[1..].parse::<u32>().is_ok() => {
                let q = arg[1..].parse::<u32>()?;
                let last = lines.last_mut().ok_or_else(|| anyhow!("{arg:?} must follow an item"))?;
                last["quantity"] = json!(q);
                continue;
            }
            _ => (arg.clone(), 1),
        };
        if qty == 0 {
            bail!("quantity must be at least 1");
        }
        let found = items
            .iter()
            .find(|i| s(&i["id"]) == item || s(&i["name"]).eq_ignore_ascii_case(&item))
            .ok_or_else(|| anyhow!("{item:?} is not in {name}'s catalog; see `kabar catalog {name}`"))?;
        lines.push(json!({"item": found["id"], "quantity": qty}));
    }
    let v = client.call("order.place", json!({"profile": profile, "to": name, "items": lines, "note": note}))?;
    show(json, &v, |v| outln!("order sent ({})", cell(&v["message_id"])))
}
