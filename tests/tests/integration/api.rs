//! The control API as a generic JSON-RPC 2.0 client sees it.

use kabar_crypto::ProfileKind::Personal;
use kabar_node::control::codes;
use kabar_tests::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_errors_and_batches_follow_the_specification() {
    let node = TestNode::start(&[("personal", Personal)]).await;
    let reply = |s: String| serde_json::from_str::<Value>(&s).unwrap();

    let r = reply(node.raw("{not json").await);
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(codes::PARSE_ERROR), &Value::Null));
    let r = reply(node.raw(r#"{"jsonrpc":"2.0","id":7,"method":"no.such"}"#).await);
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(codes::METHOD_NOT_FOUND), &json!(7)));
    let r = reply(node.raw(r#"{"jsonrpc":"1.0","id":"a","method":"node.info"}"#).await);
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(codes::INVALID_REQUEST), &json!("a")));
    let r = reply(node.raw(r#"{"jsonrpc":"2.0","id":2,"method":"message.send","params":{"to":5}}"#).await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::INVALID_PARAMS));
    let r = reply(
        node.raw(r#"{"jsonrpc":"2.0","id":3,"method":"message.send","params":{"to":"Nobody","text":"x"}}"#).await,
    );
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::NOT_FOUND));
    let r = reply(node.raw(r#"{"jsonrpc":"2.0","id":4,"method":"contact.add","params":{"card":"kabar:AAAA"}}"#).await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::BAD_CARD));
    let r = reply(node.raw("[]").await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::INVALID_REQUEST));
    let r = reply(node.raw("42").await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::INVALID_REQUEST));

    // A batch: two calls and a notification (no id → no response).
    let r = reply(
        node.raw(r#"[{"jsonrpc":"2.0","id":1,"method":"profile.list"},{"jsonrpc":"2.0","method":"profile.list"},{"jsonrpc":"2.0","id":2,"method":"x"}]"#)
            .await,
    );
    let items = r.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], 1);
    assert_eq!(items[0]["result"][0]["name"], "personal");
    assert_eq!(items[1]["error"]["code"].as_i64(), Some(codes::METHOD_NOT_FOUND));

    // The node is still fine.
    assert_eq!(node.call("profile.list", json!({})).await[0]["kind"], "personal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_directory_is_refused() {
    let node = TestNode::start(&[("personal", Personal)]).await;
    let config = kabar_node::NodeConfig {
        data_dir: node.data_dir.clone(),
        passphrase: b"integration tests".to_vec(),
        network: kabar_node::network::NetworkConfig { mdns: false, ..Default::default() },
        engine: Default::default(),
    };
    let err = kabar_node::Node::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("already running"), "{err}");
}
