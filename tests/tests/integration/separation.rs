//! Nothing the personal swarm sends carries the business PeerId or keys,
//! and the reverse.

use kabar_crypto::ProfileKind::{Business, Personal};
use kabar_tests::*;

use crate::hostile::{Probe, peer_and_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_and_cards_of_one_profile_never_mention_the_other() {
    let node = TestNode::start(&[("personal", Personal), ("shop", Business)]).await;
    let (personal_peer, personal_addr) = peer_and_addr(&node, "personal").await;
    let (shop_peer, shop_addr) = peer_and_addr(&node, "shop").await;
    assert_ne!(personal_peer, shop_peer);
    assert_ne!(personal_addr, shop_addr, "each profile listens on its own port");

    for (me, addr, other, other_addr) in [
        (personal_peer, personal_addr.clone(), shop_peer, shop_addr.clone()),
        (shop_peer, shop_addr, personal_peer, personal_addr),
    ] {
        let mut probe = Probe::new(rand::random());
        let info = probe.connect(me, addr).await;
        assert_eq!(info.public_key.to_peer_id(), me);
        let text = format!("{info:?}");
        assert!(!text.contains(&other.to_string()), "identify of {me} mentions {other}");
        let other_port = other_addr.to_string().rsplit('/').next().unwrap().to_string();
        assert!(info.listen_addrs.iter().all(|a| !a.to_string().ends_with(&format!("/tcp/{other_port}"))));
    }

    // Cards: each names only its own identity.
    let personal_card = kabar_node::card::ContactCard::from_uri(&node.card("personal", "Me").await).unwrap();
    let shop_card = kabar_node::card::ContactCard::from_uri(&node.card("shop", "Shop").await).unwrap();
    assert_eq!(personal_card.peer_id(), personal_peer);
    assert_eq!(shop_card.peer_id(), shop_peer);
    assert_ne!(personal_card.identity.signing, shop_card.identity.signing);
    assert_ne!(personal_card.identity.dh, shop_card.identity.dh);
    assert!(shop_card.addresses.iter().all(|a| !personal_card.addresses.contains(a)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_dial_dials_from_the_named_profile_only() {
    let node = TestNode::start(&[("personal", Personal), ("shop", Business)]).await;
    let target = TestNode::start(&[("personal", Personal)]).await;
    let (target_peer, target_addr) = peer_and_addr(&target, "personal").await;
    let address = format!("{target_addr}/p2p/{target_peer}");

    // Without a profile, a node with two refuses: it would dial from both.
    let refused = node.try_call("node.dial", serde_json::json!({"address": address})).await.unwrap_err();
    assert_eq!(refused.code, -32602, "{refused:?}");

    let dialing = node.call("node.dial", serde_json::json!({"address": address, "profile": "shop"})).await;
    assert_eq!(dialing["profile"], "shop");
    let mut shop = node.status_watch("shop");
    let target_id = target_peer.to_string();
    let connected = |s: &kabar_node::network::ProfileStatus| s.peers.iter().any(|p| p.peer_id == target_id);
    tokio::time::timeout(TIMEOUT, shop.wait_for(connected)).await.unwrap().unwrap();
    // The target saw the shop only.
    let seen = target.profile_info("personal").await["peers"].to_string();
    let personal_peer = node.profile_info("personal").await["peer_id"].as_str().unwrap().to_string();
    assert!(!seen.contains(&personal_peer), "the personal profile dialled too: {seen}");
    assert!(!connected(&node.status_watch("personal").borrow()));
}
