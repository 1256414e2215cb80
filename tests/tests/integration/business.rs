//! A customer and a business: greeting, away message, quick reply, catalog,
//! order, labels and closing.

use kabar_crypto::ProfileKind::{Business, Personal};
use kabar_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_and_business_greeting_away_quick_reply_catalog_order_close() {
    let shop = TestNode::start(&[("personal", Personal), ("shop", Business)]).await;
    let cust = TestNode::start(&[("personal", Personal)]).await;
    shop.call(
        "business.profile.set",
        json!({"profile": "shop", "name": "Marigold Bakery", "about": "Fresh bread daily"}),
    )
    .await;
    shop.call("business.greeting.set", json!({"profile": "shop", "text": "Welcome to Marigold!"})).await;
    shop.call("business.away.set", json!({"profile": "shop", "schedule": "always", "text": "We are away right now."}))
        .await;
    let auto = shop.call("business.automations.get", json!({"profile": "shop"})).await;
    assert_eq!(
        auto,
        json!({"greeting": "Welcome to Marigold!", "away_message": "We are away right now.", "away_schedule": "Always"})
    );
    shop.call(
        "business.reply.add",
        json!({"profile": "shop", "shortcut": "/thanks", "text": "Thank you for your order!"}),
    )
    .await;
    let item = shop
        .call(
            "business.catalog.add",
            json!({"profile": "shop", "name": "Sourdough", "price_minor": 450, "currency": "EUR"}),
        )
        .await;

    // The customer has the shop's card; the shop does not know the customer.
    let card = shop.card("shop", "Marigold Bakery").await;
    cust.call("contact.add", json!({"card": card, "name": "Bakery"})).await;
    let mut cust_events = cust.subscribe().await;
    let mut shop_events = shop.subscribe().await;

    cust.call("message.send", json!({"to": "Bakery", "text": "Hello, do you deliver?"})).await;
    shop_events.wait_received("shop", 1).await;
    // Greeting and away message come back automatically.
    cust_events.wait_received("personal", 2).await;
    let got = history(&cust, "personal", "Bakery").await;
    assert!(got.contains(&("in".into(), "Welcome to Marigold!".into())), "{got:?}");
    assert!(got.contains(&("in".into(), "We are away right now.".into())), "{got:?}");

    // The shop sees a new customer, labelled.
    let inbox = shop.call("conversation.list", json!({"profile": "shop"})).await;
    assert_eq!(inbox[0]["labels"], json!(["New customer"]));
    let customer = inbox[0]["contact"].as_str().unwrap().to_string();
    assert!(shop.call("request.list", json!({"profile": "shop"})).await.as_array().unwrap().is_empty());

    // Catalog and order.
    cust.call("catalog.request", json!({"to": "Bakery"})).await;
    cust_events.wait_for("catalog", |e| e["event"] == "message_received" && e["kind"] == "catalog").await;
    cust.call("order.place", json!({"to": "Bakery", "items": [{"item": item["id"], "quantity": 2}]})).await;
    shop_events.wait_for("order", |e| e["event"] == "message_received" && e["kind"] == "order").await;

    // Quick reply.
    shop.call("message.send", json!({"profile": "shop", "to": customer, "text": "/thanks"})).await;
    cust_events.wait_for("quick reply", |e| e["event"] == "message_received").await;
    assert_eq!(history(&cust, "personal", "Bakery").await.last().unwrap().1, "Thank you for your order!");

    // Labels and closing; a new message reopens.
    shop.call("business.label.add", json!({"profile": "shop", "name": "Paid", "colour": "#00aa00"})).await;
    shop.call("business.label.apply", json!({"profile": "shop", "with": customer, "label": "Paid"})).await;
    shop.call("business.close", json!({"profile": "shop", "with": customer})).await;
    let inbox = shop.call("conversation.list", json!({"profile": "shop"})).await;
    assert_eq!(inbox[0]["status"], "closed");
    assert_eq!(inbox[0]["labels"].as_array().unwrap().len(), 2);
    cust.call("message.send", json!({"to": "Bakery", "text": "One more question"})).await;
    shop_events.wait_for("reopening message", |e| e["event"] == "message_received" && e["kind"] == "text").await;
    let inbox = shop.call("conversation.list", json!({"profile": "shop"})).await;
    assert_eq!(inbox[0]["status"], "open");

    // Business settings on a personal profile and over-long fields are errors.
    let err = cust.try_call("business.greeting.set", json!({"text": "x"})).await.unwrap_err();
    assert_eq!(err.code, kabar_node::control::codes::NOT_BUSINESS);
    let err = cust.try_call("business.automations.get", json!({})).await.unwrap_err();
    assert_eq!(err.code, kabar_node::control::codes::NOT_BUSINESS);
    let err =
        shop.try_call("business.profile.set", json!({"profile": "shop", "about": "a".repeat(140)})).await.unwrap_err();
    assert_eq!(err.code, kabar_node::control::codes::INVALID_VALUE);
    assert_eq!(shop.call("business.profile.get", json!({"profile": "shop"})).await["about"], "Fresh bread daily");
}
