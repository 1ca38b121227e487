//! The workload runner, Rally-style: contexts (users, server groups), then iterations of
//! `boot_server` (create, poll until ACTIVE or ERROR) and optionally `delete_server`, run by
//! a `constant` (fixed concurrency) or `rps` (fixed start rate) runner. With
//! `workload.passes = N` the iterations run N times, each pass making the same requests as
//! the first; the servers of a pass are deleted before the next one starts (the hosts'
//! image caches keep what it fetched), and each pass's window of the metrics is kept for
//! the report.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use stackbed_core::model::{Flavor, Image, Record, Table};
use stackbed_core::scenario::{Action, Runner};

use crate::api::{ApiError, CreateServer, NovaClient};
use crate::ctx::Ctx;
use crate::dbx;

#[derive(Debug, Clone, Serialize)]
pub struct Iteration {
    /// Unique over the run: `pass * times + i`.
    pub index: u32,
    /// Counting from 0.
    pub pass: u32,
    /// The servers it created (several for a multi-create).
    pub servers: Vec<String>,
    pub ok: bool,
    pub error: Option<String>,
    /// When the iteration started and when its boot ended (ACTIVE, ERROR or the create's
    /// error; a trace request's: its server's launched_at when it has one), in ms since the
    /// run started on the Rally client's clock (no fault targets it, so no skew).
    pub start_ms: u64,
    pub end_ms: u64,
    /// The whole iteration, delete included: Rally's iteration duration, which the SLAs read.
    pub duration_ms: u64,
}

#[cfg(test)]
impl Iteration {
    /// A test's iteration: from `start_ms` to `end_ms`, its duration the difference.
    pub(crate) fn sample(start_ms: u64, end_ms: u64, ok: bool) -> Iteration {
        Iteration {
            index: 0,
            pass: 0,
            servers: Vec::new(),
            ok,
            error: None,
            start_ms,
            end_ms,
            duration_ms: end_ms - start_ms,
        }
    }
}

struct Tenant {
    project: String,
    user: String,
    password: String,
    token: Mutex<Option<String>>,
    group: Mutex<Option<String>>,
}

pub struct Workload {
    ctx: Ctx,
    /// nova's and keystone's APIs over HTTP, as Rally's clients reach them.
    api: NovaClient,
    tenants: Vec<Tenant>,
    rng: Mutex<SmallRng>,
    results: Mutex<Vec<Iteration>>,
    /// Iterations per pass.
    times: u32,
    /// Flavor and image of request `i` of a pass, drawn by the first pass.
    shapes: Mutex<BTreeMap<u32, (String, String)>>,
    windows: Mutex<Vec<PassWindow>>,
}

/// One pass of the workload: when it ran, and the metrics' marks at its start and end (its
/// samples are those between the two).
#[derive(Debug, Clone, Default)]
pub struct PassWindow {
    /// Counting from 0.
    pub pass: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub from: BTreeMap<String, usize>,
    pub to: BTreeMap<String, usize>,
}

fn pick(rng: &mut SmallRng, weights: &BTreeMap<String, f64>) -> String {
    let total: f64 = weights.values().sum();
    let mut x = rng.gen_range(0.0..total);
    for (name, w) in weights {
        if x < *w {
            return name.clone();
        }
        x -= w;
    }
    weights.keys().next_back().cloned().unwrap_or_default()
}

impl Workload {
    pub fn new(ctx: Ctx, api: NovaClient) -> Arc<Workload> {
        let tenants = crate::identity::tenants(&ctx.scenario)
            .into_iter()
            .map(|(p, u, password)| Tenant {
                project: p.id,
                user: u.name,
                password,
                token: Mutex::new(None),
                group: Mutex::new(None),
            })
            .collect();
        let rng = Mutex::new(ctx.rng("runner"));
        let times = ctx.scenario.workload.runner.times(&ctx.scenario.trace);
        Arc::new(Workload {
            ctx,
            api,
            tenants,
            rng,
            results: Mutex::new(Vec::new()),
            times,
            shapes: Mutex::new(BTreeMap::new()),
            windows: Mutex::new(Vec::new()),
        })
    }

    async fn token(&self, t: &Tenant, refresh: bool) -> Result<String, ApiError> {
        if !refresh {
            if let Some(tok) = guard(&t.token).clone() {
                return Ok(tok);
            }
        }
        let tok = self.api.authenticate(&t.user, &t.password, &t.project).await?;
        *guard(&t.token) = Some(tok.clone());
        Ok(tok)
    }

    /// Waits until every compute service of the topology has registered (Rally checks the
    /// hypervisors before it starts), at most `wait`.
    pub async fn wait_for_computes(&self, wait: Duration) -> Result<(), String> {
        let want = self.ctx.scenario.host_count() as usize;
        let t0 = self.ctx.clock.now();
        loop {
            let have = dbx::scan(&*self.ctx.db, Table::Services, "").await.map(|r| r.len()).unwrap_or(0);
            if have >= want {
                return Ok(());
            }
            if self.ctx.clock.since(t0) > wait {
                return Err(format!("only {have} of {want} compute services registered within {wait:?}"));
            }
            self.ctx.clock.sleep(Duration::from_millis(500)).await;
        }
    }

    /// The passes run so far (one per pass; the last one ends with the workload).
    pub fn pass_windows(&self) -> Vec<PassWindow> {
        guard(&self.windows).clone()
    }

    /// Runs the contexts and every pass; returns when the last iteration finished.
    pub async fn run(self: Arc<Self>) -> Vec<Iteration> {
        if let Some(policy) = self.ctx.scenario.workload.server_group {
            for t in &self.tenants {
                if let Ok(tok) = self.token(t, false).await {
                    if let Ok(id) = self.api.create_server_group(&tok, "workload", policy).await {
                        *guard(&t.group) = Some(id);
                    }
                }
            }
        }
        let passes = self.ctx.scenario.workload.passes.max(1);
        for pass in 0..passes {
            let (from, start_ms) = (self.ctx.metrics.marks(), self.ctx.clock.now_ms());
            self.clone().run_pass(pass).await;
            // The window ends before the deletes between passes, so every pass's figures
            // cover its boots alone.
            let window =
                PassWindow { pass, start_ms, end_ms: self.ctx.clock.now_ms(), from, to: self.ctx.metrics.marks() };
            guard(&self.windows).push(window);
            if pass + 1 < passes {
                self.delete_pass(pass).await;
            }
        }
        let mut out = std::mem::take(&mut *guard(&self.results));
        out.sort_by_key(|it| it.index);
        out
    }

    /// Deletes every server pass `pass` left (all at once), waiting until each is gone.
    async fn delete_pass(self: &Arc<Self>, pass: u32) {
        if self.ctx.scenario.workload.action == Action::BootAndDelete {
            return;
        }
        let servers: Vec<(u32, String)> = guard(&self.results)
            .iter()
            .filter(|it| it.pass == pass)
            .flat_map(|it| it.servers.iter().map(|s| (it.index, s.clone())).collect::<Vec<_>>())
            .collect();
        let mut handles = Vec::new();
        for (index, uuid) in servers {
            let this = self.clone();
            handles.push(tokio::spawn(async move {
                let r = this.delete(this.tenant_of(index), &uuid).await;
                this.ctx
                    .metrics
                    .count(if r.is_ok() { "workload.pass_deletes" } else { "workload.pass_deletes_failed" }, 1);
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// One pass: every iteration, indices `pass * times ..`.
    async fn run_pass(self: Arc<Self>, pass: u32) {
        let runner = &self.ctx.scenario.workload.runner;
        let times = self.times;
        let first = pass * times;
        let mut handles = Vec::new();
        match *runner {
            Runner::Constant { concurrency, .. } => {
                let next = Arc::new(Mutex::new(0u32));
                for _ in 0..concurrency.min(times) {
                    let this = self.clone();
                    let next = next.clone();
                    handles.push(tokio::spawn(async move {
                        loop {
                            let i = {
                                let mut n = guard(&next);
                                if *n >= times {
                                    break;
                                }
                                *n += 1;
                                *n - 1
                            };
                            this.iteration(first + i, pass).await;
                        }
                    }));
                }
            }
            Runner::Rps { rate, .. } => {
                let gap = Duration::from_secs_f64(1.0 / rate);
                for i in 0..times {
                    let this = self.clone();
                    handles.push(tokio::spawn(async move { this.iteration(first + i, pass).await }));
                    self.ctx.clock.sleep(gap).await;
                }
            }
            Runner::Trace { .. } => {
                let start = self.ctx.clock.now();
                for (i, row) in self.ctx.scenario.trace.iter().take(times as usize).enumerate() {
                    let at = start + Duration::from_secs_f64(row.arrival_s);
                    if at > self.ctx.clock.now() {
                        self.ctx.clock.sleep_until(at).await;
                    }
                    let (this, row) = (self.clone(), *row);
                    handles.push(tokio::spawn(async move { this.trace_request(i as u32, row).await }));
                }
            }
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// The tenant of request `index`: every pass repeats the first pass's requests, in the
    /// same projects.
    fn tenant_of(&self, index: u32) -> &Tenant {
        &self.tenants[(index % self.times.max(1)) as usize % self.tenants.len()]
    }

    async fn iteration(&self, index: u32, pass: u32) {
        let tenant = self.tenant_of(index);
        let (flavor, image) = {
            // The first pass draws (in index order, as before passes existed); later passes
            // repeat its requests.
            let mut shapes = guard(&self.shapes);
            let slot = index % self.times.max(1);
            match shapes.get(&slot) {
                Some(shape) => shape.clone(),
                None => {
                    let mut rng = guard(&self.rng);
                    let w = &self.ctx.scenario.workload;
                    let shape = (pick(&mut rng, &w.flavors), pick(&mut rng, &w.images));
                    shapes.insert(slot, shape.clone());
                    shape
                }
            }
        };
        let group = guard(&tenant.group).clone();
        let count = self.ctx.scenario.workload.servers_per_request;
        let req = CreateServer { name: format!("rally-{index}"), flavor, image, server_group: group, count };
        let t0 = self.ctx.clock.now();
        let start_ms = self.ctx.clock.now_ms();
        let result = self.boot(tenant, &req).await;
        let end_ms = self.ctx.clock.now_ms();
        let (servers, ok, error) = match result {
            Ok(done) => {
                // Rally's boot_servers: the iteration fails on the first server not ACTIVE.
                let failed = done.iter().find(|(_, status, _)| *status != "ACTIVE");
                let error =
                    failed.map(|(_, status, fault)| fault.clone().unwrap_or_else(|| format!("server went {status}")));
                (done.iter().map(|(uuid, _, _)| uuid.clone()).collect(), failed.is_none(), error)
            }
            Err(e) => (Vec::new(), false, Some(e)),
        };
        self.ctx.metrics.record("boot_server", self.ctx.clock.secs_since(t0), ok);
        if self.ctx.scenario.workload.action == Action::BootAndDelete {
            for uuid in &servers {
                let t1 = self.ctx.clock.now();
                let r = self.delete(tenant, uuid).await;
                self.ctx.metrics.record("delete_server", self.ctx.clock.secs_since(t1), r.is_ok());
            }
        }
        let duration_ms = self.ctx.clock.now_ms().saturating_sub(start_ms);
        guard(&self.results).push(Iteration { index, pass, servers, ok, error, start_ms, end_ms, duration_ms });
    }

    /// One trace row: boot at its arrival, delete at the end of its lifetime. The request is
    /// not polled (a trace has no Rally user waiting on it): its boot latency comes from the
    /// server's own timestamps (created_at to launched_at) in the report.
    async fn trace_request(&self, index: u32, row: stackbed_core::trace::TraceRow) {
        let tenant = &self.tenants[index as usize % self.tenants.len()];
        let image = {
            let mut rng = guard(&self.rng);
            pick(&mut rng, &self.ctx.scenario.workload.images)
        };
        let group = guard(&tenant.group).clone();
        let name = format!("trace-{index}");
        let req = CreateServer { name, flavor: row.flavor_name(), image, server_group: group, count: 1 };
        let req = &req;
        let start_ms = self.ctx.clock.now_ms();
        let created = self.with_token(tenant, |t| async move { self.api.create_server(&t, req).await }).await;
        let (servers, ok, error) = match created {
            Ok(uuids) => (uuids, true, None),
            Err(e) => (Vec::new(), false, Some(e.to_string())),
        };
        let end_ms = self.ctx.clock.now_ms();
        if row.lifetime_s > 0.0 && !servers.is_empty() {
            self.ctx.clock.sleep(Duration::from_secs_f64(row.lifetime_s)).await;
            for uuid in &servers {
                let t1 = self.ctx.clock.now();
                let r = self.delete(tenant, uuid).await;
                self.ctx.metrics.record("delete_server", self.ctx.clock.secs_since(t1), r.is_ok());
            }
        }
        let duration_ms = self.ctx.clock.now_ms().saturating_sub(start_ms);
        let it = Iteration { index, pass: 0, servers, ok, error, start_ms, end_ms, duration_ms };
        guard(&self.results).push(it);
    }

    /// Calls `f` with a token, re-authenticating once on a 401 (token expired).
    async fn with_token<T, F, Fut>(&self, tenant: &Tenant, f: F) -> Result<T, ApiError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let tok = self.token(tenant, false).await?;
        match f(tok).await {
            Err(e) if e.code == 401 => f(self.token(tenant, true).await?).await,
            other => other,
        }
    }

    /// Creates the request's servers and polls each until it is ACTIVE or ERROR (Rally's
    /// `_boot_servers` waits for every one): each server's id, status and fault.
    async fn boot(
        &self,
        tenant: &Tenant,
        req: &CreateServer,
    ) -> Result<Vec<(String, &'static str, Option<String>)>, String> {
        let uuids = self
            .with_token(tenant, |t| async move { self.api.create_server(&t, req).await })
            .await
            .map_err(|e| e.to_string())?;
        let w = &self.ctx.scenario.workload;
        self.ctx.clock.sleep(w.prepoll_delay.0).await;
        let t0 = self.ctx.clock.now();
        let mut out = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            loop {
                let u = uuid.clone();
                let view = self
                    .with_token(tenant, |t| {
                        let u = u.clone();
                        async move { self.api.show_server(&t, &u).await }
                    })
                    .await;
                match view {
                    Ok(v) if v.status == "ACTIVE" || v.status == "ERROR" => {
                        out.push((uuid, v.status, v.fault));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.code >= 500 => {}
                    Err(e) => return Err(e.to_string()),
                }
                if self.ctx.clock.since(t0) > w.liveness_bound.0 {
                    return Err(format!("server {uuid} not ACTIVE within {:?}", w.liveness_bound.0));
                }
                self.ctx.clock.sleep(w.poll_interval.0).await;
            }
        }
        Ok(out)
    }

    async fn delete(&self, tenant: &Tenant, uuid: &str) -> Result<(), String> {
        let w = &self.ctx.scenario.workload;
        let t0 = self.ctx.clock.now();
        loop {
            match self.with_token(tenant, |t| async move { self.api.delete_server(&t, uuid).await }).await {
                Ok(()) => break,
                Err(e) if e.code == 409 && self.ctx.clock.since(t0) < w.liveness_bound.0 => {
                    self.ctx.clock.sleep(w.poll_interval.0).await
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        loop {
            match dbx::get_instance(&*self.ctx.db, uuid).await {
                Ok(Some((_, i))) if i.deleted => return Ok(()),
                Ok(None) => return Ok(()),
                _ => {}
            }
            if self.ctx.clock.since(t0) > w.liveness_bound.0 {
                return Err(format!("server {uuid} not deleted within {:?}", w.liveness_bound.0));
            }
            self.ctx.clock.sleep(w.poll_interval.0).await;
        }
    }
}

/// The flavor, image and project of the workload's request `n` (counting from 0), as the
/// runner draws them for `seed`: lets `explain` show a request without running anything.
/// Requests draw in index order (a worker takes an index and draws before it awaits).
pub fn request_shape(
    scenario: &stackbed_core::scenario::Scenario,
    seed: u64,
    n: u32,
) -> Result<(Flavor, Image, String), String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ crate::ctx::fnv1a(b"runner"));
    let w = &scenario.workload;
    let (mut flavor, mut image) = (String::new(), String::new());
    for i in 0..=n {
        if let Runner::Trace { .. } = w.runner {
            let row = scenario
                .trace
                .get(i as usize)
                .ok_or_else(|| format!("the trace has {} requests", scenario.trace.len()))?;
            flavor = row.flavor_name();
            image = pick(&mut rng, &w.images);
        } else {
            flavor = pick(&mut rng, &w.flavors);
            image = pick(&mut rng, &w.images);
        }
    }
    let times = w.runner.times(&scenario.trace);
    if n >= times {
        return Err(format!("the workload makes {times} requests (0..{})", times.saturating_sub(1)));
    }
    let tenants = crate::identity::tenants(scenario);
    let project = tenants.get(n as usize % tenants.len().max(1)).map(|t| t.0.id.clone()).unwrap_or_default();
    let flavor =
        scenario.flavors.iter().find(|f| f.name == flavor).cloned().ok_or_else(|| format!("no flavor {flavor}"))?;
    let image = scenario.images.iter().find(|i| i.name == image).cloned().ok_or_else(|| format!("no image {image}"))?;
    Ok((flavor, image, project))
}

/// The final state of every instance, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct FinalInstance {
    pub id: String,
    pub status: &'static str,
    pub host: Option<String>,
    pub attempts: u32,
    pub fault: Option<String>,
    pub created_at_ms: u64,
    pub launched_at_ms: Option<u64>,
}

pub async fn final_instances(ctx: &Ctx) -> Vec<FinalInstance> {
    let rows = dbx::scan(&*ctx.db, Table::Instances, "").await.unwrap_or_default();
    rows.into_iter()
        .filter_map(|(_, r)| match r.value {
            Record::Instance(i) => Some(FinalInstance {
                id: i.uuid.clone(),
                status: i.status(),
                host: i.host.clone(),
                attempts: i.attempts,
                fault: i.fault.clone(),
                created_at_ms: i.created_at_ms,
                launched_at_ms: i.launched_at_ms,
            }),
            _ => None,
        })
        .collect()
}
