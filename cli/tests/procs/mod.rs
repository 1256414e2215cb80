//! Shared by the tests of the built binary (cli/tests/cli.rs,
//! cli/tests/tui.rs): data directories, `kabar` commands, and `kabar node
//! run` processes killed on drop.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kabar");
pub const PASS: &str = "cli test passphrase";

pub fn kabar(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--data-dir").arg(dir).args(args).env("KABAR_PASSPHRASE", PASS).output().unwrap()
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = kabar(dir, args);
    assert!(out.status.success(), "kabar {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &all)).unwrap()
}

/// Runs `kabar node run` and waits for its JSON start line; killed on drop.
pub struct RunningNode {
    pub child: Child,
}

impl RunningNode {
    pub fn start(dir: &Path) -> RunningNode {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(["--json", "node", "run", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .env("KABAR_PASSPHRASE", PASS)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let started: Value = serde_json::from_str(&line).expect("the node prints a JSON line when it is up");
        assert!(started["profiles"][0]["listen_addrs"][0].as_str().unwrap().starts_with("/ip4/127.0.0.1/tcp/"));
        RunningNode { child }
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SIGTERM, as a service manager would.
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn init(root: &Path, name: &str, business: Option<&str>) -> PathBuf {
    let dir = root.join(name);
    let mut args = vec!["init", "--testnet-kdf"];
    if let Some(b) = business {
        args.extend(["--business", b]);
    }
    let v = ok_json(&dir, &args);
    assert_eq!(v["profiles"][0]["name"], "personal");
    dir
}

pub fn fails(dir: &Path, args: &[&str], code: i32, needle: &str) {
    let out = kabar(dir, args);
    assert_eq!(out.status.code(), Some(code), "kabar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "kabar {args:?}: expected {needle:?} in {err:?}");
}
