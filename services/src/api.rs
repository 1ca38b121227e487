//! nova-api: create, show, list and delete servers. Each request passes the pipeline nova's
//! paste config gives it: token validation (keystonemiddleware, cached 300 s), policy,
//! quota (counting mode), then the BuildRequest write and the cast to the conductor.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use stackbed_core::model::{BuildRequest, Flavor, Image, Instance, Millis, Record, RequestSpec, ServerGroup, Table};
use stackbed_core::policy::{Credentials, Policy};
use stackbed_core::quota;
use stackbed_core::scenario::{Era, PlantedBug};
use stackbed_core::states::{TaskState, VmState};
use stackbed_core::store::{DbError, Expect, Op, Row};
use stackbed_core::token::TokenPayload;

use crate::ctx::Ctx;
use crate::dbx::{self, get, ServiceError};
use crate::identity::TOKENS_PATH;
use crate::seams::{
    Body, HttpError, HttpHandler, HttpRef, HttpRequest, HttpResponse, Method, Rpc, HTTP_TIMEOUT, KEYSTONE, NOVA_API,
};

/// keystonemiddleware's token_cache_time default.
pub const TOKEN_CACHE_MS: Millis = 300_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub code: u16,
    pub message: String,
    /// The request's write was sent and its answer lost (`DbError::InDoubt`): it may have
    /// happened. Still a 500 to the client, as nova answers; never counted as a failure.
    pub in_doubt: bool,
}

impl ApiError {
    fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), in_doubt: false }
    }
}

/// nova-api answers 500 for a database error it does not retry.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let in_doubt = matches!(e, ServiceError::Db(DbError::InDoubt(_)));
        ApiError { in_doubt, ..ApiError::new(500, e.to_string()) }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

#[derive(Debug, Clone)]
pub struct CreateServer {
    pub name: String,
    pub flavor: String,
    pub image: String,
    pub server_group: Option<String>,
    /// `min_count = max_count` (1: one server).
    pub count: u32,
}

/// GET /servers/{id}, the fields a client polls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerView {
    pub id: String,
    pub status: &'static str,
    pub host: Option<String>,
    pub fault: Option<String>,
}

pub struct Api {
    ctx: Ctx,
    policy: Policy,
    flavors: BTreeMap<String, Flavor>,
    images: BTreeMap<String, Image>,
    token_cache: Mutex<BTreeMap<String, (Millis, TokenPayload)>>,
    next_id: Mutex<u64>,
    placement: crate::placement::PlacementClient,
}

impl Api {
    pub fn new(ctx: Ctx) -> Api {
        let flavors = ctx.scenario.flavors.iter().map(|f| (f.name.clone(), f.clone())).collect();
        let images = ctx.scenario.images.iter().map(|i| (i.name.clone(), i.clone())).collect();
        let placement = crate::placement::PlacementClient::new(&ctx, "nova-api");
        Api {
            ctx,
            placement,
            policy: Policy::nova_defaults(),
            flavors,
            images,
            token_cache: Mutex::new(BTreeMap::new()),
            next_id: Mutex::new(0),
        }
    }

    /// keystonemiddleware: validate with keystone (GET /v3/auth/tokens over HTTP), cache
    /// the answer for 300 s.
    async fn credentials(&self, token: &str) -> Result<Credentials, ApiError> {
        let now = self.ctx.clock.now_ms();
        let cached = {
            let cache = guard(&self.token_cache);
            cache
                .get(token)
                .filter(|(at, p)| now < at + TOKEN_CACHE_MS && now < p.expires_at_ms)
                .map(|(_, p)| p.clone())
        };
        let payload = match cached {
            Some(p) => p,
            None => {
                let req = HttpRequest::new(Method::Get, TOKENS_PATH, Body::SubjectToken(token.to_string()));
                let p = match self.ctx.http.request(KEYSTONE, req, HTTP_TIMEOUT).await {
                    Ok(HttpResponse { status: 200, body: Body::TokenInfo(p), .. }) => p,
                    Ok(HttpResponse { status, body, .. }) if (400..500).contains(&status) => {
                        return Err(ApiError::new(401, format!("token rejected: {}", message(&body))))
                    }
                    Ok(r) => {
                        return Err(ApiError::new(503, format!("keystone answered {}: {}", r.status, message(&r.body))))
                    }
                    Err(e) => return Err(ApiError::new(503, e.to_string())),
                };
                let mut cache = guard(&self.token_cache);
                cache.retain(|_, (at, _)| now < *at + TOKEN_CACHE_MS);
                cache.insert(token.to_string(), (now, p.clone()));
                p
            }
        };
        Ok(Credentials {
            is_admin: payload.roles.iter().any(|r| r == "admin"),
            user_id: payload.user_id,
            project_id: payload.project_id,
            roles: payload.roles,
        })
    }

    fn authorize(&self, action: &str, creds: &Credentials, project: &str) -> Result<(), ApiError> {
        let target = BTreeMap::from([("project_id", project.to_string())]);
        match self.policy.enforce(action, creds, &target) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::new(403, format!("Policy doesn't allow {action} to be performed."))),
            Err(e) => Err(ApiError::new(500, e.to_string())),
        }
    }

    fn new_uuid(&self, project: &str) -> String {
        let mut n = guard(&self.next_id);
        *n += 1;
        // Deterministic ids: the project, the worker's node and incarnation, and a counter
        // are as unique as a UUID here, across workers and restarts.
        format!("{project}-{}-{:06}", self.ctx.id_prefix(), *n)
    }

    /// POST /servers. Returns the new server's id (202 Accepted).
    pub async fn create_server(&self, token: &str, req: &CreateServer) -> Result<Vec<String>, ApiError> {
        let t0 = self.ctx.clock.now();
        let res = self.create_inner(token, req).await;
        match &res {
            // The instance (or its build request) may exist: neither a failed create nor a
            // successful one. Counted on its own, out of the create's timings.
            Err(e) if e.in_doubt => self.ctx.metrics.count("api.create.in_doubt", 1),
            _ => {
                self.ctx.metrics.record("api.create", self.ctx.clock.secs_since(t0), res.is_ok());
                if let Err(e) = &res {
                    self.ctx.metrics.count(&format!("api.create.{}", e.code), 1);
                }
            }
        }
        res
    }

    async fn create_inner(&self, token: &str, req: &CreateServer) -> Result<Vec<String>, ApiError> {
        let creds = self.credentials(token).await?;
        self.authorize("os_compute_api:servers:create", &creds, &creds.project_id)?;
        let flavor = self
            .flavors
            .get(&req.flavor)
            .ok_or_else(|| ApiError::new(400, format!("Flavor {} could not be found.", req.flavor)))?;
        let image = self
            .images
            .get(&req.image)
            .ok_or_else(|| ApiError::new(400, format!("Image {} could not be found.", req.image)))?;
        let db = &*self.ctx.db;
        let project = creds.project_id.clone();
        let rows = db
            .execute(vec![
                Op::Get { table: Table::Projects, key: project.clone() },
                Op::Get { table: Table::ProjectUsages, key: project.clone() },
            ])
            .await
            .map_err(ServiceError::from)?;
        let mut rows = rows.into_iter().map(dbx::row_of);
        let limits = match rows.next().flatten() {
            Some(Row { value: Record::Project(p), .. }) => p.quota,
            _ => return Err(ApiError::new(404, format!("project {project} not found"))),
        };
        let usage = match rows.next().flatten() {
            Some(Row { value: Record::ProjectUsage(u), .. }) => u,
            _ => Default::default(),
        };
        if req.count == 0 {
            return Err(ApiError::new(400, "min_count must be at least 1".to_string()));
        }
        self.ctx.cpu.spend(self.ctx.scenario.model.service_time.api_per_instance.0 * req.count).await;
        // min_count = max_count: the quota must allow all of them (nova's
        // check_num_instances_quota would lower max_count to min_count at most).
        let n = u64::from(req.count);
        let delta =
            stackbed_core::model::ProjectUsage { instances: n, cores: flavor.vcpus * n, ram_mb: flavor.ram_mb * n };
        if self.ctx.scenario.debug.plant_bug != Some(PlantedBug::QuotaNotChecked) {
            if let Err(e) = quota::check(&usage, &delta, &limits) {
                return Err(ApiError::new(403, format!("Quota exceeded: {e}")));
            }
        }
        let mut specs = Vec::with_capacity(req.count as usize);
        for _ in 0..req.count {
            let uuid = self.new_uuid(&project);
            let spec = RequestSpec {
                instance_uuid: uuid.clone(),
                project: project.clone(),
                user: creds.user_id.clone(),
                flavor: flavor.clone(),
                image: image.clone(),
                server_group: req.server_group.clone(),
                tried_hosts: Vec::new(),
                accepted_at_ms: self.ctx.clock.now_ms(),
            };
            self.record_request(req, &spec).await?;
            specs.push(spec);
        }
        let uuids = specs.iter().map(|s| s.instance_uuid.clone()).collect();
        self.ctx
            .bus
            .cast(crate::conductor::TOPIC, Rpc::ScheduleAndBuildInstances { specs })
            .await
            .map_err(|e| ApiError::new(503, e.to_string()))?;
        Ok(uuids)
    }

    /// What the API writes for one server before the conductor hears of it: the instance
    /// itself in Icehouse, a BuildRequest since.
    async fn record_request(&self, req: &CreateServer, spec: &RequestSpec) -> Result<(), ApiError> {
        let db = &*self.ctx.db;
        let uuid = &spec.instance_uuid;
        if self.ctx.scenario.control.era == Era::Icehouse {
            // Icehouse: the API writes the instance itself (quota reserve and commit collapse
            // into the usage row's compare-and-swap in the same transaction).
            if let Some(group) = &req.server_group {
                let op = self.add_group_member(group, uuid).await?;
                db.execute(vec![op]).await.map_err(ServiceError::from)?;
            }
            let inst = crate::conductor::new_instance(
                spec,
                spec.accepted_at_ms,
                VmState::Building,
                Some(TaskState::Scheduling),
                None,
            );
            dbx::create_instance(&self.ctx, &inst, false).await?;
            return Ok(());
        }
        let build_request = Op::Put {
            table: Table::BuildRequests,
            key: uuid.clone(),
            value: Record::BuildRequest(BuildRequest { spec: spec.clone(), created_at_ms: spec.accepted_at_ms }),
            expect: Expect::Absent,
        };
        // A group membership race (two creates into one group) re-reads the group and
        // retries. nova's build_request.create() has no wrap_db_retry: nothing else retries.
        let build_request = &build_request;
        dbx::retry_conflicts(
            &format!("server group membership of {uuid}"),
            dbx::ConflictsOn::Table(Table::ServerGroups),
            || async {
                let mut ops = vec![build_request.clone()];
                if let Some(group) = &req.server_group {
                    match self.add_group_member(group, uuid).await {
                        Ok(op) => ops.push(op),
                        // Not a database error: the request is wrong (400).
                        Err(e) => return Ok(Err(e)),
                    }
                }
                db.execute(ops).await?;
                Ok(Ok(()))
            },
        )
        .await??;
        Ok(())
    }

    async fn add_group_member(&self, group: &str, uuid: &str) -> Result<Op, ApiError> {
        let (expect, mut g) = match get(&*self.ctx.db, Table::ServerGroups, group).await.map_err(ServiceError::from)? {
            Some(Row { version, value: Record::ServerGroup(g) }) => (Expect::Version(version), g),
            _ => return Err(ApiError::new(400, format!("server group {group} not found"))),
        };
        g.members.push(uuid.to_string());
        Ok(Op::Put { table: Table::ServerGroups, key: group.to_string(), value: Record::ServerGroup(g), expect })
    }

    /// POST /os-server-groups.
    pub async fn create_server_group(
        &self,
        token: &str,
        name: &str,
        policy: stackbed_core::model::GroupPolicy,
    ) -> Result<String, ApiError> {
        let creds = self.credentials(token).await?;
        self.authorize("os_compute_api:servers:create", &creds, &creds.project_id)?;
        let id = format!("{}-group-{name}", creds.project_id);
        let group = ServerGroup { name: name.to_string(), policy, max_server_per_host: 1, members: Vec::new() };
        self.ctx
            .db
            .execute(vec![Op::Put {
                table: Table::ServerGroups,
                key: id.clone(),
                value: Record::ServerGroup(group),
                expect: Expect::Any,
            }])
            .await
            .map_err(ServiceError::from)?;
        Ok(id)
    }

    /// GET /servers/{id}.
    pub async fn show_server(&self, token: &str, uuid: &str) -> Result<ServerView, ApiError> {
        let creds = self.credentials(token).await?;
        let rows = self
            .ctx
            .db
            .execute(vec![
                Op::Get { table: Table::Instances, key: uuid.to_string() },
                Op::Get { table: Table::BuildRequests, key: uuid.to_string() },
            ])
            .await
            .map_err(ServiceError::from)?;
        let mut rows = rows.into_iter().map(dbx::row_of);
        match (rows.next().flatten(), rows.next().flatten()) {
            (Some(Row { value: Record::Instance(i), .. }), _) => {
                self.authorize("os_compute_api:servers:show", &creds, &i.project)?;
                Ok(view(&i))
            }
            (None, Some(Row { value: Record::BuildRequest(b), .. })) => {
                self.authorize("os_compute_api:servers:show", &creds, &b.spec.project)?;
                Ok(ServerView { id: uuid.to_string(), status: "BUILD", host: None, fault: None })
            }
            _ => Err(ApiError::new(404, format!("Instance {uuid} could not be found."))),
        }
    }

    /// GET /servers: the caller's project's servers (all projects for admin).
    pub async fn list_servers(&self, token: &str) -> Result<Vec<ServerView>, ApiError> {
        let creds = self.credentials(token).await?;
        self.authorize("os_compute_api:servers:index", &creds, &creds.project_id)?;
        let rows = self
            .ctx
            .db
            .execute(vec![
                Op::Scan { table: Table::Instances, prefix: String::new() },
                Op::Scan { table: Table::BuildRequests, prefix: String::new() },
            ])
            .await
            .map_err(ServiceError::from)?;
        let mut out = Vec::new();
        for res in rows {
            for (key, row) in dbx::rows_of(res) {
                match row.value {
                    Record::Instance(i) if (creds.is_admin || i.project == creds.project_id) && !i.deleted => {
                        out.push(view(&i))
                    }
                    Record::BuildRequest(b) if creds.is_admin || b.spec.project == creds.project_id => {
                        out.push(ServerView { id: key, status: "BUILD", host: None, fault: None })
                    }
                    _ => {}
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// DELETE /servers/{id} (204). A server that exists only as a BuildRequest (still being
    /// scheduled) answers 409: nova would delete the BuildRequest; stackbed does not model it yet.
    pub async fn delete_server(&self, token: &str, uuid: &str) -> Result<(), ApiError> {
        let creds = self.credentials(token).await?;
        let Some((_, inst)) = dbx::get_instance(&*self.ctx.db, uuid).await? else {
            if get(&*self.ctx.db, Table::BuildRequests, uuid).await.map_err(ServiceError::from)?.is_some() {
                return Err(ApiError::new(409, format!("Instance {uuid} is still being scheduled; retry the delete.")));
            }
            return Err(ApiError::new(404, format!("Instance {uuid} could not be found.")));
        };
        self.authorize("os_compute_api:servers:delete", &creds, &inst.project)?;
        if inst.deleted || inst.task_state == Some(TaskState::Deleting) {
            return Ok(());
        }
        if inst.host.is_none() && inst.vm_state != VmState::Error {
            return Err(ApiError::new(409, format!("Instance {uuid} is being rescheduled; retry the delete.")));
        }
        let not_deleting = [
            None,
            Some(TaskState::Scheduling),
            Some(TaskState::Networking),
            Some(TaskState::BlockDeviceMapping),
            Some(TaskState::Spawning),
        ];
        let inst =
            dbx::update_instance(&self.ctx, uuid, &not_deleting, |i| i.task_state = Some(TaskState::Deleting)).await?;
        match &inst.host {
            Some(host) => self
                .ctx
                .bus
                .cast(&crate::compute::topic(host), Rpc::TerminateInstance { uuid: uuid.to_string() })
                .await
                .map_err(|e| ApiError::new(503, e.to_string()))?,
            None => {
                // Never placed (ERROR after scheduling): a local delete, as nova's API does,
                // which also deletes whatever the consumer still holds in placement (a
                // scheduler's claim for a request that then failed; `_local_delete_cleanup`).
                dbx::update_instance(&self.ctx, uuid, &[Some(TaskState::Deleting)], |i| {
                    i.vm_state = VmState::Deleted;
                    i.task_state = None;
                    i.deleted = true;
                })
                .await?;
                if self.placement.release(uuid).await.is_err() {
                    // nova logs "Allocation delete failed during local delete cleanup".
                    self.ctx.metrics.count("api.local_delete_allocation_failed", 1);
                }
            }
        }
        Ok(())
    }
}

/// The text of an error body (or the body's kind).
fn message(body: &Body) -> String {
    match body {
        Body::Error(m) => m.clone(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

impl Api {
    /// Serves nova's compute API until the node goes away.
    pub async fn run(self) -> Result<(), ServiceError> {
        let http = self.ctx.http.clone();
        http.serve(NOVA_API, std::sync::Arc::new(self)).await?;
        Ok(())
    }
}

fn answer<T>(res: Result<T, ApiError>, status: u16, body: impl FnOnce(T) -> Body) -> HttpResponse {
    match res {
        Ok(v) => HttpResponse::new(status, body(v)),
        Err(e) => HttpResponse::error(e.code, e.message),
    }
}

/// The routes of nova's compute API that stackbed serves.
#[async_trait::async_trait]
impl HttpHandler for Api {
    async fn handle(&self, req: HttpRequest) -> HttpResponse {
        self.ctx.cpu.spend(self.ctx.scenario.model.service_time.api_per_request.0).await;
        let Some(token) = req.auth_token.clone() else {
            return HttpResponse::error(401, "The request you have made requires authentication.");
        };
        let id = req.path.strip_prefix("/servers/").filter(|id| !id.is_empty() && !id.contains('/'));
        match (req.method, req.path.as_str(), id, req.body) {
            (Method::Post, "/servers", _, Body::CreateServer { name, flavor, image, server_group, count }) => {
                let create = CreateServer { name, flavor, image, server_group, count };
                answer(self.create_server(&token, &create).await, 202, Body::CreatedServers)
            }
            (Method::Get, "/servers", _, _) => answer(self.list_servers(&token).await, 200, Body::Servers),
            (Method::Get, _, Some(id), _) => answer(self.show_server(&token, id).await, 200, Body::Server),
            (Method::Delete, _, Some(id), _) => answer(self.delete_server(&token, id).await, 204, |()| Body::Empty),
            (Method::Post, "/os-server-groups", _, Body::CreateServerGroup { name, policy }) => {
                answer(self.create_server_group(&token, &name, policy).await, 200, Body::Created)
            }
            (method, path, _, _) => HttpResponse::error(404, format!("nova-api has no {} {path}", method.name())),
        }
    }
}

/// A client of nova's compute API and of keystone's token API over HTTP (python-novaclient
/// and keystoneauth, as Rally uses them). A request that gets no response is an error of
/// code 0 (not an HTTP status): the caller sees connection refused, reset or timeout.
#[derive(Clone)]
pub struct NovaClient {
    http: HttpRef,
}

fn no_response(e: HttpError) -> ApiError {
    ApiError::new(0, e.to_string())
}

impl NovaClient {
    pub fn new(http: HttpRef) -> NovaClient {
        NovaClient { http }
    }

    async fn call(&self, service: &str, req: HttpRequest) -> Result<HttpResponse, ApiError> {
        let resp = self.http.request(service, req, HTTP_TIMEOUT).await.map_err(no_response)?;
        if resp.is_success() {
            Ok(resp)
        } else {
            Err(ApiError::new(resp.status, message(&resp.body)))
        }
    }

    /// POST /v3/auth/tokens: a project-scoped token for the user.
    pub async fn authenticate(&self, user: &str, password: &str, project: &str) -> Result<String, ApiError> {
        let body = Body::PasswordAuth { user: user.into(), password: password.into(), project: project.into() };
        match self.call(KEYSTONE, HttpRequest::new(Method::Post, TOKENS_PATH, body)).await?.body {
            Body::SubjectToken(t) => Ok(t),
            other => Err(ApiError::new(500, format!("keystone answered {}", message(&other)))),
        }
    }

    /// POST /servers (202): the new servers' ids (one unless a multi-create).
    pub async fn create_server(&self, token: &str, req: &CreateServer) -> Result<Vec<String>, ApiError> {
        let body = Body::CreateServer {
            name: req.name.clone(),
            flavor: req.flavor.clone(),
            image: req.image.clone(),
            server_group: req.server_group.clone(),
            count: req.count,
        };
        match self.call(NOVA_API, HttpRequest::new(Method::Post, "/servers", body).with_token(token)).await?.body {
            Body::CreatedServers(ids) => Ok(ids),
            other => Err(ApiError::new(500, format!("nova-api answered {}", message(&other)))),
        }
    }

    /// POST /os-server-groups: the new group's id.
    pub async fn create_server_group(
        &self,
        token: &str,
        name: &str,
        policy: stackbed_core::model::GroupPolicy,
    ) -> Result<String, ApiError> {
        let body = Body::CreateServerGroup { name: name.into(), policy };
        let req = HttpRequest::new(Method::Post, "/os-server-groups", body).with_token(token);
        match self.call(NOVA_API, req).await?.body {
            Body::Created(id) => Ok(id),
            other => Err(ApiError::new(500, format!("nova-api answered {}", message(&other)))),
        }
    }

    /// GET /servers/{id}.
    pub async fn show_server(&self, token: &str, uuid: &str) -> Result<ServerView, ApiError> {
        let req = HttpRequest::new(Method::Get, format!("/servers/{uuid}"), Body::Empty).with_token(token);
        match self.call(NOVA_API, req).await?.body {
            Body::Server(v) => Ok(v),
            other => Err(ApiError::new(500, format!("nova-api answered {}", message(&other)))),
        }
    }

    /// GET /servers.
    pub async fn list_servers(&self, token: &str) -> Result<Vec<ServerView>, ApiError> {
        let req = HttpRequest::new(Method::Get, "/servers", Body::Empty).with_token(token);
        match self.call(NOVA_API, req).await?.body {
            Body::Servers(v) => Ok(v),
            other => Err(ApiError::new(500, format!("nova-api answered {}", message(&other)))),
        }
    }

    /// DELETE /servers/{id} (204).
    pub async fn delete_server(&self, token: &str, uuid: &str) -> Result<(), ApiError> {
        let req = HttpRequest::new(Method::Delete, format!("/servers/{uuid}"), Body::Empty).with_token(token);
        self.call(NOVA_API, req).await.map(|_| ())
    }
}

fn view(i: &Instance) -> ServerView {
    ServerView { id: i.uuid.clone(), status: i.status(), host: i.host.clone(), fault: i.fault.clone() }
}
