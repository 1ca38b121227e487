//! Keystone: projects, users and role assignments in the database; tokens signed with a
//! key ring and validated offline (see `stackbed_core::token`). Served over HTTP (the
//! `Http` seam), never the bus: POST /v3/auth/tokens issues, GET /v3/auth/tokens validates.

use std::collections::BTreeMap;

use rand::RngCore;
use sha2::{Digest, Sha256};

use stackbed_core::model::{Project, Record, Table, User};
use stackbed_core::store::{Expect, Op, Row};
use stackbed_core::token::{expand_implied_roles, KeyRing, TokenPayload, TOKEN_EXPIRATION_MS};

use stackbed_core::scenario::Scenario;

use crate::ctx::Ctx;
use crate::dbx::{get, ServiceError};
use crate::seams::{Body, HttpHandler, HttpRequest, HttpResponse, Method, KEYSTONE};

/// The path of keystone's token API.
pub const TOKENS_PATH: &str = "/v3/auth/tokens";

pub fn password_hash(password: &str) -> String {
    Sha256::digest(password.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The projects and users a scenario's tenants describe: (project, user, password).
pub fn tenants(scenario: &Scenario) -> Vec<(Project, User, String)> {
    let mut out = Vec::new();
    for group in &scenario.tenants {
        for i in 0..group.count {
            let id = if group.count == 1 { group.name.clone() } else { format!("{}-{i}", group.name) };
            let password = format!("secret-{id}");
            let user = User {
                id: format!("{id}-user"),
                name: format!("{id}-user"),
                password_sha256: password_hash(&password),
                roles: BTreeMap::from([(id.clone(), vec![group.role.clone()])]),
            };
            out.push((Project { id: id.clone(), name: id, quota: group.quota }, user, password));
        }
    }
    out
}

/// keystone-manage bootstrap: create the scenario's projects and users.
pub async fn bootstrap(ctx: &Ctx) -> Result<(), ServiceError> {
    let mut ops = Vec::new();
    for (project, user, _) in tenants(&ctx.scenario) {
        ops.push(Op::Put {
            table: Table::Projects,
            key: project.id.clone(),
            value: Record::Project(project),
            expect: Expect::Any,
        });
        ops.push(Op::Put {
            table: Table::Users,
            key: user.name.clone(),
            value: Record::User(user),
            expect: Expect::Any,
        });
    }
    ctx.db.execute(ops).await?;
    Ok(())
}

pub struct Identity {
    ctx: Ctx,
    keys: KeyRing,
}

impl Identity {
    pub fn new(ctx: Ctx) -> Identity {
        // Every keystone worker reads the same key repository.
        let mut key = [0u8; 32];
        ctx.deployment_rng("keystone-fernet-key").fill_bytes(&mut key);
        Identity { ctx, keys: KeyRing::new(key) }
    }

    async fn authenticate(&self, user: &str, password: &str, project: &str) -> Result<String, String> {
        let row = get(&*self.ctx.db, Table::Users, user).await.map_err(|e| e.to_string())?;
        let Some(Row { value: Record::User(u), .. }) = row else {
            return Err("401 The request you have made requires authentication.".into());
        };
        if u.password_sha256 != password_hash(password) {
            return Err("401 The request you have made requires authentication.".into());
        }
        let Some(roles) = u.roles.get(project) else {
            return Err(format!("401 user {user} has no role on project {project}"));
        };
        let now = self.ctx.clock.now_ms();
        Ok(self.keys.issue(&TokenPayload {
            user_id: u.id.clone(),
            project_id: project.to_string(),
            roles: expand_implied_roles(roles),
            issued_at_ms: now,
            expires_at_ms: now + TOKEN_EXPIRATION_MS,
        }))
    }

    /// Bootstraps, then serves keystone's API until the node goes away. Every worker
    /// derives the same key ring (one shared fernet key repository, as deployments sync it).
    pub async fn run(self) -> Result<(), ServiceError> {
        bootstrap(&self.ctx).await?;
        let http = self.ctx.http.clone();
        http.serve(KEYSTONE, std::sync::Arc::new(self)).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl HttpHandler for Identity {
    async fn handle(&self, req: HttpRequest) -> HttpResponse {
        let t0 = self.ctx.clock.now();
        self.ctx.cpu.spend(self.ctx.scenario.model.service_time.keystone_per_request.0).await;
        match (req.method, req.path.as_str(), req.body) {
            (Method::Post, TOKENS_PATH, Body::PasswordAuth { user, password, project }) => {
                let res = self.authenticate(&user, &password, &project).await;
                self.ctx.metrics.record("keystone.authenticate", self.ctx.clock.secs_since(t0), res.is_ok());
                match res {
                    Ok(t) => HttpResponse::new(201, Body::SubjectToken(t)),
                    Err(e) => HttpResponse::error(401, e),
                }
            }
            (Method::Get, TOKENS_PATH, Body::SubjectToken(token)) => {
                match self.keys.validate(&token, self.ctx.clock.now_ms()) {
                    Ok(p) => HttpResponse::new(200, Body::TokenInfo(p)),
                    Err(e) => HttpResponse::error(404, e.to_string()),
                }
            }
            (method, path, _) => HttpResponse::error(404, format!("keystone has no {} {path}", method.name())),
        }
    }
}
