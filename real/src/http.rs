//! The `Http` seam in-process, until a real HTTP server lands: a registry of the services'
//! handlers, and clients that dispatch a request straight to one of them. The semantics the
//! conformance suite checks are the simulator's: round-robin over the live endpoints, each
//! tried once per request; no endpoint: connection refused; a server that stops while a
//! request runs resets it (the handler's future is dropped); a request that outlasts its
//! timeout fails with a timeout.
//!
//! An endpoint is live from `serve` until the serving future is dropped (its task aborted).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use stackbed_services::clock::Clock;
use stackbed_services::seams::{HandlerRef, Http, HttpError, HttpRef, HttpRequest, HttpResponse, RequestIds};

struct Endpoint {
    id: u64,
    node: String,
    handler: HandlerRef,
    /// Changes (its sender drops) when the endpoint stops serving.
    stopped: watch::Receiver<()>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    services: BTreeMap<String, Vec<Arc<Endpoint>>>,
}

/// One process's HTTP "network": every service registered in it, every client of it.
#[derive(Clone, Default)]
pub struct InProcNet(Arc<Mutex<Registry>>);

impl InProcNet {
    pub fn new() -> InProcNet {
        InProcNet::default()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().expect("http registry lock poisoned: a panic while holding it")
    }

    /// The HTTP stack of `node` (its request ids carry the node name).
    pub fn client(&self, node: &str, clock: Clock) -> HttpRef {
        Arc::new(InProcHttp {
            net: self.clone(),
            node: node.to_string(),
            ids: RequestIds::new(node, clock.now_ms()),
            cursors: Mutex::new(BTreeMap::new()),
        })
    }

    /// How many endpoints `service` has now.
    pub fn endpoints(&self, service: &str) -> usize {
        self.registry().services.get(service).map_or(0, Vec::len)
    }

    /// Waits until each of `services` has an endpoint, at most `wait`.
    pub async fn wait_for(&self, services: &[&str], wait: Duration) -> Result<(), String> {
        let t0 = tokio::time::Instant::now();
        for service in services {
            while self.endpoints(service) == 0 {
                if t0.elapsed() > wait {
                    return Err(format!("{service} has no endpoint after {wait:?}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

/// Deregisters its endpoint when the serving future is dropped.
struct Registration {
    net: InProcNet,
    service: String,
    id: u64,
    _stop: watch::Sender<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut r = self.net.registry();
        if let Some(list) = r.services.get_mut(&self.service) {
            list.retain(|e| e.id != self.id);
        }
    }
}

pub struct InProcHttp {
    net: InProcNet,
    node: String,
    ids: RequestIds,
    cursors: Mutex<BTreeMap<String, usize>>,
}

#[async_trait]
impl Http for InProcHttp {
    async fn request(&self, service: &str, mut req: HttpRequest, timeout: Duration) -> Result<HttpResponse, HttpError> {
        req.request_id = self.ids.next_id();
        let endpoint = {
            let r = self.net.registry();
            let list = r.services.get(service).map(Vec::as_slice).unwrap_or(&[]);
            if list.is_empty() {
                return Err(HttpError::ConnectionRefused { service: service.to_string(), endpoints: 0 });
            }
            let mut c = self.cursors.lock().expect("http cursor lock poisoned: a panic while holding it");
            let n = c.entry(service.to_string()).or_insert(0);
            *n = n.wrapping_add(1);
            list[(*n - 1) % list.len()].clone()
        };
        let (method, path, request_id) = (req.method.name(), req.path.clone(), req.request_id.clone());
        let mut stopped = endpoint.stopped.clone();
        let handled = async {
            tokio::select! {
                resp = endpoint.handler.handle(req) => Some(resp),
                // The sender drops when the server stops: the request is reset.
                _ = stopped.changed() => None,
            }
        };
        match tokio::time::timeout(timeout, handled).await {
            Ok(Some(mut resp)) => {
                resp.request_id = request_id;
                Ok(resp)
            }
            Ok(None) => Err(HttpError::reset(service, &endpoint.node, method, path)),
            Err(_) => Err(HttpError::timeout(service, method, path, timeout)),
        }
    }

    async fn serve(&self, service: &str, handler: HandlerRef) -> Result<(), HttpError> {
        let (stop, stopped) = watch::channel(());
        let id = {
            let mut r = self.net.registry();
            r.next_id += 1;
            let id = r.next_id;
            let endpoint = Arc::new(Endpoint { id, node: self.node.clone(), handler, stopped });
            r.services.entry(service.to_string()).or_default().push(endpoint);
            id
        };
        let _registration = Registration { net: self.net.clone(), service: service.to_string(), id, _stop: stop };
        std::future::pending::<()>().await;
        Ok(())
    }
}
