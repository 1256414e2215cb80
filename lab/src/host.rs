//! [`Host`]: a handle on one machine of the lab.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use crate::system::netns_exec;

/// How a home router translates addresses (its nftables `masquerade` flavour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nat {
    /// `masquerade`: keeps the source port when it is free, so one inside port maps to one outside port whatever
    /// the destination (endpoint-independent mapping, the friendly kind: hole punching can work). Inbound is still
    /// only allowed for established connections.
    EndpointIndependent,
    /// `masquerade random,fully-random`: a random outside port per connection, so each destination sees a different
    /// port (symmetric NAT: hole punching cannot work).
    Symmetric,
}

/// A machine in the lab: a network namespace with one interface `eth0` and one address.
///
/// Cheap to clone; clones share the public address, which [`Lab::change_address`](crate::Lab::change_address)
/// updates. A `Host` does not own its namespace: the [`Lab`](crate::Lab) that made it does.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    namespace: String,
    kind: Kind,
    /// The public address: this host's own for a public host, its router's `wan0` address for a home host.
    public: Arc<Mutex<Ipv4Addr>>,
    ip_tool: PathBuf,
}

#[derive(Debug, Clone)]
enum Kind {
    Public,
    Home { router_namespace: String, lan_ip: Ipv4Addr, nat: Nat },
}

impl Host {
    pub(crate) fn public(name: &str, namespace: String, ip: Ipv4Addr, ip_tool: PathBuf) -> Host {
        Host { name: name.to_owned(), namespace, kind: Kind::Public, public: Arc::new(Mutex::new(ip)), ip_tool }
    }

    pub(crate) fn home(
        name: &str,
        namespace: String,
        router_namespace: String,
        lan_ip: Ipv4Addr,
        router_public_ip: Ipv4Addr,
        nat: Nat,
        ip_tool: PathBuf,
    ) -> Host {
        Host {
            name: name.to_owned(),
            namespace,
            kind: Kind::Home { router_namespace, lan_ip, nat },
            public: Arc::new(Mutex::new(router_public_ip)),
            ip_tool,
        }
    }

    /// The name given when the host was made (a label only; it is not used for the namespace).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace the host's programs run in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The address of the host's own interface: its public 198.18.x.y for a public host, 10.N.0.2 for a home host.
    pub fn ip(&self) -> Ipv4Addr {
        match &self.kind {
            Kind::Public => self.public_ip(),
            Kind::Home { lan_ip, .. } => *lan_ip,
        }
    }

    /// The address the rest of the internet sees: [`ip`](Self::ip) for a public host, the router's `wan0` address
    /// for a home host.
    pub fn public_ip(&self) -> Ipv4Addr {
        *self.public.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The NAT in front of the host, or `None` for a public host.
    pub fn nat(&self) -> Option<Nat> {
        match &self.kind {
            Kind::Public => None,
            Kind::Home { nat, .. } => Some(*nat),
        }
    }

    /// The namespace of the host's home router, or `None` for a public host.
    pub fn router_namespace(&self) -> Option<&str> {
        match &self.kind {
            Kind::Public => None,
            Kind::Home { router_namespace, .. } => Some(router_namespace),
        }
    }

    /// A command that runs `program` inside the host: `ip netns exec <namespace> <program>`.
    ///
    /// `ip` execs the program after entering the namespace, so the child's pid is the program's pid. Run it to
    /// completion with `output()`/`status()`, or hand it to [`Lab::spawn`](crate::Lab::spawn) for a long-running
    /// process the lab kills on drop.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_exec(&self.ip_tool, &self.namespace, program)
    }

    /// The namespace and interface that carry the public address.
    pub(crate) fn public_interface(&self) -> (&str, &'static str) {
        match &self.kind {
            Kind::Public => (&self.namespace, crate::lab::HOST_IF),
            Kind::Home { router_namespace, .. } => (router_namespace, crate::lab::WAN_IF),
        }
    }

    pub(crate) fn set_public_ip(&self, ip: Ipv4Addr) {
        *self.public.lock().unwrap_or_else(PoisonError::into_inner) = ip;
    }
}
