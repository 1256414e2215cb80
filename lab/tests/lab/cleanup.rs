//! Cleanup: dropping a lab (even mid-panic) leaves no namespace and no process behind, and stale namespaces of
//! dead processes are swept.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kabar_lab::{Lab, LabError, Nat};

use crate::probe::{Server, lab};

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn leftovers(prefix: &str) -> Vec<String> {
    let ours = format!("{prefix}n");
    namespaces().into_iter().filter(|n| n.starts_with(&ours)).collect()
}

#[test]
fn dropping_the_lab_removes_namespaces_and_kills_processes() {
    let Some(mut lab) = lab() else { return };
    let web = lab.public_host("web").unwrap();
    let home = lab.home("frank", Nat::Symmetric).unwrap();
    let prefix = lab.prefix().to_owned();
    assert_eq!(lab.namespaces().len(), 4);
    assert_eq!(leftovers(&prefix).len(), 4);

    let tracked = Server::start(&mut lab, &web, 7300, 1);
    let tracked_pid = tracked.process.id();
    // Not spawned through the lab: the lab still kills it, because it runs in one of its namespaces.
    let mut untracked = home.command("sleep").arg("600").stdout(Stdio::null()).spawn().unwrap();
    // `ip netns exec` enters the namespace, then execs `sleep`: once the
    // child is `sleep`, it is inside (before that, a cleanup cannot see it).
    let comm = format!("/proc/{}/comm", untracked.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&comm).map(|c| c.trim() != "sleep").unwrap_or(true) {
        assert!(Instant::now() < deadline, "the untracked process never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A command from outside the lab is refused.
    assert!(matches!(lab.spawn(&mut Command::new("true")), Err(LabError::NotInLab(_))));

    // The handle stays alive past the lab: the lab itself, not the handle's Drop, must kill the process.
    drop(lab);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    assert!(!Path::new(&format!("/proc/{tracked_pid}")).exists(), "tracked process survived");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = untracked.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "untracked process survived the lab");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    drop(tracked);
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let Some(lab) = lab() else { return };
    drop(lab);
    let mut prefix = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new().unwrap();
        prefix = lab.prefix().to_owned();
        lab.home("grace", Nat::EndpointIndependent).unwrap();
        panic!("deliberate panic: the lab must still clean up");
    }));
    assert!(result.is_err());
    assert!(!prefix.is_empty());
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn new_lab_sweeps_namespaces_of_dead_processes() {
    let Some(lab) = lab() else { return };
    drop(lab);
    // A pid that certainly belonged to a process that is gone now.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let stale = format!("kl{pid}x0n0");
    // If this fails, a lab in another test process swept the half-made namespace already: the same code at work.
    let _ = Command::new("ip").args(["netns", "add", &stale]).stderr(Stdio::null()).status().unwrap();

    let _lab = Lab::new().unwrap();
    let survived = namespaces().contains(&stale);
    // Never leak it, even when the assertion below fails.
    let _ = Command::new("ip").args(["netns", "del", &stale]).stderr(Stdio::null()).status();
    assert!(!survived, "{stale} survived the sweep");
}
