//! The engine's disk work runs off the swarm's event loop: a profile whose
//! engine is held up (a slow disk) still runs its swarm, the node's other
//! profile is not delayed, and the held profile catches up once its engine
//! is free.

use std::time::Duration;

use kabar_crypto::ProfileKind::Personal;
use kabar_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_up_engine_leaves_its_swarm_and_the_other_profile_running() {
    let node = TestNode::start(&[("personal", Personal), ("work", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    let carol = TestNode::start(&[("personal", Personal)]).await;
    introduce(&node, "work", "Ana", &bob, "personal", "Bob").await;
    introduce(&node, "personal", "Ana", &carol, "personal", "Carol").await;
    let info = carol.profile_info("personal").await;
    let carol_peer = info["peer_id"].as_str().unwrap().to_string();
    let carol_addr = format!("{}/p2p/{carol_peer}", info["listen_addrs"][0].as_str().unwrap());
    let mut events = node.subscribe().await;

    // The personal profile's engine is held (as by a disk that does not
    // answer) until the test lets it go, at most a minute.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (holding, is_held) = tokio::sync::oneshot::channel();
    let hold = node.node().with_engine("personal", move |_| {
        let _ = holding.send(());
        held.recv_timeout(Duration::from_secs(60)).is_ok()
    });
    let meanwhile = async {
        is_held.await.unwrap();
        // Its swarm still works: it dials Carol and connects.
        node.call("node.dial", json!({"address": carol_addr, "profile": "personal"})).await;
        let mut personal = node.status_watch("personal");
        let connected = |s: &kabar_node::network::ProfileStatus| s.peers.iter().any(|p| p.peer_id == carol_peer);
        tokio::time::timeout(TIMEOUT, personal.wait_for(connected))
            .await
            .expect("the held profile's swarm connects while its engine is held")
            .unwrap();
        // The other profile sends and gets its message delivered.
        let sent =
            node.call("message.send", json!({"profile": "work", "to": "Bob", "text": "slow disk next door"})).await;
        events.wait_status(sent["message_id"].as_str().unwrap(), "delivered").await;
        release.send(()).unwrap();
    };
    let (released, ()) = tokio::join!(hold, meanwhile);
    assert_eq!(released, Some(true), "the engine was held until released");

    // Free again, the held profile sends: delivered.
    let sent = node.call("message.send", json!({"profile": "personal", "to": "Carol", "text": "back"})).await;
    events.wait_status(sent["message_id"].as_str().unwrap(), "delivered").await;
    assert_eq!(history(&carol, "personal", "Ana").await, [("in".to_string(), "back".to_string())]);
}
