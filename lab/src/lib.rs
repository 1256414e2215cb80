//! A small internet on one Linux machine, built from network namespaces, for Kabar's integration tests and
//! `kabar testnet run --nat`.
//!
//! A [`Lab`] makes an "internet" namespace holding a bridge, and plugs into it public hosts
//! ([`Lab::public_host`]) and home routers with a host behind each ([`Lab::home`]). Routers are real Linux NAT:
//! IP forwarding plus an nftables `masquerade` rule, either endpoint-independent or symmetric ([`Nat`]). Every
//! [`Host`] runs programs through `ip netns exec` ([`Host::command`]); long-running ones are started with
//! [`Lab::spawn`] so the lab can kill them. Needs root, `ip` (iproute2), `nft` (nftables), `sysctl` and `kill`;
//! [`Lab::available`] says why not, without side effects.
//!
//! # Topology
//!
//! ```text
//!                        internet namespace: bridge br0, no address
//!        +---------------------------+----------------------------+------ ...
//!        | p1 (veth)                 | p2 (veth)                  | p3
//!        |                           |                            |
//!   eth0 198.18.0.2/16          wan0 198.18.0.3/16           wan0 198.18.0.4/16
//!   +-------------+             +------------------------+    +----------------+
//!   | public host |             | home router 1          |    | home router 2  |
//!   +-------------+             |  ip_forward=1          |    |  ...           |
//!                               |  masquerade out wan0   |    +----------------+
//!                               |  forward: policy drop, |           |
//!                               |   established,related, |          ...
//!                               |   lan0 -> wan0 accept  |
//!                               | lan0 10.1.0.1/24       |
//!                               +-----------+------------+
//!                                           | (veth)
//!                               eth0 10.1.0.2/24, default via 10.1.0.1
//!                               +------------------------+
//!                               | home host              |
//!                               +------------------------+
//! ```
//!
//! # Address plan
//!
//! - The internet is 198.18.0.0/16 (reserved for benchmarking, RFC 2544). Public hosts and router `wan0`s get
//!   198.18.0.2, .3, … in creation order; [`Lab::change_address`] hands out the next unused one. Public hosts have
//!   no default route: the /16 is on-link and there is nothing beyond it.
//! - Home N (1 to 254, per lab) is 10.N.0.0/24: router `lan0` 10.N.0.1, host `eth0` 10.N.0.2.
//! - Addresses repeat across labs, which is fine: each lab has its own internet namespace and nothing connects
//!   labs to each other or to the root namespace. The lab never touches the root namespace's interfaces, routes
//!   or firewall, and no route leads out of the lab.
//!
//! # Names
//!
//! Namespaces are `kl<pid>x<lab>n<k>`: the creating process id, a per-process lab counter (so parallel tests in one
//! process never collide) and the namespace's index (0 is the internet). Interfaces are created directly inside
//! their namespaces, so short fixed names (`eth0`, `wan0`, `lan0`, `br0`, `p<k>`) never clash.
//!
//! # Cleanup guarantees
//!
//! - Dropping a [`Lab`] (also while a test panics and unwinds) SIGKILLs and reaps every process it spawned,
//!   SIGKILLs anything else still running in its namespaces (`ip netns pids`), then deletes its namespaces, which
//!   destroys their links, addresses, routes, NAT rules and conntrack state. Errors are ignored.
//! - Dropping a [`LabProcess`] kills and reaps that process earlier.
//! - If the test process itself is SIGKILLed, nothing runs; the next [`Lab::new`] on the machine deletes namespaces
//!   whose creating pid no longer exists, after killing what still runs inside them.
//!
//! # Example
//!
//! ```no_run
//! use std::process::Stdio;
//! use std::time::Duration;
//! use kabar_lab::{Lab, Nat};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut lab = Lab::new()?;
//! let server = lab.public_host("server")?;
//! let alice = lab.home("alice", Nat::EndpointIndependent)?;
//! // A long-running program: killed when `daemon` or `lab` drops.
//! let mut daemon = lab.spawn(server.command("my-server").arg("--listen=0.0.0.0:4000").stdout(Stdio::piped()))?;
//! let lines = daemon.stdout_lines()?;
//! lines.wait_for(Duration::from_secs(10), |l| l.contains("listening"))?;
//! // A short command run to completion from behind alice's NAT.
//! let out = alice.command("my-client").arg(format!("{}:4000", server.ip())).output()?;
//! assert!(out.status.success());
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `lab`: [`Lab`], which builds and tears down the topology.
//! - `host`: [`Host`], a handle on one machine, and [`Nat`].
//! - `process`: [`LabProcess`], a spawned program the lab kills, and [`OutputLines`], its output with deadlines.
//! - `system`: everything that shells out to `ip`, `nft`, `sysctl` and `kill`.
//! - `error`: [`LabError`].

mod error;
mod host;
mod lab;
mod process;
mod system;

pub use error::LabError;
pub use host::{Host, Nat};
pub use lab::Lab;
pub use process::{LabProcess, OutputLines};
