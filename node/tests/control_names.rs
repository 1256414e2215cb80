//! Contact names through the control socket of a real node: accepting a
//! message request under another contact's name is refused with the code
//! `contact.add` gives a duplicate name, and changes nothing; `contact.rename`
//! answers the same, refuses to rename a request, and frees the old name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kabar_node::Node;
use kabar_node::control::codes;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

mod support;
use support::{TIMEOUT, start};

struct Client {
    lines: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    next_id: u64,
}

impl Client {
    async fn connect(node: &Node) -> Client {
        let (read, write) = UnixStream::connect(node.socket()).await.unwrap().into_split();
        Client { lines: BufReader::new(read), write, next_id: 0 }
    }

    async fn next(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.lines.read_line(&mut line)).await.expect("a line").unwrap();
        assert!(n > 0, "the node closed the connection");
        serde_json::from_str(&line).unwrap()
    }

    /// The call's result, or its error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut line =
            serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).unwrap();
        line.push(b'\n');
        self.write.write_all(&line).await.unwrap();
        loop {
            let reply = self.next().await;
            // Events on a subscribed connection are not replies.
            if reply["id"] != id {
                continue;
            }
            return match reply.get("error") {
                Some(error) => Err(error.clone()),
                None => Ok(reply["result"].clone()),
            };
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Waits for an event `f` accepts.
    async fn event(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self.next().await;
            if line["method"] == "event" && f(&line["params"]) {
                return line["params"].clone();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_another_contact_has_is_refused_by_add_accept_and_rename_alike() {
    let (_tmp, node) = start(&["alice", "bob", "carol"]).await;
    let mut events = Client::connect(&node).await;
    events.call("subscribe", json!({})).await;
    let mut client = Client::connect(&node).await;
    let card = |c: Value| c["card"].clone();
    let bob_card = card(client.call("card.get", json!({"profile": "bob", "name": "Bob"})).await);
    let carol_card = card(client.call("card.get", json!({"profile": "carol", "name": "Carol"})).await);
    let alice_card = card(client.call("card.get", json!({"profile": "alice", "name": "Alice"})).await);

    // Bob knows Carol; Alice (whom Bob does not know) writes to Bob.
    client.call("contact.add", json!({"profile": "bob", "card": carol_card, "name": "Carol"})).await;
    client.call("contact.add", json!({"profile": "alice", "card": bob_card, "name": "Bob"})).await;
    client.call("message.send", json!({"profile": "alice", "to": "Bob", "text": "hi, it's Alice"})).await;
    let request = events.event(|e| e["event"] == "message_request" && e["profile"] == "bob").await;
    let stranger = request["contact"].as_str().unwrap().to_string();
    let requests = client.call("request.list", json!({"profile": "bob"})).await;
    assert_eq!(requests.as_array().unwrap().len(), 1, "{requests}");

    // The code contact.add gives a name another contact has…
    let by_add = client
        .try_call("contact.add", json!({"profile": "bob", "card": alice_card, "name": "Carol"}))
        .await
        .unwrap_err();
    assert_eq!(by_add["code"], codes::INVALID_VALUE, "{by_add}");
    // …is request.accept's for a rename to it.
    let by_accept = client
        .try_call("request.accept", json!({"profile": "bob", "name": stranger, "rename": "Carol"}))
        .await
        .unwrap_err();
    assert_eq!(by_accept["code"], by_add["code"], "{by_accept}");
    // …and contact.rename's; a request itself is named by accepting it.
    let by_rename = client
        .try_call("contact.rename", json!({"profile": "bob", "name": "Carol", "to": stranger}))
        .await
        .unwrap_err();
    assert_eq!(by_rename["code"], by_add["code"], "{by_rename}");
    let request_renamed = client
        .try_call("contact.rename", json!({"profile": "bob", "name": stranger, "to": "Alice"}))
        .await
        .unwrap_err();
    assert_eq!(request_renamed["code"], by_add["code"], "{request_renamed}");

    // Nothing changed: the request is still pending under its name, and
    // "Carol" names Carol alone, so a send to "Carol" is not ambiguous.
    assert_eq!(client.call("request.list", json!({"profile": "bob"})).await, requests);
    let contacts = client.call("contact.list", json!({"profile": "bob"})).await;
    let names: Vec<&str> = contacts.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| **n == "Carol").count(), 1, "{contacts}");
    assert!(names.contains(&stranger.as_str()), "{contacts}");

    // A free name is taken.
    let accepted = client.call("request.accept", json!({"profile": "bob", "name": stranger, "rename": "Alice"})).await;
    assert_eq!((accepted["name"].as_str(), accepted["request"].as_bool()), (Some("Alice"), Some(false)));
    assert_eq!(client.call("request.list", json!({"profile": "bob"})).await, json!([]));

    // A contact renamed: the old name is free, the new one names it.
    let renamed = client.call("contact.rename", json!({"profile": "bob", "name": "Carol", "to": "Carol B."})).await;
    assert_eq!(renamed["name"], "Carol B.");
    let contacts = client.call("contact.list", json!({"profile": "bob"})).await;
    let mut names: Vec<&str> = contacts.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Alice", "Carol B."]);
    client.call("message.send", json!({"profile": "bob", "to": "Carol B.", "text": "renamed"})).await;
    let gone = client.try_call("message.send", json!({"profile": "bob", "to": "Carol", "text": "x"})).await;
    assert!(gone.is_err(), "{gone:?}");
    node.shutdown().await;
}
