//! [`Lab`]: builds the namespaces, links, addresses and NAT rules, and tears them down.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::{LabProcess, Slot, kill_slot};
use crate::system::Tools;
use crate::{Host, LabError, Nat};

/// A host's interface, and a router's LAN side.
pub(crate) const HOST_IF: &str = "eth0";
/// A router's internet side.
pub(crate) const WAN_IF: &str = "wan0";
const LAN_IF: &str = "lan0";
const BRIDGE: &str = "br0";
/// Prefix length of the internet, 198.18.0.0/16.
const INTERNET_PREFIX: u8 = 16;

/// Labs made by this process so far; part of each lab's namespace prefix so parallel tests never collide.
static LABS: AtomicU32 = AtomicU32::new(0);

/// A small internet of network namespaces. See the [crate documentation](crate) for the topology.
///
/// Dropping the lab SIGKILLs and reaps every process it spawned, SIGKILLs anything else still running in its
/// namespaces, and deletes the namespaces (which destroys their links, addresses and NAT state). Errors during
/// cleanup are ignored. Drop also runs while a panicking test unwinds.
#[derive(Debug)]
pub struct Lab {
    tools: Tools,
    /// `kl<pid>x<lab>`; namespaces are `<prefix>n<k>`.
    prefix: String,
    /// The internet namespace, holding the bridge.
    internet: String,
    /// Every namespace created, in order.
    namespaces: Vec<String>,
    /// Bridge ports made so far (names `p<k>` in the internet namespace).
    ports: u32,
    /// Offset in 198.18.0.0/16 of the next public address.
    next_public: u32,
    /// Number of the next home network, 10.N.0.0/24.
    next_home: u8,
    processes: Vec<Slot>,
}

impl Lab {
    /// Checks what [`Lab::new`] needs, without side effects: root (effective uid 0, read from
    /// `/proc/self/status`) and the `ip`, `nft`, `sysctl` and `kill` programs. Tests call it to skip with a
    /// clear reason.
    pub fn available() -> Result<(), LabError> {
        Tools::check().map(drop)
    }

    /// Creates an empty lab: the internet namespace with its bridge.
    ///
    /// First deletes stale lab namespaces whose creating process is gone (a test run that was SIGKILLed could
    /// not run `Drop`), killing whatever still runs inside them.
    pub fn new() -> Result<Lab, LabError> {
        let tools = Tools::check()?;
        tools.sweep_stale();
        let prefix = format!("kl{}x{}", std::process::id(), LABS.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab {
            tools,
            prefix,
            internet: String::new(),
            namespaces: Vec::new(),
            ports: 0,
            next_public: 2,
            next_home: 1,
            processes: Vec::new(),
        };
        // On error `lab` drops here and deletes whatever was already made.
        lab.internet = lab.add_namespace()?;
        lab.tools.ip_in(&lab.internet, ["link", "add", BRIDGE, "type", "bridge"])?;
        lab.tools.ip_in(&lab.internet, ["link", "set", BRIDGE, "up"])?;
        Ok(lab)
    }

    /// A host directly on the internet: `eth0` with a fresh 198.18.x.y/16, no default route.
    pub fn public_host(&mut self, name: &str) -> Result<Host, LabError> {
        let ns = self.add_namespace()?;
        let ip = self.attach_to_internet(&ns, HOST_IF)?;
        Ok(Host::public(name, ns, ip, self.tools.ip.clone()))
    }

    /// A host behind its own NAT router, on home network 10.N.0.0/24 (N = 1, 2, … per lab).
    ///
    /// The router's `wan0` is on the internet with a fresh 198.18.x.y/16; its `lan0` is 10.N.0.1/24 and the
    /// host's `eth0` is 10.N.0.2/24 with a default route via 10.N.0.1. The router forwards and masquerades
    /// what the host sends out and lets back in only replies (conntrack established/related): unsolicited
    /// inbound never reaches the host. TCP to a closed port on the router itself gets a reset.
    pub fn home(&mut self, name: &str, nat: Nat) -> Result<Host, LabError> {
        let n = self.next_home;
        if n == 255 {
            return Err(LabError::Exhausted("home networks (10.1.0.0/24 to 10.254.0.0/24)"));
        }
        self.next_home += 1;
        let router = self.add_namespace()?;
        let host = self.add_namespace()?;
        let public = self.attach_to_internet(&router, WAN_IF)?;

        let (gateway, lan_ip) = (Ipv4Addr::new(10, n, 0, 1), Ipv4Addr::new(10, n, 0, 2));
        let ip = |ns: &str, args: &[&str]| self.tools.ip_in(ns, args);
        ip(&router, &["link", "add", LAN_IF, "type", "veth", "peer", "name", HOST_IF, "netns", &host])?;
        ip(&router, &["addr", "add", &format!("{gateway}/24"), "dev", LAN_IF])?;
        ip(&router, &["link", "set", LAN_IF, "up"])?;
        ip(&host, &["addr", "add", &format!("{lan_ip}/24"), "dev", HOST_IF])?;
        ip(&host, &["link", "set", HOST_IF, "up"])?;
        ip(&host, &["route", "add", "default", "via", &gateway.to_string()])?;
        self.tools.sysctl_in(&router, &["net.ipv4.ip_forward=1"])?;
        self.tools.nft_in(&router, &router_ruleset(nat))?;

        Ok(Host::home(name, host, router, lan_ip, public, nat, self.tools.ip.clone()))
    }

    /// Starts a long-running process; `cmd` must come from [`Host::command`] of a host of this lab.
    ///
    /// Set `stdout(Stdio::piped())` etc. on `cmd` first to read its output. The returned [`LabProcess`] kills the
    /// process when dropped, and so does the lab; for commands that run to completion, call
    /// `host.command(..).output()` directly instead.
    pub fn spawn(&mut self, cmd: &mut Command) -> Result<LabProcess, LabError> {
        let described = format!("{cmd:?}");
        let args: Vec<_> = cmd.get_args().take(3).collect();
        let ours = cmd.get_program() == self.tools.ip
            && args.len() == 3
            && args[0] == "netns"
            && args[1] == "exec"
            && args[2].to_str().is_some_and(|ns| self.namespaces.iter().any(|n| n == ns));
        if !ours {
            return Err(LabError::NotInLab(described));
        }
        let child = cmd.spawn().map_err(|source| LabError::Spawn { command: described, source })?;
        let (process, slot) = LabProcess::new(child, self.tools.kill.clone());
        // Forget processes that are already gone (their LabProcess was dropped).
        self.processes.retain(|s| s.lock().map(|c| c.is_some()).unwrap_or(true));
        self.processes.push(slot);
        Ok(process)
    }

    /// Gives the host a new public address and returns it: a public host's own, or a home host's router's
    /// `wan0` address. The new address is added before the old one is removed, so a program listening on
    /// 0.0.0.0 keeps its socket and just sees the address change. Removing the router's old address also makes
    /// the kernel flush the NAT mappings made with it, as when a real ISP hands out a new address.
    pub fn change_address(&mut self, host: &Host) -> Result<Ipv4Addr, LabError> {
        self.own_public_namespace(host)?;
        let (ns, dev) = host.public_interface();
        let old = host.public_ip();
        let new = self.next_public_ip()?;
        self.tools.ip_in(ns, ["addr", "add", &format!("{new}/{INTERNET_PREFIX}"), "dev", dev])?;
        // The new address is a secondary; promote_secondaries (set at creation) keeps it when the primary goes.
        self.tools.ip_in(ns, ["addr", "del", &format!("{old}/{INTERNET_PREFIX}"), "dev", dev])?;
        host.set_public_ip(new);
        Ok(new)
    }

    /// Cuts the path between `host` and the public address `peer` where `host` meets the internet (its router,
    /// or a public host itself): every packet to or from `peer` is dropped there, before NAT and connection
    /// tracking, until [`Lab::mend`]. Traffic with every other address (a relay, say) flows as before. Cutting
    /// an already cut host replaces the cut. A cut at one end still lets the other end's router see what its
    /// host sends (unanswered connection attempts whose tracking entries outlive the cut and can spoil a later
    /// TCP simultaneous open through it): to leave no state on either side, cut both ends.
    pub fn cut(&mut self, host: &Host, peer: Ipv4Addr) -> Result<(), LabError> {
        let ns = self.own_public_namespace(host)?;
        self.tools.nft_in(&ns, &cut_ruleset(Some(peer)))
    }

    /// Removes [`Lab::cut`]'s rule from `host`; a host with no cut is left as it is.
    pub fn mend(&mut self, host: &Host) -> Result<(), LabError> {
        let ns = self.own_public_namespace(host)?;
        self.tools.nft_in(&ns, &cut_ruleset(None))
    }

    /// The namespace where `host` meets the internet, if the host is this lab's.
    fn own_public_namespace(&self, host: &Host) -> Result<String, LabError> {
        if !self.namespaces.iter().any(|n| n == host.namespace()) {
            return Err(LabError::ForeignHost(format!("host {:?} ({})", host.name(), host.namespace())));
        }
        Ok(host.public_interface().0.to_string())
    }

    /// This lab's namespace name prefix, `kl<pid>x<lab>`: every namespace it makes is `<prefix>n<k>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace this lab has made so far (the internet first), all deleted when the lab drops.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Creates the next namespace, with `lo` up, and records it for cleanup.
    fn add_namespace(&mut self) -> Result<String, LabError> {
        let name = format!("{}n{}", self.prefix, self.namespaces.len());
        self.tools.create_namespace(&name)?;
        self.namespaces.push(name.clone());
        self.tools.ip_in(&name, ["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Links `dev` in namespace `ns` to the internet bridge and gives it a fresh public address.
    fn attach_to_internet(&mut self, ns: &str, dev: &str) -> Result<Ipv4Addr, LabError> {
        self.ports += 1;
        let port = format!("p{}", self.ports);
        let inet = self.internet.as_str();
        // Both ends are created directly inside their namespaces: nothing ever appears in the root namespace.
        self.tools.ip_in(inet, ["link", "add", &port, "type", "veth", "peer", "name", dev, "netns", ns])?;
        self.tools.ip_in(inet, ["link", "set", &port, "master", BRIDGE, "up"])?;
        // Without this, deleting the primary address also deletes the secondaries (see change_address).
        self.tools.sysctl_in(ns, &[&format!("net.ipv4.conf.{dev}.promote_secondaries=1")])?;
        let ip = self.next_public_ip()?;
        self.tools.ip_in(ns, ["addr", "add", &format!("{ip}/{INTERNET_PREFIX}"), "dev", dev])?;
        self.tools.ip_in(ns, ["link", "set", dev, "up"])?;
        Ok(ip)
    }

    fn next_public_ip(&mut self) -> Result<Ipv4Addr, LabError> {
        let (ip, next) =
            public_ip_at(self.next_public).ok_or(LabError::Exhausted("public addresses in 198.18.0.0/16"))?;
        self.next_public = next;
        Ok(ip)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for slot in self.processes.drain(..) {
            kill_slot(&slot);
        }
        for ns in self.namespaces.iter().rev() {
            self.tools.destroy_namespace(ns);
        }
    }
}

/// The first usable public address at or after `offset` in 198.18.0.0/16, and the offset after it. Skips
/// x.y.z.0 and x.y.z.255 so every address looks like a plain host address.
fn public_ip_at(mut offset: u32) -> Option<(Ipv4Addr, u32)> {
    while offset < 0xFFFF {
        if !matches!(offset & 0xFF, 0 | 0xFF) {
            return Some((Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + offset), offset + 1));
        }
        offset += 1;
    }
    None
}

/// The router's nftables ruleset: masquerade out of the WAN, forward only
/// what the home started, and drop (not reset) unsolicited packets to the
/// router itself, as home routers do: a reset would kill the first half of a
/// TCP simultaneous open (hole punching) before the other half arrives.
/// Chain names must not be nft keywords (`fwd` is one); nft applies a file
/// all or nothing.
fn router_ruleset(nat: Nat) -> String {
    let masquerade = match nat {
        Nat::EndpointIndependent => "masquerade",
        Nat::Symmetric => "masquerade random,fully-random",
    };
    format!(
        "table ip kabar_lab {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{WAN_IF}\" {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname \"{LAN_IF}\" oifname \"{WAN_IF}\" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname \"{WAN_IF}\" ct state established,related accept
        iifname \"{WAN_IF}\" drop
    }}
}}
"
    )
}

/// The nftables file of [`Lab::cut`] (`Some(peer)`) and [`Lab::mend`] (`None`): the `kabar_lab_cut` table is
/// declared (so deleting it never fails), deleted, and made again only for a cut. Its chain hooks prerouting
/// (what comes in from either side) and output (what the namespace sends itself) at raw priority, ahead of
/// connection tracking and NAT, so a dropped packet leaves no mapping behind.
fn cut_ruleset(peer: Option<Ipv4Addr>) -> String {
    let mut rules = String::from("table ip kabar_lab_cut\ndelete table ip kabar_lab_cut\n");
    if let Some(peer) = peer {
        rules.push_str(&format!(
            "table ip kabar_lab_cut {{
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        ip saddr {peer} drop
        ip daddr {peer} drop
    }}
    chain out {{
        type filter hook output priority raw; policy accept;
        ip daddr {peer} drop
    }}
}}
"
        ));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_both_directions_and_a_mend_only_deletes() {
        let cut = cut_ruleset(Some(Ipv4Addr::new(198, 18, 0, 7)));
        assert!(cut.contains("ip saddr 198.18.0.7 drop") && cut.contains("ip daddr 198.18.0.7 drop"));
        assert!(cut.starts_with("table ip kabar_lab_cut\ndelete table ip kabar_lab_cut\n"));
        assert_eq!(cut_ruleset(None), "table ip kabar_lab_cut\ndelete table ip kabar_lab_cut\n");
    }

    #[test]
    fn public_addresses_skip_network_and_broadcast_looking_ones() {
        assert_eq!(public_ip_at(2), Some((Ipv4Addr::new(198, 18, 0, 2), 3)));
        assert_eq!(public_ip_at(255), Some((Ipv4Addr::new(198, 18, 1, 1), 258)));
        assert_eq!(public_ip_at(0xFFFE), Some((Ipv4Addr::new(198, 18, 255, 254), 0xFFFF)));
        assert_eq!(public_ip_at(0xFFFF), None);
    }

    #[test]
    fn ruleset_flavours() {
        let ei = router_ruleset(Nat::EndpointIndependent);
        assert!(ei.contains("oifname \"wan0\" masquerade\n"));
        assert!(router_ruleset(Nat::Symmetric).contains("masquerade random,fully-random"));
        assert!(!ei.contains("chain fwd"));
    }
}
