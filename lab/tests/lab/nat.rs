//! NAT behaviour: outbound is translated, inbound is refused, and the two flavours map ports as promised.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use kabar_lab::Nat;

use crate::probe::{Outcome, Server, connect, connect_fails, connect_ok, lab};

#[test]
fn home_host_reaches_public_host_through_its_router() {
    let Some(mut lab) = lab() else { return };
    let web = lab.public_host("web").unwrap();
    let alice = lab.home("alice", Nat::EndpointIndependent).unwrap();
    assert_eq!(alice.ip(), "10.1.0.2".parse::<std::net::Ipv4Addr>().unwrap());
    assert_ne!(alice.public_ip(), alice.ip());
    assert_eq!(alice.nat(), Some(Nat::EndpointIndependent));

    let server = Server::start(&mut lab, &web, 8080, 1);
    connect_ok(&alice, SocketAddrV4::new(web.ip(), 8080));
    // The server sees the router's public address, not 10.1.0.2.
    assert_eq!(*server.next_peer().ip(), alice.public_ip());
}

#[test]
fn unsolicited_inbound_never_reaches_a_home_host() {
    let Some(mut lab) = lab() else { return };
    let mallory = lab.public_host("mallory").unwrap();
    let bob = lab.home("bob", Nat::EndpointIndependent).unwrap();
    let server = Server::start(&mut lab, &bob, 7000, 5);
    let short = Duration::from_secs(1);

    // The router's own address: unsolicited packets are dropped, not reset (as home routers do; a reset would
    // break TCP hole punching).
    let why = connect_fails(&mallory, SocketAddrV4::new(bob.public_ip(), 7000), short);
    assert_eq!(why, "TimeoutError");
    // The home address: the internet has no route to 10.N.0.0/24.
    connect_fails(&mallory, SocketAddrV4::new(bob.ip(), 7000), short);
    // Even with a route through the router (as a neighbour on the same link could add), its forward chain drops it.
    let [a, b, ..] = bob.ip().octets();
    let route = mallory
        .command("ip")
        .args(["route", "add", &format!("{a}.{b}.0.0/24"), "via", &bob.public_ip().to_string()])
        .status()
        .unwrap();
    assert!(route.success());
    assert_eq!(connect_fails(&mallory, SocketAddrV4::new(bob.ip(), 7000), short), "TimeoutError");

    // The server did listen all along: the first connection it ever accepted is this local one.
    connect_ok(&bob, SocketAddrV4::new([127, 0, 0, 1].into(), 7000));
    assert_eq!(*server.next_peer().ip(), std::net::Ipv4Addr::LOCALHOST);
}

#[test]
fn symmetric_nat_maps_each_destination_to_its_own_port_and_endpoint_independent_keeps_it() {
    let Some(mut lab) = lab() else { return };
    let carol = lab.home("carol", Nat::Symmetric).unwrap();
    let dave = lab.home("dave", Nat::EndpointIndependent).unwrap();
    let mut servers = Vec::new();
    let mut destinations = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let host = lab.public_host(name).unwrap();
        destinations.push(SocketAddrV4::new(host.ip(), 9000));
        servers.push(Server::start(&mut lab, &host, 9000, 2));
    }
    const LOCAL: u16 = 40000;
    let all_from_local = vec![Outcome::Connected(LOCAL); 3];

    // Same local port to three destinations, all sockets open at once.
    assert_eq!(connect(&carol, LOCAL, Duration::from_secs(3), &destinations), all_from_local);
    let carol_seen: Vec<SocketAddrV4> = servers.iter().map(|s| s.next_peer()).collect();
    assert_eq!(connect(&dave, LOCAL, Duration::from_secs(3), &destinations), all_from_local);
    let dave_seen: Vec<SocketAddrV4> = servers.iter().map(|s| s.next_peer()).collect();

    assert!(carol_seen.iter().all(|p| *p.ip() == carol.public_ip()), "{carol_seen:?}");
    // Fully random ports: all three equal by chance has probability about 1 in 4e9.
    let carol_ports: BTreeSet<u16> = carol_seen.iter().map(|p| p.port()).collect();
    assert!(carol_ports.len() > 1, "symmetric NAT reused one port for every destination: {carol_seen:?}");

    let expected = SocketAddrV4::new(dave.public_ip(), LOCAL);
    assert_eq!(dave_seen, vec![expected; 3], "endpoint-independent NAT should keep the port");
}
