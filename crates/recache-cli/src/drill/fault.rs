//! Injecting faults and undoing them. Every fault has a deadline, and is
//! undone by the drill on every exit path: at the end, on an error, on Ctrl-C
//! (the guard's `Drop`), and by the engine side itself when the drill process
//! dies (a forced breaker closes at its deadline; a paused engine is resumed
//! by a watchdog process that outlives the drill).

use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, Context};

use super::config::EngineControl;
use super::relay::Relay;
use super::subject::Subject;

enum Action {
    Relay,
    Breaker,
    Paused { pid: u32, watchdog: Option<Child> },
    Stopped { start: String },
}

/// One injected fault.
struct Injected {
    backend: String,
    action: Action,
    undone: bool,
}

/// The faults in force. Dropping it undoes whatever is left.
#[derive(Default)]
pub struct Faults {
    list: Vec<Injected>,
}

/// How an outage of `backend` is made: decided in one place, for the report
/// (before the fault) and for the fault itself.
enum Plan<'a> {
    /// Pause the process (SIGSTOP), or stop it with `stop` and start it with `start`.
    Process {
        pid: u32,
        ctl: EngineControl,
    },
    Commands {
        stop: String,
        start: String,
    },
    /// Cut the relays in front of the engine (every upstream's, for the provider).
    Relays(Vec<&'a Relay>),
    Breaker,
}

/// The relays in front of `backend` (a managed drill's).
fn relays_of<'a>(subject: &'a Subject, backend: &str) -> Vec<&'a Relay> {
    if backend == "provider" {
        subject.provider_relays()
    } else {
        subject.relay(backend).into_iter().collect()
    }
}

fn plan<'a>(subject: &'a Subject, backend: &str) -> anyhow::Result<Plan<'a>> {
    let ctl = subject.config.drill.engine(backend);
    if let Some(pid) = read_pid(&ctl)? {
        return Ok(Plan::Process { pid, ctl });
    }
    if let (Some(stop), Some(start)) = (&ctl.stop, &ctl.start) {
        return Ok(Plan::Commands {
            stop: stop.clone(),
            start: start.clone(),
        });
    }
    let relays = relays_of(subject, backend);
    if !relays.is_empty() {
        return Ok(Plan::Relays(relays));
    }
    if backend == "provider" {
        return Err(anyhow!(
            "provider-down needs --managed, or [drill.engines.provider] with a pid or stop/start commands"
        ));
    }
    Ok(Plan::Breaker)
}

/// How an outage of `backend` will be made, for the report; an error when it cannot be made here.
pub fn method(subject: &Subject, backend: &str) -> anyhow::Result<String> {
    Ok(match plan(subject, backend)? {
        Plan::Process { pid, ctl } if ctl.method == "kill" => format!("stop process {pid} and start it again"),
        Plan::Process { pid, .. } => format!("pause process {pid} (SIGSTOP, then SIGCONT)"),
        Plan::Commands { stop, .. } => format!("run '{stop}', then the start command"),
        Plan::Relays(relays) => format!(
            "cut the connection to {}",
            relays
                .iter()
                .map(|r| format!("{} (a relay on {})", r.target, r.addr))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Plan::Breaker => "force the breaker open through the admin API".into(),
    })
}

fn read_pid(ctl: &EngineControl) -> anyhow::Result<Option<u32>> {
    if let Some(p) = ctl.pid {
        return Ok(Some(p));
    }
    match &ctl.pid_file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("cannot read pid_file {}", f.display()))?;
            let pid = text
                .trim()
                .parse()
                .map_err(|_| anyhow!("pid_file {} does not hold a process id", f.display()))?;
            Ok(Some(pid))
        }
        None => Ok(None),
    }
}

fn shell(cmd: &str) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run '{cmd}'"))?;
    if !status.success() {
        return Err(anyhow!("'{cmd}' failed ({status})"));
    }
    Ok(())
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    shell(&format!("kill -{sig} {pid}"))
}

impl Faults {
    /// Makes `backend` unreachable for at most `deadline_s` seconds. Returns what was done.
    pub async fn outage(&mut self, subject: &Subject, backend: &str, deadline_s: u64) -> anyhow::Result<String> {
        let (action, what) = match plan(subject, backend)? {
            Plan::Process { pid, ctl } if ctl.method == "kill" => {
                let stop = ctl.stop.clone().unwrap_or_else(|| format!("kill {pid}"));
                shell(&stop)?;
                let start = ctl.start.clone().unwrap_or_default();
                (Action::Stopped { start }, format!("{backend}: stopped ('{stop}')"))
            }
            Plan::Process { pid, .. } => {
                signal(pid, "STOP")?;
                // Resumes the engine even if this process dies before it can.
                let watchdog = {
                    use std::os::unix::process::CommandExt;
                    Command::new("sh")
                        .arg("-c")
                        .arg(format!("sleep {}; kill -CONT {pid}", deadline_s + 5))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .process_group(0)
                        .spawn()
                        .ok()
                };
                let what = format!(
                    "{backend}: process {pid} paused (SIGSTOP; a watchdog resumes it after {} s at the latest)",
                    deadline_s + 5
                );
                (Action::Paused { pid, watchdog }, what)
            }
            Plan::Commands { stop, start } => {
                shell(&stop)?;
                (Action::Stopped { start }, format!("{backend}: stopped ('{stop}')"))
            }
            Plan::Relays(relays) => {
                for r in &relays {
                    r.cut();
                }
                let targets: Vec<&str> = relays.iter().map(|r| r.target.as_str()).collect();
                let what = format!(
                    "{backend}: connections to {} cut (open ones reset, new ones refused)",
                    targets.join(", ")
                );
                (Action::Relay, what)
            }
            Plan::Breaker => {
                subject.force_open(backend, deadline_s + 5).await?;
                let what = format!(
                    "{backend}: breaker forced open (it closes by itself after {} s at the latest)",
                    deadline_s + 5
                );
                (Action::Breaker, what)
            }
        };
        self.list.push(Injected {
            backend: backend.into(),
            action,
            undone: false,
        });
        Ok(what)
    }

    /// Undoes every fault still in force; returns what was done.
    pub(crate) async fn undo(&mut self, subject: &Subject) -> Vec<String> {
        let mut out = Vec::new();
        for f in self.list.iter_mut().filter(|f| !f.undone) {
            f.undone = true;
            let b = f.backend.clone();
            match &mut f.action {
                Action::Breaker => match subject.reset(&b).await {
                    Ok(()) => out.push(format!("{b}: breaker reset")),
                    Err(e) => out.push(format!("{b}: breaker reset failed ({e}); it closes at its deadline")),
                },
                Action::Relay => {
                    for r in relays_of(subject, &b) {
                        r.heal();
                    }
                    out.push(format!("{b}: connections restored"));
                }
                other => out.push(undo_sync(&b, other)),
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.list.iter().all(|f| f.undone)
    }
}

fn undo_sync(backend: &str, a: &mut Action) -> String {
    match a {
        Action::Paused { pid, watchdog } => {
            let r = signal(*pid, "CONT");
            if let Some(w) = watchdog {
                let _ = w.kill();
                let _ = w.wait();
            }
            match r {
                Ok(()) => format!("{backend}: process {pid} resumed (SIGCONT)"),
                Err(e) => format!("{backend}: resuming process {pid} failed: {e}"),
            }
        }
        Action::Stopped { start } => match shell(start) {
            Ok(()) => format!("{backend}: started again ('{start}')"),
            Err(e) => format!("{backend}: start failed: {e}"),
        },
        // Relays die with the drill; forced breakers close at their deadline.
        _ => format!("{backend}: left to its deadline"),
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        for f in self.list.iter_mut().filter(|f| !f.undone) {
            f.undone = true;
            let line = undo_sync(&f.backend, &mut f.action);
            eprintln!("recache drill: undoing on exit: {line}");
        }
    }
}
