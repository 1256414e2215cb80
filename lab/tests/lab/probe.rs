//! The harness: a lab-or-skip helper, and tiny Python TCP probes (the lab machines have no `ping`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Stdio;
use std::time::Duration;

use kabar_lab::{Host, Lab, LabProcess, OutputLines};

/// Upper bound for any wait on a probe's output.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Accepts up to `argv[2]` connections on 0.0.0.0:`argv[1]`, printing `listening` once, then `peer <ip> <port>`
/// per connection; gives up after 30 s without one.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
s.settimeout(30)
print("listening", flush=True)
for _ in range(int(sys.argv[2])):
    c, (host, port) = s.accept()
    print("peer", host, port, flush=True)
    c.close()
"#;

/// Connects from local port `argv[1]` (0: any) to each `ip:port` in `argv[3:]`, each with a timeout of `argv[2]`
/// seconds, keeping every socket open until the end (so one local port can serve several destinations).
/// Prints `connected <local port>` or `failed <error>` per destination.
const CLIENT: &str = r#"
import socket, sys
src, timeout = int(sys.argv[1]), float(sys.argv[2])
held = []
for dst in sys.argv[3:]:
    host, port = dst.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(timeout)
    if src:
        s.bind(("0.0.0.0", src))
    try:
        s.connect((host, int(port)))
        print("connected", s.getsockname()[1], flush=True)
        held.append(s)
    except OSError as e:
        print("failed", type(e).__name__, flush=True)
"#;

/// A fresh lab, or `None` (after saying why) when this machine cannot run one.
pub(crate) fn lab() -> Option<Lab> {
    if let Err(why) = Lab::available() {
        assert!(std::env::var_os("KABAR_LAB_REQUIRED").is_none(), "KABAR_LAB_REQUIRED is set but: {why}");
        eprintln!("skipping network lab test: {why}");
        return None;
    }
    Some(Lab::new().expect("create lab"))
}

/// A running [`SERVER`] on `host`, already listening.
pub(crate) struct Server {
    pub(crate) process: LabProcess,
    lines: OutputLines,
}

impl Server {
    pub(crate) fn start(lab: &mut Lab, host: &Host, port: u16, connections: u32) -> Server {
        let mut cmd = host.command("python3");
        cmd.args(["-c", SERVER, &port.to_string(), &connections.to_string()]).stdout(Stdio::piped());
        let mut process = lab.spawn(&mut cmd).expect("spawn server");
        let lines = process.stdout_lines().expect("server stdout");
        lines.wait_for(WAIT, |l| l == "listening").expect("server listening");
        Server { process, lines }
    }

    /// The peer address of the next accepted connection.
    pub(crate) fn next_peer(&self) -> SocketAddrV4 {
        let line = self.lines.next_within(WAIT).expect("a peer line");
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("peer"), "{line}");
        let ip: Ipv4Addr = words.next().and_then(|w| w.parse().ok()).expect("peer ip");
        let port: u16 = words.next().and_then(|w| w.parse().ok()).expect("peer port");
        SocketAddrV4::new(ip, port)
    }
}

/// What one connection attempt of [`CLIENT`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Connected from this local port.
    Connected(u16),
    /// Failed with this Python exception name.
    Failed(String),
}

/// Runs [`CLIENT`] on `host` to completion: one outcome per destination, in order.
pub(crate) fn connect(host: &Host, local_port: u16, timeout: Duration, to: &[SocketAddrV4]) -> Vec<Outcome> {
    let out = host
        .command("python3")
        .args(["-c", CLIENT, &local_port.to_string(), &timeout.as_secs_f64().to_string()])
        .args(to.iter().map(ToString::to_string))
        .output()
        .expect("run client");
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    let outcomes: Vec<Outcome> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("connected", port)) => Outcome::Connected(port.parse().expect("local port")),
            Some(("failed", why)) => Outcome::Failed(why.to_owned()),
            _ => panic!("unexpected client line {l:?}"),
        })
        .collect();
    assert_eq!(outcomes.len(), to.len());
    outcomes
}

/// Connects once and insists it worked.
pub(crate) fn connect_ok(host: &Host, to: SocketAddrV4) {
    let outcome = connect(host, 0, Duration::from_secs(3), &[to]);
    assert!(matches!(outcome[..], [Outcome::Connected(_)]), "{} -> {to}: {outcome:?}", host.name());
}

/// Connects once and insists it failed within `timeout`.
pub(crate) fn connect_fails(host: &Host, to: SocketAddrV4, timeout: Duration) -> String {
    match connect(host, 0, timeout, &[to]).pop() {
        Some(Outcome::Failed(why)) => why,
        other => panic!("{} -> {to} should fail, got {other:?}", host.name()),
    }
}
