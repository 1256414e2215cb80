//! The connection's framing, driven by hand: fake profiles whose calls
//! the test answers, in-memory pipes for the socket, and [`Harness::settle`]
//! to run the connection until it waits only on the test (no sleeps).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};

use super::*;

type Answer = oneshot::Sender<Result<Value, RpcError>>;

/// A profile's task played by the test: calls wait until it answers.
struct FakeProfile {
    commands: mpsc::Receiver<Command>,
    status: Option<watch::Sender<ProfileStatus>>,
}

impl FakeProfile {
    /// The calls handed to it so far, oldest first (their jobs dropped
    /// unrun: the test answers for them).
    fn calls(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Job(_, answer) => out.push(answer),
                _ => panic!("only jobs expected"),
            }
        }
        out
    }

    /// Waits for the next call handed to it.
    async fn next_call(&mut self) -> Answer {
        let command = tokio::time::timeout(Duration::from_secs(20), self.commands.recv())
            .await
            .expect("a call reaches the profile")
            .expect("the profile's channel is open");
        match command {
            Command::Job(_, answer) => answer,
            _ => panic!("only jobs expected"),
        }
    }
}

fn fake_state(names: &[&str]) -> (Arc<ControlState>, Vec<FakeProfile>) {
    let mut profiles = Vec::new();
    let mut fakes = Vec::new();
    for name in names {
        let (commands, received) = mpsc::channel(64);
        let (status, watched) = watch::channel(ProfileStatus { name: name.to_string(), ..Default::default() });
        profiles.push((name.to_string(), ProfileHandle { commands, status: watched }));
        fakes.push(FakeProfile { commands: received, status: Some(status) });
    }
    let state = ControlState {
        profiles,
        events: broadcast::channel(16).0,
        stop: watch::channel(false).0,
        idle_ms: std::sync::atomic::AtomicU64::new(60_000),
    };
    (Arc::new(state), fakes)
}

/// A request line for `profile`'s engine (answered by the test).
fn slow(id: impl Into<Value>, profile: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": "contact.list", "params": {"profile": profile}})
}

/// A request the connection answers itself.
fn fast(id: impl Into<Value>) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": "node.info"})
}

struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One connection, run by hand.
struct Harness {
    conn: Pin<Box<dyn Future<Output = ()> + Send>>,
    to_node: DuplexStream,
    from_node: BufReader<DuplexStream>,
    permits: Arc<Semaphore>,
    state: Arc<ControlState>,
    profiles: Vec<FakeProfile>,
    finished: bool,
}

impl Harness {
    fn new(profiles: &[&str], limits: Limits) -> Harness {
        let (state, profiles) = fake_state(profiles);
        let (to_node, node_reads) = tokio::io::duplex(1 << 20);
        let (node_writes, from_node) = tokio::io::duplex(1 << 20);
        let permits = Arc::new(Semaphore::new(limits.in_flight));
        let conn = Box::pin(connection(node_reads, node_writes, state.clone(), permits.clone(), limits));
        Harness { conn, to_node, from_node: BufReader::new(from_node), permits, state, profiles, finished: false }
    }

    async fn send(&mut self, requests: &[Value]) {
        let mut bytes = Vec::new();
        for r in requests {
            bytes.extend(serde_json::to_vec(r).unwrap());
            bytes.push(b'\n');
        }
        self.to_node.write_all(&bytes).await.unwrap();
    }

    /// Polls the connection until a poll ends with nothing having woken
    /// it: it then waits only on the test (input, an answer, a stop).
    async fn settle(&mut self) {
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = Waker::from(woken.clone());
        for _ in 0..100_000 {
            if self.finished {
                return;
            }
            woken.0.store(false, Ordering::SeqCst);
            if self.conn.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
                self.finished = true;
                return;
            }
            if !woken.0.load(Ordering::SeqCst) {
                return;
            }
            // Lets tokio's cooperative budget refill.
            tokio::task::yield_now().await;
        }
        panic!("the connection never settled");
    }

    /// The lines the node has written so far.
    async fn lines(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            match futures::FutureExt::now_or_never(self.from_node.read_line(&mut line)) {
                Some(Ok(0)) | None => return out,
                Some(read) => {
                    read.unwrap();
                    out.push(serde_json::from_str(&line).unwrap());
                }
            }
        }
    }
}

fn ids(lines: &[Value]) -> Vec<Value> {
    lines.iter().map(|l| l["id"].clone()).collect()
}

const LIMITS: Limits = Limits { window: 4, in_flight: 64, write_timeout: Duration::from_secs(30) };

#[tokio::test]
async fn a_full_window_stops_reading_until_a_reply_is_written() {
    let mut h = Harness::new(&["p"], LIMITS);
    let requests: Vec<Value> = (0..10).map(|i| slow(i, "p")).collect();
    h.send(&requests).await;
    h.settle().await;
    // Ten lines wait in the pipe; the connection took the window's four.
    let mut held = h.profiles[0].calls();
    assert_eq!(held.len(), 4, "lines read past the window");
    assert_eq!(h.permits.available_permits(), 60, "each line in flight holds one node-wide permit");
    assert!(h.lines().await.is_empty());
    let mut answered = Vec::new();
    for next in 0..10 {
        held.remove(0).send(Ok(json!(next))).unwrap();
        h.settle().await;
        let lines = h.lines().await;
        assert_eq!(ids(&lines), vec![json!(next)], "one answer, one reply");
        answered.extend(lines);
        // One reply written, one more line read: never more than four.
        held.extend(h.profiles[0].calls());
        assert_eq!(held.len(), (9 - next).min(4), "after {} answers", next + 1);
    }
    assert_eq!(h.permits.available_permits(), 64, "every permit given back");
    for (i, reply) in answered.iter().enumerate() {
        assert_eq!(reply["result"], json!(i), "{reply}");
    }
    assert!(!h.finished);
}

#[tokio::test]
async fn a_fast_reply_overtakes_a_slow_one() {
    let mut h = Harness::new(&["p"], LIMITS);
    h.send(&[slow("slow", "p"), fast("fast")]).await;
    h.settle().await;
    let held = h.profiles[0].calls();
    assert_eq!(held.len(), 1);
    let lines = h.lines().await;
    assert_eq!(ids(&lines), vec![json!("fast")], "node.info answered while contact.list runs");
    assert!(lines[0]["result"]["version"].is_string());
    for answer in held {
        answer.send(Ok(json!("done"))).unwrap();
    }
    h.settle().await;
    let lines = h.lines().await;
    assert_eq!(ids(&lines), vec![json!("slow")]);
    assert_eq!(lines[0]["result"], "done");
}

#[tokio::test]
async fn work_reaches_the_profiles_in_the_order_it_was_read() {
    let mut h = Harness::new(&["p", "q"], Limits { window: 8, ..LIMITS });
    // A batch hands off its requests one after the other; the lines
    // after it wait for it, even to another profile.
    let batch = json!([slow("a1", "p"), slow("a2", "p")]);
    h.send(&[batch, slow("b", "p"), slow("c", "q"), slow("d", "p")]).await;
    h.settle().await;
    let first = h.profiles[0].calls();
    assert_eq!(first.len(), 1, "only the batch's first request is handed off");
    assert!(h.profiles[1].calls().is_empty(), "nothing after the batch is handed off before it is answered");
    first.into_iter().for_each(|c| c.send(Ok(json!("first on p"))).unwrap());
    h.settle().await;
    let second = h.profiles[0].calls();
    assert_eq!(second.len(), 1);
    assert!(h.profiles[1].calls().is_empty());
    second.into_iter().for_each(|c| c.send(Ok(json!("second on p"))).unwrap());
    h.settle().await;
    // The batch answered: the three lines after it are handed off, in
    // their order, and answered in reverse.
    let lines = h.lines().await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0][0]["result"], "first on p");
    assert_eq!(lines[0][1]["result"], "second on p");
    let mut on_p = h.profiles[0].calls();
    let on_q = h.profiles[1].calls();
    assert_eq!((on_p.len(), on_q.len()), (2, 1));
    let d = on_p.pop().unwrap();
    d.send(Ok(json!("fourth on p"))).unwrap();
    h.settle().await;
    on_q.into_iter().for_each(|c| c.send(Ok(json!("c first on q"))).unwrap());
    h.settle().await;
    on_p.pop().unwrap().send(Ok(json!("third on p"))).unwrap();
    h.settle().await;
    let lines = h.lines().await;
    assert_eq!(ids(&lines), vec![json!("d"), json!("c"), json!("b")], "answered as they complete");
    assert_eq!(lines[0]["result"], "fourth on p", "d was handed off after b");
    assert_eq!(lines[2]["result"], "third on p");
}

#[tokio::test]
async fn events_start_after_the_subscribe_reply() {
    let mut h = Harness::new(&["p"], LIMITS);
    // Subscribed at once, answered only when the batch is.
    h.send(&[json!([{"jsonrpc": "2.0", "id": "sub", "method": "subscribe"}, slow("slow", "p")])]).await;
    h.settle().await;
    let held = h.profiles[0].calls();
    assert_eq!(held.len(), 1);
    let event = NodeEvent::ContactIdentityChanged { profile: "p".into(), contact: "Bob".into() };
    h.state.events.send(event.clone()).unwrap();
    h.settle().await;
    assert!(h.lines().await.is_empty(), "no event before the reply to subscribe");
    held.into_iter().for_each(|c| c.send(Ok(json!([]))).unwrap());
    h.settle().await;
    let lines = h.lines().await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0][0]["result"]["subscribed"], true);
    assert_eq!(lines[1]["method"], "event", "the event sent in between is kept, and follows");
    assert_eq!(lines[1]["params"], serde_json::to_value(event).unwrap());
    // Later events flow while calls are in flight.
    h.send(&[slow("slow2", "p")]).await;
    h.settle().await;
    let _held = h.profiles[0].calls();
    h.state.events.send(NodeEvent::ContactIdentityChanged { profile: "p".into(), contact: "Eve".into() }).unwrap();
    h.settle().await;
    assert_eq!(h.lines().await[0]["params"]["contact"], "Eve");
}

#[tokio::test]
async fn stopping_answers_what_is_in_flight_and_closes() {
    let mut h = Harness::new(&["p"], LIMITS);
    h.send(&[slow(1, "p"), slow(2, "p")]).await;
    h.settle().await;
    let held = h.profiles[0].calls();
    assert_eq!(held.len(), 2);
    // The node stops: the profile's task ends without answering.
    h.state.stop.send(true).unwrap();
    h.settle().await;
    assert!(!h.finished, "the calls in flight are answered first");
    drop(held);
    h.profiles[0].status = None;
    h.settle().await;
    let lines = h.lines().await;
    assert_eq!(ids(&lines).len(), 2);
    for line in &lines {
        assert_eq!(line["error"]["code"], codes::SHUTTING_DOWN, "{line}");
    }
    assert!(h.finished, "then the connection closes");
    let mut rest = Vec::new();
    h.from_node.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, path) = bind(dir.path()).await.unwrap();
    let (state, mut profiles) = fake_state(&["p"]);
    // The stuck client's window is the whole node's bound: the other
    // client is served only once the stuck one is closed.
    let limits = Limits { window: 16, in_flight: 16, write_timeout: Duration::from_millis(300) };
    let server = tokio::spawn(serve_with(listener, state.clone(), limits));

    let mut stuck = UnixStream::connect(&path).await.unwrap();
    let mut bytes = Vec::new();
    for i in 0..16 {
        bytes.extend(serde_json::to_vec(&slow(i, "p")).unwrap());
        bytes.push(b'\n');
    }
    stuck.write_all(&bytes).await.unwrap();
    // Far more than a socket buffer holds: the first reply's write
    // cannot finish while the client does not read.
    let big = "x".repeat(4 << 20);
    for i in 0..16 {
        let answer = profiles[0].next_call().await;
        answer.send(Ok(if i == 0 { json!(big) } else { json!(i) })).unwrap();
    }

    let other = UnixStream::connect(&path).await.unwrap();
    let (read, mut write) = other.into_split();
    write.write_all(format!("{}\n", fast("other")).as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(20), BufReader::new(read).read_line(&mut reply))
        .await
        .expect("the other client is answered once the stuck one is closed")
        .unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["id"], "other");

    // The stuck client finds its connection closed, its replies cut.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stuck.read_to_end(&mut got))
        .await
        .expect("the stuck connection is closed")
        .unwrap();
    assert!(got.len() < big.len(), "not even the first reply was finished");
    let _ = state.stop.send(true);
    server.await.unwrap();
}
