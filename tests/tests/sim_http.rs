//! The HTTP seam in the simulator: the conformance suite (`stackbed_services::conformance::
//! http`, which `real/tests/conformance.rs` runs against the in-process implementation).
#![cfg(madsim)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use stackbed_services::clock::Clock;
use stackbed_services::conformance;
use stackbed_services::seams::{HandlerRef, Http};
use stackbed_sim::http::{Endpoints, SimHttp};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn simulated_http_conforms() {
    for seed in 1..=3 {
        Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(async {
            let handle = Handle::current();
            let clock = Clock::start();
            let mut endpoints = Endpoints::default();
            let worker_ips = ["10.9.2.1", "10.9.2.2"];
            for (w, i) in conformance::HTTP_WORKERS.iter().zip(worker_ips) {
                endpoints.add(conformance::HTTP_SERVICE, w, ip(i));
            }
            let endpoints = Arc::new(endpoints);
            let client = handle.create_node().ip(ip("10.9.1.1")).build();
            let eps = endpoints.clone();
            client
                .spawn(async move {
                    let start = |worker: String, handler: HandlerRef| {
                        let at = if worker == conformance::HTTP_WORKERS[0] { worker_ips[0] } else { worker_ips[1] };
                        let eps = eps.clone();
                        let node = Handle::current()
                            .create_node()
                            .name(&worker)
                            .ip(ip(at))
                            .init(move || {
                                let http = SimHttp::new(&worker, ip(at), eps.clone(), clock);
                                let handler = handler.clone();
                                async move {
                                    let _ = http.serve(conformance::HTTP_SERVICE, handler).await;
                                }
                            })
                            .build();
                        async move {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            let id = node.id();
                            let stop: conformance::Stop = Box::new(move || Handle::current().kill(id));
                            stop
                        }
                    };
                    conformance::http(start, |name| {
                        let http: stackbed_services::seams::HttpRef =
                            SimHttp::new(&name, ip("10.9.1.1"), eps.clone(), clock);
                        async move { http }
                    })
                    .await;
                })
                .await
                .unwrap();
        });
    }
}
