//! Running a node: every profile of a data directory on its own swarm, the
//! control socket, and a clean shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use kabar_storage::DataDir;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::control::{self, ControlState, ProfileHandle};
use crate::engine::{Engine, EngineConfig, NodeEvent};
use crate::network::{self, NetworkConfig};
use crate::profile::{Command, EngineJob, ProfileStatus};

/// What a node needs to start. `Debug` shows everything but the passphrase.
#[derive(Clone)]
pub struct NodeConfig {
    /// The data directory (created with `kabar init`).
    pub data_dir: PathBuf,
    /// Its passphrase.
    pub passphrase: Vec<u8>,
    /// Network settings shared by all profiles.
    pub network: NetworkConfig,
    /// Delivery engine settings.
    pub engine: EngineConfig,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("data_dir", &self.data_dir)
            .field("passphrase", &"<redacted>")
            .field("network", &self.network)
            .field("engine", &self.engine)
            .finish()
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory or a profile store.
    #[error(transparent)]
    Store(#[from] kabar_storage::StoreError),
    /// The network.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The control socket.
    #[error("control socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The data directory lists no profile: nothing to run.
    #[error(
        "{0} has no profile: create one with `kabar profile create NAME --kind personal|business` (the node must be stopped)"
    )]
    NoProfiles(PathBuf),
}

/// What [`Node::start_profiles`] starts: the stop switch, the profile
/// tasks, their handles and the event channel.
type Started = (watch::Sender<bool>, Vec<JoinHandle<()>>, Vec<(String, ProfileHandle)>, broadcast::Sender<NodeEvent>);

/// Runs a profile's task; if it panics (redb on a page damaged while the
/// node runs, or a bug), the node runs on and the profile shows `failed`
/// in `node info` with the panic's message. The unwinding drops its store
/// without writing (redb does not write while a thread panics).
async fn supervised(name: String, file: PathBuf, run: impl Future<Output = ()>, status: watch::Sender<ProfileStatus>) {
    if let Err(panic) = std::panic::AssertUnwindSafe(run).catch_unwind().await {
        let reason = format!(
            "{}: the profile stopped on an internal error (a damaged page, or a bug): {}",
            file.display(),
            kabar_storage::check::panic_text(panic.as_ref())
        );
        tracing::error!(profile = %name, %reason, "profile stopped");
        status.send_modify(|s| s.failed = Some(reason));
    }
}

/// A running node.
pub struct Node {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    socket: PathBuf,
    /// The socket file we bound (only that one is ours to remove).
    socket_id: Option<control::SocketId>,
    state: Arc<ControlState>,
}

impl Node {
    /// Opens the data directory, starts one swarm per profile and the
    /// control socket.
    ///
    /// Every profile's store is verified before any file is written
    /// ([`DataDir::open_profiles`]): if one is damaged the node does not
    /// start, the error names the file and the damage, and no byte of any
    /// file has changed (the control socket it bound is removed again).
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (listener, socket) = control::bind(&config.data_dir).await?;
        let socket_id = control::SocketId::of(&socket);
        let started = Self::start_profiles(&config).await;
        let (stop, mut tasks, profiles, events) = match started {
            Ok(started) => started,
            Err(e) => {
                control::remove_if_ours(&socket, socket_id);
                return Err(e);
            }
        };
        let idle_ms = std::sync::atomic::AtomicU64::new(control::IDLE_TIMEOUT.as_millis() as u64);
        let state = Arc::new(ControlState { profiles, events, stop: stop.clone(), idle_ms });
        tasks.push(tokio::spawn(control::serve(listener, state.clone())));
        Ok(Node { stop, tasks, socket, socket_id, state })
    }

    /// Opens every profile and starts its task.
    async fn start_profiles(config: &NodeConfig) -> Result<Started, NodeError> {
        let dir = DataDir::open(&config.data_dir, &config.passphrase)?;
        if dir.profiles().is_empty() {
            return Err(NodeError::NoProfiles(config.data_dir.clone()));
        }
        let stores = dir.open_profiles()?;
        let (stop, _) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        // Every engine and swarm is built (reads only) before any profile
        // writes or starts: an error here leaves every file as it was.
        let mut built = Vec::with_capacity(stores.len());
        for (entry, store) in dir.profiles().iter().zip(stores) {
            let file = store.path().to_path_buf();
            let seed = store.identity()?.signing_seed();
            let inflight = crate::wire::InflightBudget::default();
            let swarm = network::build_swarm(&seed, &config.network, inflight.clone())?;
            let status = ProfileStatus {
                name: entry.name.clone(),
                kind: entry.kind.to_string(),
                peer_id: swarm.local_peer_id().to_string(),
                nat: "unknown".into(),
                ..Default::default()
            };
            let engine = Engine::new(store, config.engine)?;
            built.push((entry.name.clone(), file, swarm, status, engine, inflight));
        }
        let mut tasks = Vec::new();
        let mut profiles = Vec::new();
        for (name, file, swarm, status, mut engine, inflight) in built {
            // A store migrated from protocol version 1 holds version 1
            // envelopes in its outbox: encrypt them again now. The entries
            // are due at once, so the loop's first tick transmits them.
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            engine.upgrade_outbox(now_ms, &mut rand::rng())?;
            let (cmd_tx, cmd_rx) = mpsc::channel(64);
            let (status_tx, status_rx) = watch::channel(status);
            let on_panic = status_tx.clone();
            let run = network::run_profile(
                swarm,
                engine,
                config.network.clone(),
                network::ProfileLinks {
                    commands: cmd_rx,
                    events: events.clone(),
                    status: status_tx,
                    shutdown: stop.subscribe(),
                    inflight,
                },
            );
            tasks.push(tokio::spawn(supervised(name.clone(), file, run, on_panic)));
            profiles.push((name, ProfileHandle { commands: cmd_tx, status: status_rx }));
        }
        Ok((stop, tasks, profiles, events))
    }

    /// Sets how long an idle control connection stays open (default
    /// [`control::IDLE_TIMEOUT`]).
    pub fn set_control_idle(&self, idle: std::time::Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        self.state.idle_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs `f` on the engine of `profile`, on the engine's thread, in turn
    /// with everything else the engine does (for tests and embedders: the
    /// control API is the interface). `None` if there is no such profile or
    /// it stopped before `f` ran.
    pub async fn with_engine<T: Send + 'static>(
        &self,
        profile: &str,
        f: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> Option<T> {
        let (_, handle) = self.state.profiles.iter().find(|(n, _)| n == profile)?;
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        let job = EngineJob::new(move |engine, _| {
            let _ = result_tx.send(f(engine));
            Ok((serde_json::Value::Null, Vec::new()))
        });
        let (answer, _) = tokio::sync::oneshot::channel();
        handle.commands.send(Command::Job(job, answer)).await.ok()?;
        result_rx.await.ok()
    }

    /// The control socket's path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Live status of every profile.
    pub fn profiles(&self) -> Vec<ProfileStatus> {
        self.state.profiles.iter().map(|(_, h)| h.status.borrow().clone()).collect()
    }

    /// A profile's live status, to wait on changes (reservations, NAT
    /// status, connections).
    pub fn status_watch(&self, profile: &str) -> Option<watch::Receiver<ProfileStatus>> {
        self.state.profiles.iter().find(|(n, _)| n == profile).map(|(_, h)| h.status.clone())
    }

    /// Waits until every profile listens on at least one address.
    pub async fn wait_listening(&self) {
        for (_, handle) in &self.state.profiles {
            let mut status = handle.status.clone();
            let _ = status.wait_for(|s| !s.listen_addrs.is_empty() || s.failed.is_some()).await;
        }
    }

    /// Resolves when something asked the node to stop (`node.stop`).
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops abruptly, as a crash would between two events: tasks are
    /// aborted at their next await point, nothing is flushed. (Commits are
    /// synchronous, so a task never stops halfway through one.)
    pub async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops: profiles finish the event they are handling (commits complete),
    /// swarms close, the socket is removed.
    pub async fn shutdown(self) {
        // The socket goes first, while our listener still answers on it (so
        // no new node can have taken its place), and only if it is still the
        // file we bound: a node started while this one stops binds its own.
        control::remove_if_ours(&self.socket, self.socket_id);
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_passphrase() {
        let config = NodeConfig {
            data_dir: "/tmp/x".into(),
            passphrase: b"correct horse battery staple".to_vec(),
            network: NetworkConfig::default(),
            engine: EngineConfig::default(),
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("horse"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", config.passphrase)), "bytes shown: {shown}");
        assert!(shown.contains("<redacted>") && shown.contains("/tmp/x"));
    }
}
