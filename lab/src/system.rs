//! Everything that shells out: finding tools, the root check, running `ip`/`nft`/`sysctl`, and namespace
//! housekeeping (listing, killing what runs inside, deleting, sweeping stale ones).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::LabError;

/// Where the tools the lab needs were found.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) ip: PathBuf,
    pub(crate) nft: PathBuf,
    pub(crate) sysctl: PathBuf,
    pub(crate) kill: PathBuf,
}

impl Tools {
    /// Checks that we are root and finds every tool; no side effects.
    pub(crate) fn check() -> Result<Tools, LabError> {
        let euid = effective_uid()?;
        if euid != 0 {
            return Err(LabError::NotRoot { euid });
        }
        Ok(Tools {
            ip: find_tool("ip")?,
            nft: find_tool("nft")?,
            sysctl: find_tool("sysctl")?,
            kill: find_tool("kill")?,
        })
    }

    /// `ip -n <ns> <args>`.
    pub(crate) fn ip_in<I, S>(&self, namespace: &str, args: I) -> Result<String, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(Command::new(&self.ip).arg("-n").arg(namespace).args(args))
    }

    /// `ip netns exec <ns> <program>`.
    pub(crate) fn exec_in(&self, namespace: &str, program: impl AsRef<OsStr>) -> Command {
        netns_exec(&self.ip, namespace, program)
    }

    /// `sysctl -q -w <settings>` inside a namespace (`/proc/sys/net` is per network namespace).
    pub(crate) fn sysctl_in(&self, namespace: &str, settings: &[&str]) -> Result<(), LabError> {
        run(self.exec_in(namespace, &self.sysctl).arg("-q").arg("-w").args(settings)).map(drop)
    }

    /// Loads an nft ruleset inside a namespace. nft checks the whole text first: one bad line and nothing is applied.
    pub(crate) fn nft_in(&self, namespace: &str, ruleset: &str) -> Result<(), LabError> {
        run_with_input(self.exec_in(namespace, &self.nft).args(["-f", "-"]), ruleset).map(drop)
    }

    /// `ip netns add <name>`.
    pub(crate) fn create_namespace(&self, name: &str) -> Result<(), LabError> {
        run(Command::new(&self.ip).args(["netns", "add", name])).map(drop)
    }

    /// Names of all network namespaces (`ip netns list`).
    pub(crate) fn namespaces(&self) -> Result<Vec<String>, LabError> {
        let out = run(Command::new(&self.ip).args(["netns", "list"]))?;
        // Lines look like "name" or "name (id: 3)".
        Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
    }

    /// Best effort: SIGKILLs every process inside a namespace (`ip netns pids`), then deletes the namespace.
    /// Errors are ignored: this runs from `Drop` and from the stale sweep.
    pub(crate) fn destroy_namespace(&self, namespace: &str) {
        if let Ok(out) = run(Command::new(&self.ip).args(["netns", "pids", namespace])) {
            let own = std::process::id().to_string();
            let pids: Vec<&str> = out.split_whitespace().filter(|p| *p != own).collect();
            if !pids.is_empty() {
                let _ = run(Command::new(&self.kill).arg("-KILL").args(&pids));
            }
        }
        let _ = run(Command::new(&self.ip).args(["netns", "del", namespace]));
    }

    /// Destroys lab namespaces whose creating process no longer exists (left behind by a killed test run).
    pub(crate) fn sweep_stale(&self) {
        let Ok(names) = self.namespaces() else { return };
        for name in names {
            if let Some(pid) = creator_pid(&name)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                self.destroy_namespace(&name);
            }
        }
    }
}

/// `ip netns exec <ns> <program>`: `ip` enters the namespace and then execs the program, so the child's pid is
/// the program's pid.
pub(crate) fn netns_exec(ip: &Path, namespace: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(ip);
    cmd.args(["netns", "exec", namespace]).arg(program);
    cmd
}

/// The pid embedded in a lab namespace name `kl<pid>x<lab>n<k>`, or `None` if the name is not a lab's.
pub(crate) fn creator_pid(name: &str) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (pid, rest) = name.strip_prefix("kl")?.split_once('x')?;
    let (lab, k) = rest.split_once('n')?;
    if digits(pid) && digits(lab) && digits(k) { pid.parse().ok() } else { None }
}

/// The effective uid, from the `Uid:` line of `/proc/self/status` (real, effective, saved, fs).
fn effective_uid() -> Result<u32, LabError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(LabError::Uid)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| LabError::Uid(std::io::Error::other("no parsable Uid: line")))
}

/// Finds an executable in PATH, falling back to the sbin directories that a non-login root PATH may lack.
fn find_tool(name: &'static str) -> Result<PathBuf, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(LabError::MissingTool(name))
}

/// Runs a command to completion with stdin closed; returns its stdout, or its stderr in the error.
fn run(cmd: &mut Command) -> Result<String, LabError> {
    let out =
        cmd.stdin(Stdio::null()).output().map_err(|source| LabError::Spawn { command: format!("{cmd:?}"), source })?;
    finish(cmd, out)
}

/// Like [`run`], feeding `input` on stdin.
fn run_with_input(cmd: &mut Command, input: &str) -> Result<String, LabError> {
    let command = format!("{cmd:?}");
    let spawn_err = |source| LabError::Spawn { command: command.clone(), source };
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(spawn_err)?;
    // Small inputs only (a ruleset): writing everything before reading cannot fill the pipes and deadlock.
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(spawn_err)?;
    if let Some(Err(source)) = written {
        return Err(spawn_err(source));
    }
    finish(cmd, out)
}

fn finish(cmd: &Command, out: std::process::Output) -> Result<String, LabError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::CommandFailed {
            command: format!("{cmd:?}"),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn creator_pid_reads_only_lab_names() {
        assert_eq!(creator_pid("kl1234x0n0"), Some(1234));
        assert_eq!(creator_pid("kl99x12n7"), Some(99));
        for other in ["kl1234x0n", "kl1234x0", "klx0n0", "kl12a4x0n0", "kl1234x0n0b", "xkl1234x0n0", "blue", ""] {
            assert_eq!(creator_pid(other), None, "{other}");
        }
    }
}
