//! `Lab::cut` and `Lab::mend`: the path between a host and one public address goes and comes back; other paths
//! stay.

use std::net::SocketAddrV4;
use std::time::Duration;

use kabar_lab::Nat;

use crate::probe::{Server, connect_fails, connect_ok, lab};

#[test]
fn a_cut_drops_one_peer_both_ways_until_mended() {
    let Some(mut lab) = lab() else { return };
    let relay = lab.public_host("relay").unwrap();
    let shop = lab.public_host("shop").unwrap();
    let alice = lab.home("alice", Nat::EndpointIndependent).unwrap();
    let _relay_server = Server::start(&mut lab, &relay, 4000, 2);
    let shop_server = Server::start(&mut lab, &shop, 4000, 2);
    let to_shop = SocketAddrV4::new(shop.ip(), 4000);

    lab.cut(&alice, shop.ip()).unwrap();
    assert_eq!(connect_fails(&alice, to_shop, Duration::from_secs(1)), "TimeoutError", "alice -> shop is cut");
    // The shop's side of a cut public host: its own packets to alice's router go nowhere either.
    lab.cut(&shop, alice.public_ip()).unwrap();
    lab.mend(&alice).unwrap();
    assert_eq!(connect_fails(&alice, to_shop, Duration::from_secs(1)), "TimeoutError", "cut at the shop's end");
    connect_ok(&alice, SocketAddrV4::new(relay.ip(), 4000));

    lab.mend(&shop).unwrap();
    lab.mend(&shop).unwrap();
    connect_ok(&alice, to_shop);
    assert_eq!(*shop_server.next_peer().ip(), alice.public_ip());
}
