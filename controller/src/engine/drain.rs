//! Taking a host out of its load balancer around its flip and putting it back (the seed's
//! 将目标服务器移除集群 … 加入集群): HAProxy's runtime API, or command lines on the controller.
//! A drain that cannot be done fails the host before anything changes on it.

use std::time::{Duration, Instant};

use slipway_common::config::{DrainDriver, DrainSettings, EnvSettings, HAProxyEndpoint, RunOn};
use slipway_proto::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::host_error::HostError;
use crate::state::store::AgentRecord;

/// One HAProxy runtime API command (one connection, as HAProxy's non-interactive mode wants);
/// its answer. Bounded in time and size.
pub async fn haproxy_command(endpoint: &HAProxyEndpoint, line: &str) -> Result<String, String> {
    let talk = async {
        let mut answer = Vec::new();
        match endpoint {
            HAProxyEndpoint::Socket(path) => {
                let mut s = tokio::net::UnixStream::connect(path).await.map_err(|e| e.to_string())?;
                s.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
                (&mut s).take(8 << 20).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
            }
            HAProxyEndpoint::Tcp(addr) => {
                let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                s.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
                (&mut s).take(8 << 20).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
            }
        }
        Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), talk).await {
        Ok(answer) => answer,
        Err(_) => Err("no answer within 5s".into()),
    }
}

/// What `show stat` says of one server: its status (UP, DRAIN, MAINT, DOWN…) and current sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub status: String,
    pub sessions: u64,
}

/// Find `backend/server` in `show stat` CSV.
pub fn parse_stat(csv: &str, backend: &str, server: &str) -> Option<ServerStat> {
    let mut lines = csv.lines();
    let header = lines.next()?.trim_start_matches("# ");
    let cols: Vec<&str> = header.split(',').collect();
    let at = |name: &str| cols.iter().position(|c| *c == name);
    let (px, sv, scur, status) = (at("pxname")?, at("svname")?, at("scur")?, at("status")?);
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(px) == Some(&backend) && f.get(sv) == Some(&server))
        .map(|f| ServerStat {
            status: f.get(status).unwrap_or(&"").to_string(),
            sessions: f.get(scur).and_then(|s| s.parse().ok()).unwrap_or(0),
        })
}

/// How to reach the balancer for one env's hosts (cheap to clone into per-host tasks).
#[derive(Clone)]
pub struct Drainer {
    pub settings: std::sync::Arc<DrainSettings>,
    pub env: std::sync::Arc<EnvSettings>,
    tls: std::sync::Arc<rustls::ClientConfig>,
    timeouts: crate::engine::client::Timeouts,
    /// `run_on = "<agent>"`: that agent.
    runner: Option<AgentRecord>,
}

fn driver_name(driver: &DrainDriver) -> String {
    match driver {
        DrainDriver::HAProxy { endpoint, .. } => format!("haproxy ({endpoint})"),
        DrainDriver::Commands { .. } => "drain commands".into(),
    }
}

impl Drainer {
    /// The env's drainer, when it has `[rollout.drain]`; bad input when `run_on` names an agent
    /// that is not registered.
    pub fn of(
        scope: &crate::engine::scope::Scope,
        tls: std::sync::Arc<rustls::ClientConfig>,
        timeouts: crate::engine::client::Timeouts,
    ) -> crate::error::Result<Option<Drainer>> {
        let env = &scope.settings;
        let Some(settings) = env.rollout.drain.clone() else { return Ok(None) };
        let runner = match &settings.driver {
            DrainDriver::Commands { run_on: RunOn::Agent(name), .. } => {
                Some(scope.registered.iter().find(|a| a.name == *name).cloned().ok_or_else(|| {
                    crate::error::CtlError::bad(format!(
                        "rollout.drain.run_on names agent '{name}', which is not registered"
                    ))
                    .fix(format!("register it with `slipctl agent add {name} …`, or change run_on"))
                })?)
            }
            _ => None,
        };
        Ok(Some(Drainer {
            settings: std::sync::Arc::new(settings),
            env: std::sync::Arc::new(env.clone()),
            tls,
            timeouts,
            runner,
        }))
    }

    async fn stat(&self, endpoint: &HAProxyEndpoint, backend: &str, server: &str) -> Result<ServerStat, HostError> {
        let csv = haproxy_command(endpoint, "show stat").await.map_err(|e| {
            HostError::Local(format!(
                "haproxy ({endpoint}) does not answer: {e}; check rollout.drain.haproxy and that HAProxy's \
                 `stats socket … level admin` is there"
            ))
        })?;
        parse_stat(&csv, backend, server).ok_or_else(|| {
            HostError::Local(format!(
                "haproxy ({endpoint}) has no server {backend}/{server}; fix rollout.drain.haproxy (backend, server = \
                 \"{{host}}\" by default) or the HAProxy config"
            ))
        })
    }

    /// Take `host` out: no new connections, then wait (up to `timeout_secs`) for its sessions to
    /// end. An error means nothing was changed on the balancer for it.
    pub async fn drain(&self, agent: &AgentRecord) -> Result<String, HostError> {
        let t = Instant::now();
        match &self.settings.driver {
            DrainDriver::HAProxy { endpoint, backend, .. } => {
                let server = self.settings.server_for(&agent.name).expect("haproxy has servers");
                let before = self.stat(endpoint, backend, &server).await?;
                set_state(endpoint, backend, &server, "drain").await?;
                let deadline = t + Duration::from_secs(self.settings.timeout_secs);
                let last = loop {
                    let now = self.stat(endpoint, backend, &server).await?;
                    if now.sessions == 0 {
                        return Ok(format!(
                            "{backend}/{server} drained ({} session(s) -> 0 in {} ms)",
                            before.sessions,
                            t.elapsed().as_millis()
                        ));
                    }
                    if Instant::now() >= deadline {
                        break now.sessions;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                Ok(format!(
                    "{backend}/{server} in drain; {last} session(s) still open after {}s (rollout.drain.timeout_secs): going on",
                    self.settings.timeout_secs
                ))
            }
            DrainDriver::Commands { drain, run_on, .. } => self.commands("drain", drain, run_on, agent).await,
        }
    }

    /// Put `host` back into the balancer.
    pub async fn undrain(&self, agent: &AgentRecord) -> Result<String, HostError> {
        match &self.settings.driver {
            DrainDriver::HAProxy { endpoint, backend, .. } => {
                let server = self.settings.server_for(&agent.name).expect("haproxy has servers");
                set_state(endpoint, backend, &server, "ready").await?;
                Ok(format!("{backend}/{server} ready"))
            }
            DrainDriver::Commands { undrain, run_on, .. } => self.commands("undrain", undrain, run_on, agent).await,
        }
    }

    /// `slipctl check`: the balancer answers and knows the host.
    pub async fn check(&self, agent: &AgentRecord) -> Result<String, HostError> {
        match &self.settings.driver {
            DrainDriver::HAProxy { endpoint, backend, .. } => {
                let server = self.settings.server_for(&agent.name).expect("haproxy has servers");
                let s = self.stat(endpoint, backend, &server).await?;
                Ok(format!(
                    "{} has {backend}/{server} ({}, {} session(s))",
                    driver_name(&self.settings.driver),
                    s.status,
                    s.sessions
                ))
            }
            DrainDriver::Commands { drain, undrain, run_on } => {
                let place = match run_on {
                    RunOn::Controller => "the controller".to_owned(),
                    RunOn::Host => "each host".to_owned(),
                    RunOn::Agent(name) => {
                        let runner = self.runner.as_ref().expect("resolved with the drainer");
                        crate::engine::client::connect(self.tls.clone(), runner, self.timeouts).await?;
                        format!("agent {name} (reachable)")
                    }
                };
                Ok(format!("{} drain and {} undrain line(s), run on {place}", drain.len(), undrain.len()))
            }
        }
    }

    async fn commands(
        &self,
        what: &str,
        lines: &[String],
        run_on: &RunOn,
        agent: &AgentRecord,
    ) -> Result<String, HostError> {
        let host_addr = agent.addr.rsplit_once(':').map_or(agent.addr.as_str(), |(h, _)| h).to_owned();
        let runner = match run_on {
            RunOn::Controller => None,
            RunOn::Host => Some(agent),
            RunOn::Agent(_) => self.runner.as_ref(),
        };
        if let Some(runner) = runner {
            return self.remote(what, lines, runner, agent, &host_addr).await;
        }
        let mut env = self.env.vars.clone();
        for (k, v) in [
            ("SLIPWAY_PROJECT", self.env.project.clone()),
            ("SLIPWAY_ENV", self.env.env.clone()),
            ("SLIPWAY_HOST", agent.name.clone()),
            ("SLIPWAY_HOST_ADDR", host_addr),
        ] {
            env.insert(k.to_owned(), v);
        }
        let timeout = Duration::from_secs(self.settings.timeout_secs);
        for line in lines {
            let shell = slipway_common::process::Shell {
                command: line,
                cwd: std::path::Path::new("/"),
                env: &env,
                clear_env: false,
                timeout,
            };
            let r = slipway_common::process::run_shell(shell, |_| {}, None).await;
            if !r.ok() {
                let out = String::from_utf8_lossy(&r.tail).trim().to_owned();
                let how = if r.timed_out { "timed out".to_owned() } else { format!("exit {}", r.exit_code) };
                return Err(HostError::Local(format!("{what} `{line}` failed ({how}): {out}")));
            }
        }
        Ok(format!("{what}: {} line(s) ok", lines.len()))
    }
}

impl Drainer {
    /// Drain command lines run by an agent (the host itself, or the balancer's), as the hook user.
    async fn remote(
        &self,
        what: &str,
        lines: &[String],
        runner: &AgentRecord,
        host: &AgentRecord,
        host_addr: &str,
    ) -> Result<String, HostError> {
        let mut client = crate::engine::client::connect(self.tls.clone(), runner, self.timeouts).await?;
        let request = pb::RunCommandsRequest {
            stage: what.to_owned(),
            spec: Some(pb::HookSpec { commands: lines.to_vec(), timeout_secs: self.settings.timeout_secs }),
            hook_context: Some(crate::engine::scope::hook_context(&self.env, &host.name, "", "")),
            vars: [
                ("HOST_ADDR".to_owned(), host_addr.to_owned()),
                ("PROJECT".into(), self.env.project.clone()),
                ("ENV".into(), self.env.env.clone()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let limit = self.timeouts.call + Duration::from_secs(self.settings.timeout_secs * lines.len() as u64);
        let reply = tokio::time::timeout(limit, client.run_commands(request))
            .await
            .map_err(|_| HostError::Timeout { what: "no answer", secs: limit.as_secs(), hint: "" })?
            .map_err(|s| HostError::from_status(&s))?
            .into_inner();
        if reply.error.is_empty() {
            Ok(format!("{what}: {} line(s) ok on {}", lines.len(), runner.name))
        } else {
            let out = reply
                .results
                .last()
                .map(|r| String::from_utf8_lossy(&r.output_tail).trim().to_owned())
                .unwrap_or_default();
            Err(HostError::Local(format!("{what} on {}: {}: {out}", runner.name, reply.error)))
        }
    }
}

async fn set_state(endpoint: &HAProxyEndpoint, backend: &str, server: &str, state: &str) -> Result<(), HostError> {
    let answer = haproxy_command(endpoint, &format!("set server {backend}/{server} state {state}"))
        .await
        .map_err(|e| HostError::Local(format!("haproxy ({endpoint}) does not answer: {e}")))?;
    let answer = answer.trim();
    if answer.is_empty() {
        Ok(())
    } else {
        Err(HostError::Local(format!(
            "haproxy ({endpoint}) refused `set server {backend}/{server} state {state}`: {answer}"
        )))
    }
}

/// Refuse a drain that would take every host of the env out at once.
pub fn check_full_drain(settings: &EnvSettings, batches: &[Vec<String>]) -> crate::error::Result<()> {
    let Some(drain) = &settings.rollout.drain else { return Ok(()) };
    let total: usize = batches.iter().map(Vec::len).sum();
    if drain.allow_full_drain || !batches.iter().any(|b| b.len() == total && total > 0) {
        return Ok(());
    }
    Err(crate::error::CtlError::bad(format!(
        "rollout.drain with this rollout takes all {total} host(s) of env '{}' out of the balancer at once",
        settings.env
    ))
    .fix(
        "use strategy = \"serial\" or batches smaller than the env, or set allow_full_drain = true in [rollout.drain]",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_is_read_by_column_name() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n\
                   web,FRONTEND,,,0,1,,,,,,,,,,,,OPEN\n\
                   web,web-1,0,0,3,4,,,,,,,,,,,,UP\n\
                   web,web-2,0,0,0,1,,,,,,,,,,,,DRAIN\n";
        assert_eq!(parse_stat(csv, "web", "web-1"), Some(ServerStat { status: "UP".into(), sessions: 3 }));
        assert_eq!(parse_stat(csv, "web", "web-2").unwrap().status, "DRAIN");
        assert_eq!(parse_stat(csv, "web", "web-9"), None);
        assert_eq!(parse_stat(csv, "api", "web-1"), None);
    }
}
