//! Where the test network's nodes run (loopback, or a network lab behind
//! NATs with relays) and the node, relay and mailbox host processes.

use std::io;
use std::process::ChildStdout;
use std::sync::mpsc::{RecvTimeoutError, SyncSender};

use super::*;

/// Nodes launched and not yet ready at most, while the network starts.
const START_AT_ONCE: usize = 16;
/// Longest a node may take from its launch to its start report (the first
/// line of its output; the node prints it once it listens).
pub(super) const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which processes of a loopback network are Kademlia servers
/// (`kabar testnet run --dht`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DhtServers {
    /// One service node (`kabar serve`), everyone's bootstrap peer; the
    /// profiles are clients, as behind a NAT: each connects to its
    /// contacts and the service node only.
    Service,
    /// Every profile (`--dht-server`), bootstrapping from the first node:
    /// every profile's queries walk the whole network, so each ends up
    /// connected to nearly every other.
    Profiles,
}

impl DhtServers {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DhtServers::Service => "service",
            DhtServers::Profiles => "profiles",
        }
    }
}

pub(super) enum Network {
    /// On loopback: every node bootstraps from the service node (`service`,
    /// with `--dht service`) or from the first node that started.
    Loopback { bootstrap: Option<String>, service: Option<ServiceHost> },
    /// In a network lab, each node in its own home behind a NAT.
    Lab(Box<NatLab>),
}

impl Network {
    /// The command that runs node `index` (`kabar node run` on `dir`, with
    /// the network flags of where it runs).
    pub(super) fn node_command(&self, index: usize, dir: &Path) -> Result<Command> {
        let exe = node_exe()?;
        let mut cmd = match self {
            Network::Loopback { .. } => Command::new(exe),
            Network::Lab(lab) => lab.homes[index].command(exe),
        };
        cmd.arg("--data-dir").arg(dir).args(["--json", "node", "run"]);
        match self {
            Network::Loopback { bootstrap, service } => {
                cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]);
                if service.is_none() {
                    cmd.arg("--dht-server");
                }
                if let Some(b) = bootstrap {
                    cmd.args(["--bootstrap", b]);
                }
            }
            Network::Lab(lab) => {
                let relay = lab.relay_for(index);
                cmd.args(["--listen", "/ip4/0.0.0.0/tcp/0", "--listen", "/ip4/0.0.0.0/udp/0/quic-v1", "--no-mdns"])
                    .args(["--relay", relay, "--bootstrap", relay]);
            }
        }
        Ok(cmd)
    }

    /// `RUST_LOG` of the processes unless set: in the lab, `info` keeps the
    /// relay reservations and hole-punch outcomes in the logs.
    pub(super) fn default_log(&self) -> &'static str {
        match self {
            Network::Loopback { .. } => "warn",
            Network::Lab(_) => "info",
        }
    }

    /// Starts `cmd` (from [`Network::node_command`]) and returns the
    /// process with its output, which the node's start report comes on.
    pub(super) fn launch(&mut self, cmd: &mut Command) -> Result<(NodeChild, ChildStdout)> {
        let (child, stdout) = match self {
            Network::Loopback { .. } => {
                let mut child = cmd.spawn().context("starting a node process")?;
                let stdout = child.stdout.take();
                (NodeChild::Local(child), stdout)
            }
            Network::Lab(lab) => {
                let mut process = lab.lab.spawn(cmd).context("starting a node process in the lab")?;
                let stdout = process.take_stdout();
                (NodeChild::Lab(process), stdout)
            }
        };
        Ok((child, stdout.ok_or_else(|| anyhow!("no stdout"))?))
    }

    /// Notes a node that started: on loopback, the first one is everyone's
    /// bootstrap peer.
    pub(super) fn started(&mut self, node: &NodeProc) {
        if let Network::Loopback { bootstrap, .. } = self
            && bootstrap.is_none()
        {
            *bootstrap = Some(node.personal_addr.clone());
        }
    }
}

/// The program the nodes run: this one, or `KABAR_TESTNET_NODE_EXE` (to
/// compare two builds of the node under the same driver).
fn node_exe() -> Result<PathBuf> {
    match std::env::var_os("KABAR_TESTNET_NODE_EXE") {
        Some(exe) => Ok(PathBuf::from(exe)),
        None => Ok(std::env::current_exe()?),
    }
}

/// Starts nodes `0..count`, each on its data directory under `root` (made
/// when missing): on loopback node 0 first and alone (it is everyone's
/// bootstrap peer), then all the others in parallel, at most
/// [`START_AT_ONCE`] launched and not yet ready at a time. A node that has
/// not reported within [`NODE_START_TIMEOUT`] of its launch is killed and
/// named in the second list, with those that failed otherwise. The nodes that started come back in index order.
pub(super) fn start_nodes(
    count: usize,
    root: &Path,
    net: &mut Network,
    interrupt: &Interrupt,
    progress: &ProgressBar,
) -> Result<(Vec<NodeProc>, Vec<String>)> {
    let mut key_rng = rand::rng();
    let (tx, reports) = std::sync::mpsc::sync_channel(count.max(1));
    let mut started: Vec<NodeProc> = Vec::with_capacity(count);
    let mut failed = Vec::new();
    // Launched, not yet ready: the node and when it was launched.
    let mut starting: BTreeMap<usize, (NodeProc, Instant)> = BTreeMap::new();
    let mut next = 0;
    while next < count || !starting.is_empty() {
        interrupt.check()?;
        let bootstrap_first = matches!(net, Network::Loopback { bootstrap: None, .. });
        let at_once = if bootstrap_first { 1 } else { START_AT_ONCE };
        while starting.len() < at_once && next < count {
            let i = next;
            next += 1;
            let dir = root.join(format!("node-{i:02}"));
            let launched = prepare_dir(&dir, &mut key_rng).and_then(|()| NodeProc::launch(i, &dir, net, &tx));
            match launched {
                Ok(node) => {
                    starting.insert(i, (node, Instant::now()));
                }
                Err(e) => {
                    if bootstrap_first {
                        bail!("the bootstrap node failed to start: {e:#}");
                    }
                    failed.push(format!("node {i}: {e:#}"));
                    progress.inc(1);
                }
            }
        }
        let Some(oldest) = starting.values().map(|(_, at)| *at).min() else { continue };
        let until = oldest + NODE_START_TIMEOUT;
        let wait = until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        match reports.recv_timeout(wait) {
            Ok((i, report)) => {
                let Some((mut node, _)) = starting.remove(&i) else { continue };
                match node.ready(report) {
                    Ok(()) => {
                        net.started(&node);
                        started.push(node);
                    }
                    Err(e) if bootstrap_first => bail!("the bootstrap node failed to start: {e:#}"),
                    Err(e) => failed.push(format!("node {i}: {e:#}")),
                }
                progress.inc(1);
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                let late: Vec<usize> =
                    starting.iter().filter(|(_, (_, at))| now >= *at + NODE_START_TIMEOUT).map(|(i, _)| *i).collect();
                for i in late {
                    let Some((node, at)) = starting.remove(&i) else { continue };
                    let why = format!(
                        "no start report {:.1} s after its launch; see {}",
                        now.duration_since(at).as_secs_f64(),
                        node.log_path().display()
                    );
                    // Dropping the node kills its process.
                    drop(node);
                    if bootstrap_first {
                        bail!("the bootstrap node failed to start: {why}");
                    }
                    failed.push(format!("node {i}: {why}"));
                    progress.inc(1);
                }
            }
            Err(RecvTimeoutError::Disconnected) => bail!("the start reports' channel closed"),
        }
    }
    started.sort_by_key(|n| n.index);
    Ok((started, failed))
}

/// Makes a node's data directory (a personal and a business profile) unless
/// it exists.
fn prepare_dir(dir: &Path, key_rng: &mut rand::rngs::ThreadRng) -> Result<()> {
    if !dir.join(kabar_storage::header::HEADER_FILE).exists() {
        let mut data = DataDir::create(dir, PASSPHRASE.as_bytes(), KdfParams::TESTNET)?;
        data.create_profile("personal", ProfileKind::Personal, 1_700_000_000, key_rng)?;
        data.create_profile("shop", ProfileKind::Business, 1_700_000_000, key_rng)?;
    }
    Ok(())
}

/// The lab of `--nat`: relays on public hosts, and one home per node, each
/// behind its own NAT router.
pub(super) struct NatLab {
    pub(super) seed: u64,
    /// Per node index: the NAT in front of it, and its home host.
    pub(super) nats: Vec<Nat>,
    pub(super) homes: Vec<Host>,
    pub(super) relays: Vec<RelayProc>,
    /// Declared last, so it drops last: its Drop kills every process it
    /// started and deletes its namespaces.
    pub(super) lab: Lab,
}

impl NatLab {
    /// Builds the lab for `nodes` nodes and starts the relays. Node i is
    /// behind a symmetric NAT with probability `opts.symmetric`, drawn from
    /// `rng` in node order.
    pub(super) fn build(opts: &NatOptions, seed: u64, nodes: usize, root: &Path, rng: &mut StdRng) -> Result<NatLab> {
        let mut lab = Lab::new().context("building the network lab")?;
        let nats: Vec<Nat> = (0..nodes)
            .map(|_| if rng.random_bool(opts.symmetric) { Nat::Symmetric } else { Nat::EndpointIndependent })
            .collect();
        let relay_hosts =
            (0..opts.relays).map(|r| lab.public_host(&format!("relay-{r:02}"))).collect::<Result<Vec<_>, _>>()?;
        let homes = nats
            .iter()
            .enumerate()
            .map(|(i, nat)| lab.home(&format!("node-{i:02}"), *nat))
            .collect::<Result<Vec<_>, _>>()?;
        let mut relays = Vec::with_capacity(relay_hosts.len());
        for (r, host) in relay_hosts.into_iter().enumerate() {
            relays.push(RelayProc::start(&mut lab, host, &root.join(format!("relay-{r:02}")))?);
        }
        Ok(NatLab { seed, nats, homes, relays, lab })
    }

    /// The relay of node `index` (round robin over the relays).
    pub(super) fn relay_for(&self, index: usize) -> &str {
        &self.relays[index % self.relays.len()].address
    }
}

/// A `kabar serve` process on a public host of the lab.
pub(super) struct RelayProc {
    pub(super) host: Host,
    /// `/ip4/<ip>/tcp/4040/p2p/<PeerId>`.
    pub(super) address: String,
    /// Killed on drop.
    pub(super) _process: LabProcess,
}

impl RelayProc {
    pub(super) fn start(lab: &mut Lab, host: Host, dir: &Path) -> Result<RelayProc> {
        let log_path = dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let exe = std::env::current_exe()?;
        let mut cmd = host.command(exe);
        cmd.args(["--json", "--data-dir"])
            .arg(dir)
            .arg("serve")
            .args(["--listen", &format!("/ip4/0.0.0.0/tcp/{RELAY_PORT}")])
            .args(["--listen", &format!("/ip4/0.0.0.0/udp/{RELAY_PORT}/quic-v1")])
            .arg("--autonat-private")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = lab.spawn(&mut cmd).context("starting a relay in the lab")?;
        let line = process
            .stdout_lines()?
            .next_within(LAB_START_TIMEOUT)
            .with_context(|| format!("the relay did not start; see {}", log_path.display()))?;
        let started: Value = serde_json::from_str(&line).context("the relay's start report")?;
        let peer = started["peer_id"].as_str().ok_or_else(|| anyhow!("the relay reported no peer id: {line}"))?;
        let address = format!("/ip4/{}/tcp/{RELAY_PORT}/p2p/{peer}", host.ip());
        Ok(RelayProc { host, address, _process: process })
    }
}

/// A `kabar serve` on loopback: the network's Kademlia server (`--dht
/// service`), or with `--mailbox` a host of the profiles' mailboxes
/// (`--offline-rate`). Killed on drop.
pub(super) struct ServiceHost {
    /// `/ip4/127.0.0.1/tcp/<port>/p2p/<PeerId>`.
    pub(super) address: String,
    pub(super) _process: NodeChild,
}

impl ServiceHost {
    /// Starts a service node (a mailbox host with `mailbox`) with its data
    /// in `dir` and waits for its address (the first line of its `--json`
    /// output).
    pub(super) fn start(dir: &Path, mailbox: bool) -> Result<ServiceHost> {
        let log_path = dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--json", "--data-dir"])
            .arg(dir)
            .arg("serve")
            .args(mailbox.then_some("--mailbox"))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting a service node")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"));
        let process = NodeChild::Local(child);
        let mut line = String::new();
        BufReader::new(stdout?).read_line(&mut line)?;
        let did_not_start = || format!("the service node did not start; see {}", log_path.display());
        let started: Value = serde_json::from_str(&line).with_context(did_not_start)?;
        let address = started["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
            .ok_or_else(|| anyhow!("the service node reported no loopback address: {line}"))?
            .to_string();
        Ok(ServiceHost { address, _process: process })
    }
}

/// A node's running process: our child, or one the lab started in a
/// namespace. Dropping it kills it.
pub(super) enum NodeChild {
    Local(Child),
    Lab(LabProcess),
}

impl NodeChild {
    pub(super) fn id(&self) -> u32 {
        match self {
            NodeChild::Local(c) => c.id(),
            NodeChild::Lab(p) => p.id(),
        }
    }

    pub(super) fn running(&mut self) -> bool {
        match self {
            NodeChild::Local(c) => matches!(c.try_wait(), Ok(None)),
            NodeChild::Lab(p) => matches!(p.try_wait(), Ok(None)),
        }
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        // A LabProcess kills itself on drop.
        if let NodeChild::Local(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(super) struct NodeProc {
    pub(super) index: usize,
    pub(super) dir: PathBuf,
    pub(super) child: Option<NodeChild>,
    pub(super) personal_addr: String,
    pub(super) pid: u32,
    pub(super) peak_rss_kib: u64,
    pub(super) restarts: u32,
}

impl NodeProc {
    /// Starts node `index`'s process; it is ready once its start report
    /// comes on `reports` (tagged with `index`) and [`NodeProc::ready`]
    /// takes it.
    pub(super) fn launch(
        index: usize,
        dir: &Path,
        net: &mut Network,
        reports: &SyncSender<(usize, io::Result<String>)>,
    ) -> Result<NodeProc> {
        let mut node = NodeProc {
            index,
            dir: dir.to_path_buf(),
            child: None,
            personal_addr: String::new(),
            pid: 0,
            peak_rss_kib: 0,
            restarts: 0,
        };
        node.relaunch(net, reports)?;
        Ok(node)
    }

    /// Starts the node's process (again), as [`NodeProc::launch`].
    fn relaunch(&mut self, net: &mut Network, reports: &SyncSender<(usize, io::Result<String>)>) -> Result<()> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = net.node_command(self.index, &self.dir)?;
        cmd.env("KABAR_PASSPHRASE", PASSPHRASE)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| net.default_log().into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let (child, stdout) = net.launch(&mut cmd).with_context(|| self.did_not_start())?;
        self.pid = child.id();
        self.child = Some(child);
        // One line, then the pipe closes (the node carries on). The thread
        // ends with it, or when the process ends (killed if never ready).
        let (index, reports) = (self.index, reports.clone());
        std::thread::Builder::new()
            .name(format!("testnet-start-{index}"))
            .spawn(move || {
                let mut line = String::new();
                let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
                let _ = reports.send((index, read));
            })
            .context("starting a thread to read a node's start report")?;
        Ok(())
    }

    /// Takes the node's start report (the first line of its output).
    pub(super) fn ready(&mut self, report: io::Result<String>) -> Result<()> {
        let started: Value = report
            .map_err(anyhow::Error::from)
            .and_then(|line| serde_json::from_str(&line).map_err(anyhow::Error::from))
            .with_context(|| self.did_not_start())?;
        self.personal_addr = started["profiles"][0]["listen_addrs"][0].as_str().unwrap_or_default().to_string();
        Ok(())
    }

    /// Starts the node's process again (after a kill or a stop) and waits
    /// for its start report, at most [`NODE_START_TIMEOUT`].
    pub(super) fn spawn(&mut self, net: &mut Network) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.relaunch(net, &tx)?;
        let report = match rx.recv_timeout(NODE_START_TIMEOUT) {
            Ok((_, report)) => report,
            Err(_) => {
                self.kill();
                return Err(anyhow!("no start report within {NODE_START_TIMEOUT:?}"))
                    .with_context(|| self.did_not_start());
            }
        };
        self.ready(report).inspect_err(|_| self.kill())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    fn did_not_start(&self) -> String {
        format!("node {} did not start; see {}", self.index, self.log_path().display())
    }

    pub(super) fn sample_rss(&mut self) {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    self.peak_rss_kib = self.peak_rss_kib.max(kib);
                }
            }
        }
    }

    pub(super) fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(NodeChild::running)
    }

    pub(super) fn kill(&mut self) {
        self.sample_rss();
        self.child = None;
    }

    /// Stops the node as a user would (`node.stop`), waits up to `grace`
    /// for the process to end, then kills it.
    pub(super) fn stop(&mut self, grace: Duration) {
        self.sample_rss();
        if self.client().and_then(|mut c| c.call("node.stop", json!({}))).is_ok() {
            let deadline = Instant::now() + grace;
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    pub(super) fn client(&self) -> Result<Client> {
        Client::connect(&self.dir)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ctrl-C as a flag the run's loops check: they then return an error, so
/// the nodes and the lab drop (the lab's Drop kills every process in it and
/// deletes its namespaces). A second Ctrl-C exits at once.
#[derive(Clone, Default)]
pub(super) struct Interrupt(Option<Arc<AtomicBool>>);

impl Interrupt {
    /// Catches Ctrl-C from now on.
    pub(super) fn install() -> Result<Interrupt> {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut sigint = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while sigint.recv().await.is_some() {
                    if set.swap(true, Ordering::SeqCst) {
                        std::process::exit(130);
                    }
                }
            });
        });
        ready_rx.recv().context("the Ctrl-C handler did not start")?.context("catching Ctrl-C")?;
        Ok(Interrupt(Some(flag)))
    }

    pub(super) fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// An error once Ctrl-C was pressed.
    pub(super) fn check(&self) -> Result<()> {
        if self.is_set() {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Blocks until Ctrl-C (catching it from now on if not yet).
    pub(super) fn wait(self) -> Result<()> {
        let this = if self.0.is_some() { self } else { Interrupt::install()? };
        while !this.is_set() {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// What the event readers saw: when each message (by id) was first
/// reported stored in a mailbox, and delivered (or read).
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    pub(super) stored: HashMap<String, Instant>,
    pub(super) delivered: HashMap<String, Instant>,
}

/// One message of the traffic.
pub(super) struct Sent {
    pub(super) from: usize,
    pub(super) to_node: usize,
    pub(super) to_profile: &'static str,
    /// The sender's name for the recipient (friend-NN or shop-NN).
    pub(super) to_name: String,
    pub(super) tag: String,
    pub(super) at: Instant,
    /// Sent while hostile actors were attacking (`--hostile`).
    pub(super) hostile: bool,
}
