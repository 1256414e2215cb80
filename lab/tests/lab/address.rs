//! `Lab::change_address`: the new public address works, the old one is gone, listeners survive.

use std::net::SocketAddrV4;
use std::time::Duration;

use kabar_lab::Nat;

use crate::probe::{Server, connect_fails, connect_ok, lab};

#[test]
fn public_host_moves_to_a_new_address() {
    let Some(mut lab) = lab() else { return };
    let a = lab.public_host("a").unwrap();
    let b = lab.public_host("b").unwrap();
    let server = Server::start(&mut lab, &a, 7100, 4);
    let old = a.ip();
    connect_ok(&b, SocketAddrV4::new(old, 7100));
    assert_eq!(*server.next_peer().ip(), b.ip());

    let new = lab.change_address(&a).unwrap();
    assert_ne!(new, old);
    assert_eq!(a.ip(), new);
    assert_eq!(a.public_ip(), new);
    // The server bound to 0.0.0.0 before the change and still answers on the new address.
    connect_ok(&b, SocketAddrV4::new(new, 7100));
    assert_eq!(*server.next_peer().ip(), b.ip());
    connect_fails(&b, SocketAddrV4::new(old, 7100), Duration::from_secs(1));
}

#[test]
fn home_router_moves_to_a_new_address() {
    let Some(mut lab) = lab() else { return };
    let web = lab.public_host("web").unwrap();
    let erin = lab.home("erin", Nat::EndpointIndependent).unwrap();
    let server = Server::start(&mut lab, &web, 7200, 2);
    let to = SocketAddrV4::new(web.ip(), 7200);

    let old = erin.public_ip();
    connect_ok(&erin, to);
    assert_eq!(*server.next_peer().ip(), old);

    let new = lab.change_address(&erin).unwrap();
    assert_ne!(new, old);
    assert_eq!(erin.public_ip(), new);
    assert_eq!(erin.ip(), "10.1.0.2".parse::<std::net::Ipv4Addr>().unwrap());
    connect_ok(&erin, to);
    assert_eq!(*server.next_peer().ip(), new);
}
