//! What the tests that run a real node in-process share: a data directory
//! with personal profiles, and the node on it listening on loopback.
#![allow(dead_code)]

use std::time::Duration;

use kabar_crypto::ProfileKind;
use kabar_node::engine::EngineConfig;
use kabar_node::network::NetworkConfig;
use kabar_node::{Node, NodeConfig};
use kabar_storage::{DataDir, KdfParams};

/// How long a test waits for any one thing before failing.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);
const PASSPHRASE: &[u8] = b"node tests (not a secret)";

/// A data directory with these personal profiles and a node running on
/// it (a Kademlia server on 127.0.0.1, no mDNS), listening.
pub(crate) async fn start(profiles: &[&str]) -> (tempfile::TempDir, Node) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut dir = DataDir::create(&data_dir, PASSPHRASE, KdfParams::TESTNET).unwrap();
    for name in profiles {
        dir.create_profile(name, ProfileKind::Personal, 1_700_000_000, &mut rand::rng()).unwrap();
    }
    drop(dir);
    let config = NodeConfig {
        data_dir,
        passphrase: PASSPHRASE.to_vec(),
        network: NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: Vec::new(),
            mdns: false,
            kad_server: true,
            relays: Vec::new(),
        },
        engine: EngineConfig::default(),
    };
    let node = Node::start(config).await.unwrap();
    tokio::time::timeout(TIMEOUT, node.wait_listening()).await.expect("node listens");
    (tmp, node)
}
