//! HAProxy in front of a cluster (Galera or RabbitMQ), as one pure state machine: the world
//! runs the health checks and moves the bytes; this decides which server each new session
//! goes to, when a server is marked down or up, and which sessions end.
//!
//! HAProxy's semantics kept here:
//! - **Health checks** every `inter`: a server that is up is marked down after `fall`
//!   failed checks in a row, one that is down is marked up after `rise` good ones in a row
//!   (HAProxy's health counter, where one good check restores full health and one failed
//!   check while rising starts the rise again). Servers start up.
//! - **Choosing a server** for a new session: `roundrobin` over the active (non-`backup`)
//!   servers that are up; when none is, the first backup that is up (every backup in turn
//!   with `option allbackups`); when none is, the connection is refused.
//! - **A server marked down** keeps its sessions unless `on-marked-down shutdown-sessions`:
//!   they go on reaching it (a Galera node that left the primary component, still accepting
//!   connections) until the client or the server side ends them. With
//!   `on-marked-up shutdown-backup-sessions`, an active server coming back ends every
//!   session on a backup.
//! - **Timeouts**: a session idle for `timeout client` (or `timeout server`, the shorter
//!   wins here: both sides are idle together in a request-response protocol) is closed.
//!
//! Not modelled: `stick on dst` (TripleO) and `slowstart`; checks run for every server at
//! the same instants.

use std::collections::BTreeMap;

use serde::Serialize;

/// How new sessions spread over the usable servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Balance {
    RoundRobin,
    /// The first usable server in declaration order (`balance first`).
    First,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerDecl {
    pub name: String,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    pub servers: Vec<ServerDecl>,
    pub balance: Balance,
    pub inter_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// `on-marked-down shutdown-sessions`.
    pub shutdown_sessions: bool,
    /// `on-marked-up shutdown-backup-sessions`.
    pub shutdown_backup_sessions: bool,
    /// `option allbackups`.
    pub all_backups: bool,
    pub timeout_client_ms: u64,
    pub timeout_server_ms: u64,
}

impl ProxyConfig {
    /// HAProxy's defaults (`inter 2000 rise 2 fall 3`, no backups, round robin) over
    /// `servers`, with timeouts of 50 s (the example configuration's).
    pub fn haproxy(servers: &[&str]) -> ProxyConfig {
        ProxyConfig {
            servers: servers.iter().map(|n| ServerDecl { name: n.to_string(), backup: false }).collect(),
            balance: Balance::RoundRobin,
            inter_ms: 2000,
            rise: 2,
            fall: 3,
            shutdown_sessions: false,
            shutdown_backup_sessions: false,
            all_backups: false,
            timeout_client_ms: 50_000,
            timeout_server_ms: 50_000,
        }
    }

    /// The OpenStack HA guide's Galera section: `check inter 2000 rise 2 fall 5`, every
    /// server but the first `backup` (one writer), 90 min timeouts.
    pub fn ha_guide(servers: &[&str]) -> ProxyConfig {
        let mut c = ProxyConfig::haproxy(servers);
        c.fall = 5;
        c.timeout_client_ms = 90 * 60_000;
        c.timeout_server_ms = 90 * 60_000;
        c.one_writer();
        c
    }

    /// kolla-ansible: the HA guide's checks and backups with `timeout client/server 3600s`.
    pub fn kolla(servers: &[&str]) -> ProxyConfig {
        let mut c = ProxyConfig::ha_guide(servers);
        c.timeout_client_ms = 3_600_000;
        c.timeout_server_ms = 3_600_000;
        c
    }

    /// OpenStack-Ansible: the first node active, `rise 3 fall 3`, `shutdown-sessions`.
    pub fn openstack_ansible(servers: &[&str]) -> ProxyConfig {
        let mut c = ProxyConfig::haproxy(servers);
        c.rise = 3;
        c.fall = 3;
        c.shutdown_sessions = true;
        c.one_writer();
        c
    }

    /// TripleO: every server `backup`, `inter 1s on-marked-down shutdown-sessions`.
    pub fn tripleo(servers: &[&str]) -> ProxyConfig {
        let mut c = ProxyConfig::haproxy(servers);
        c.inter_ms = 1000;
        c.shutdown_sessions = true;
        for s in &mut c.servers {
            s.backup = true;
        }
        c
    }

    fn one_writer(&mut self) {
        for s in self.servers.iter_mut().skip(1) {
            s.backup = true;
        }
    }
}

/// What a check round or a connection did, for the report and the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEvent {
    MarkedDown(usize),
    MarkedUp(usize),
    /// Sessions the proxy ended (the world resets their connections).
    Ended(Vec<u64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Server {
    up: bool,
    /// HAProxy's health counter: 0..rise+fall-1, up from `rise`.
    health: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    server: usize,
    last_active_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Proxy {
    cfg: ProxyConfig,
    servers: Vec<Server>,
    sessions: BTreeMap<u64, Session>,
    next_session: u64,
    rr: usize,
    next_check_ms: u64,
    /// Marked-down transitions so far: the failovers a client saw.
    pub marked_down: u64,
}

/// No server can take a new session: the proxy closes the client's connection at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no server is available: every one is down")]
pub struct NoServer;

impl Proxy {
    pub fn new(cfg: ProxyConfig) -> Proxy {
        let full = cfg.rise + cfg.fall - 1;
        let servers = vec![Server { up: true, health: full }; cfg.servers.len()];
        let next_check_ms = cfg.inter_ms;
        Proxy { cfg, servers, sessions: BTreeMap::new(), next_session: 0, rr: 0, next_check_ms, marked_down: 0 }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// When the next round of checks is due.
    pub fn next_check_at(&self) -> u64 {
        self.next_check_ms
    }

    pub fn is_up(&self, server: usize) -> bool {
        self.servers[server].up
    }

    /// One round of health checks at `now_ms`, `ok[i]` for server i.
    pub fn check(&mut self, now_ms: u64, ok: &[bool]) -> Vec<ProxyEvent> {
        self.next_check_ms = now_ms + self.cfg.inter_ms;
        let (rise, full) = (self.cfg.rise, self.cfg.rise + self.cfg.fall - 1);
        let mut events = Vec::new();
        for (i, &good) in ok.iter().enumerate().take(self.servers.len()) {
            let s = &mut self.servers[i];
            match (s.up, good) {
                (true, true) => s.health = full,
                (true, false) if s.health > rise => s.health -= 1,
                (true, false) => {
                    *s = Server { up: false, health: 0 };
                    self.marked_down += 1;
                    events.push(ProxyEvent::MarkedDown(i));
                    if self.cfg.shutdown_sessions {
                        events.push(ProxyEvent::Ended(self.end(|x| x.server == i)));
                    }
                }
                (false, true) if s.health + 1 >= rise => {
                    *s = Server { up: true, health: full };
                    events.push(ProxyEvent::MarkedUp(i));
                    if self.cfg.shutdown_backup_sessions && !self.cfg.servers[i].backup {
                        let backups: Vec<bool> = self.cfg.servers.iter().map(|d| d.backup).collect();
                        events.push(ProxyEvent::Ended(self.end(|x| backups[x.server])));
                    }
                }
                (false, true) => s.health += 1,
                (false, false) => s.health = 0,
            }
        }
        events.retain(|e| !matches!(e, ProxyEvent::Ended(v) if v.is_empty()));
        events
    }

    fn end(&mut self, which: impl Fn(&Session) -> bool) -> Vec<u64> {
        let ids: Vec<u64> = self.sessions.iter().filter(|(_, s)| which(s)).map(|(id, _)| *id).collect();
        for id in &ids {
            self.sessions.remove(id);
        }
        ids
    }

    /// The server a new session goes to, now.
    pub fn pick(&mut self) -> Result<usize, NoServer> {
        let usable = |backup: bool| -> Vec<usize> {
            (0..self.servers.len()).filter(|&i| self.servers[i].up && self.cfg.servers[i].backup == backup).collect()
        };
        let active = usable(false);
        let pool = if !active.is_empty() {
            active
        } else {
            let backups = usable(true);
            match (self.cfg.all_backups, backups.first()) {
                (_, None) => return Err(NoServer),
                (false, Some(&b)) => vec![b],
                (true, _) => backups,
            }
        };
        Ok(match self.cfg.balance {
            Balance::First => pool[0],
            Balance::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                pool[(self.rr - 1) % pool.len()]
            }
        })
    }

    /// A client connects at `now_ms`: its session id and server.
    pub fn connect(&mut self, now_ms: u64) -> Result<(u64, usize), NoServer> {
        let server = self.pick()?;
        self.next_session += 1;
        self.sessions.insert(self.next_session, Session { server, last_active_ms: now_ms });
        Ok((self.next_session, server))
    }

    /// The session's server, while the session lasts.
    pub fn server_of(&self, session: u64) -> Option<usize> {
        self.sessions.get(&session).map(|s| s.server)
    }

    /// Bytes went through the session at `now_ms`.
    pub fn activity(&mut self, session: u64, now_ms: u64) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_active_ms = now_ms;
        }
    }

    /// Either side closed the session.
    pub fn close(&mut self, session: u64) {
        self.sessions.remove(&session);
    }

    /// Ends the sessions idle for longer than the timeout.
    pub fn expire(&mut self, now_ms: u64) -> Vec<u64> {
        let idle = self.cfg.timeout_client_ms.min(self.cfg.timeout_server_ms);
        self.end(|s| now_ms.saturating_sub(s.last_active_ms) > idle)
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [&str; 3] = ["db-1", "db-2", "db-3"];

    /// (name, config, failed rounds, good rounds, marked down at, marked up at).
    type DownUpCase = (&'static str, ProxyConfig, usize, usize, Option<usize>, Option<usize>);
    /// (name, config, servers down, where five sessions go).
    type PickCase = (&'static str, ProxyConfig, &'static [usize], Result<Vec<usize>, NoServer>);

    /// Runs check rounds with server 0 failing `fails` times then passing: the rounds at
    /// which it is marked down and up again.
    fn down_up(cfg: ProxyConfig, fails: usize, passes: usize) -> (Option<usize>, Option<usize>) {
        let mut p = Proxy::new(cfg);
        let (mut down, mut up) = (None, None);
        for round in 0..fails + passes {
            let ok = [round >= fails, true, true];
            for e in p.check(round as u64 * 1000, &ok) {
                match e {
                    ProxyEvent::MarkedDown(0) => down = Some(round + 1),
                    ProxyEvent::MarkedUp(0) => up = Some(round + 1),
                    _ => {}
                }
            }
        }
        (down, up)
    }

    #[test]
    fn a_server_goes_down_after_fall_failed_checks_and_up_after_rise_good_ones() {
        // Table: the deployment, failed rounds then good ones, the round marking it down
        // (counted from 1) and the round marking it up again.
        let cases: [DownUpCase; 5] = [
            ("haproxy defaults", ProxyConfig::haproxy(&NODES), 3, 2, Some(3), Some(5)),
            ("haproxy, two failures only", ProxyConfig::haproxy(&NODES), 2, 2, None, None),
            ("HA guide fall 5", ProxyConfig::ha_guide(&NODES), 5, 2, Some(5), Some(7)),
            ("HA guide, four failures", ProxyConfig::ha_guide(&NODES), 4, 1, None, None),
            ("OpenStack-Ansible rise 3", ProxyConfig::openstack_ansible(&NODES), 3, 3, Some(3), Some(6)),
        ];
        for (name, cfg, fails, passes, down, up) in cases {
            assert_eq!(down_up(cfg, fails, passes), (down, up), "{name}");
        }
    }

    #[test]
    fn one_good_check_restores_full_health_and_one_failure_restarts_the_rise() {
        let mut p = Proxy::new(ProxyConfig::haproxy(&NODES));
        let mut t = 0;
        let mut round = |p: &mut Proxy, ok: bool| {
            t += 1000;
            p.check(t, &[ok, true, true])
        };
        // fail, fail, pass, fail, fail: never three in a row, still up.
        for ok in [false, false, true, false, false] {
            round(&mut p, ok);
        }
        assert!(p.is_up(0));
        round(&mut p, false);
        assert!(!p.is_up(0), "the third in a row");
        // pass, fail, pass, pass: the failure restarts the rise of 2.
        for ok in [true, false, true] {
            round(&mut p, ok);
            assert!(!p.is_up(0));
        }
        round(&mut p, true);
        assert!(p.is_up(0));
    }

    #[test]
    fn sessions_go_to_the_active_servers_then_to_the_first_backup_that_is_up() {
        // Table: deployment, servers down, where five new sessions go.
        let cases: [PickCase; 6] = [
            ("haproxy round robin", ProxyConfig::haproxy(&NODES), &[], Ok(vec![0, 1, 2, 0, 1])),
            ("one writer", ProxyConfig::ha_guide(&NODES), &[], Ok(vec![0; 5])),
            ("writer down: the first backup", ProxyConfig::ha_guide(&NODES), &[0], Ok(vec![1; 5])),
            ("writer and first backup down", ProxyConfig::kolla(&NODES), &[0, 1], Ok(vec![2; 5])),
            ("TripleO, all backups", ProxyConfig::tripleo(&NODES), &[], Ok(vec![0; 5])),
            ("all down", ProxyConfig::ha_guide(&NODES), &[0, 1, 2], Err(NoServer)),
        ];
        for (name, cfg, down, want) in cases {
            let fall = cfg.fall as usize;
            let mut p = Proxy::new(cfg);
            for r in 0..fall {
                let ok: Vec<bool> = (0..3).map(|i| !down.contains(&i)).collect();
                p.check(r as u64, &ok);
            }
            let got: Result<Vec<usize>, NoServer> = (0..5).map(|_| p.connect(100).map(|(_, s)| s)).collect();
            assert_eq!(got, want, "{name}");
        }
        let mut all = ProxyConfig::ha_guide(&NODES);
        all.all_backups = true;
        let mut p = Proxy::new(all);
        for r in 0..5 {
            p.check(r, &[false, true, true]);
        }
        let got: Vec<usize> = (0..4).map(|_| p.connect(100).unwrap().1).collect();
        assert_eq!(got, vec![1, 2, 1, 2], "allbackups: every backup in turn");
    }

    #[test]
    fn a_server_marked_down_keeps_its_sessions_unless_shutdown_sessions() {
        for (cfg, ended) in [(ProxyConfig::ha_guide(&NODES), false), (ProxyConfig::openstack_ansible(&NODES), true)] {
            let fall = cfg.fall;
            let mut p = Proxy::new(cfg);
            let (old, server) = p.connect(0).unwrap();
            assert_eq!(server, 0);
            let mut events = Vec::new();
            for r in 0..fall {
                events.extend(p.check(1000 * (r as u64 + 1), &[false, true, true]));
            }
            assert!(events.contains(&ProxyEvent::MarkedDown(0)));
            assert_eq!(events.contains(&ProxyEvent::Ended(vec![old])), ended, "{events:?}");
            // The old session still reaches db-1 (F8: commits on two nodes at once); a new
            // one goes to db-2.
            assert_eq!(p.server_of(old), (!ended).then_some(0));
            assert_eq!(p.connect(10_000).unwrap().1, 1);
            assert_eq!(p.marked_down, 1);
        }
    }

    #[test]
    fn an_active_server_coming_back_ends_backup_sessions_only_when_asked() {
        for shutdown_backup in [false, true] {
            let mut cfg = ProxyConfig::ha_guide(&NODES);
            cfg.shutdown_backup_sessions = shutdown_backup;
            let mut p = Proxy::new(cfg);
            for r in 0..5 {
                p.check(r, &[false, true, true]);
            }
            let (s, server) = p.connect(10).unwrap();
            assert_eq!(server, 1);
            let mut events = Vec::new();
            for r in 5..7 {
                events.extend(p.check(r, &[true, true, true]));
            }
            assert!(events.contains(&ProxyEvent::MarkedUp(0)));
            assert_eq!(p.server_of(s).is_none(), shutdown_backup, "{events:?}");
            assert_eq!(p.connect(20).unwrap().1, 0, "new sessions go to the writer again");
        }
    }

    #[test]
    fn idle_sessions_end_at_the_shorter_timeout() {
        let mut cfg = ProxyConfig::haproxy(&NODES);
        cfg.timeout_server_ms = 30_000;
        let mut p = Proxy::new(cfg);
        let (a, _) = p.connect(0).unwrap();
        let (b, _) = p.connect(0).unwrap();
        p.activity(b, 20_000);
        assert_eq!(p.expire(30_000), Vec::<u64>::new(), "30 s idle is not more than 30 s");
        assert_eq!(p.expire(30_001), vec![a]);
        assert_eq!(p.expire(50_001), vec![b]);
        assert_eq!(p.sessions(), 0);
    }
}
