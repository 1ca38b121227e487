//! The seam conformance suites (`stackbed_services::conformance`) against the real
//! implementations; the simulated ones run the same suites in `tests/tests/sim_seams.rs`.
#![cfg(not(madsim))]

use stackbed_real::bus::InProcBroker;
use stackbed_real::sqlite::SqliteDb;
use stackbed_services::conformance;
use stackbed_services::seams::BusRef;

#[tokio::test]
async fn sqlite_conforms() {
    let db = SqliteDb::open(":memory:", stackbed_services::clock::Clock::start()).expect("open an in-memory database");
    conformance::database(&db).await;
}

#[tokio::test]
async fn in_process_bus_conforms() {
    let broker = InProcBroker::new();
    conformance::bus(|name| {
        let bus: BusRef = broker.client(&name);
        async move { bus }
    })
    .await;
}

#[tokio::test]
async fn in_process_http_conforms() {
    use stackbed_real::http::InProcNet;
    use stackbed_services::clock::Clock;
    use stackbed_services::seams::HandlerRef;

    let net = InProcNet::new();
    let clock = Clock::start();
    let start = |worker: String, handler: HandlerRef| {
        let http = net.client(&worker, clock.clone());
        let task = tokio::spawn(async move {
            let _ = http.serve(conformance::HTTP_SERVICE, handler).await;
        });
        let net = net.clone();
        async move {
            // Serving starts when the task first runs.
            let before = net.endpoints(conformance::HTTP_SERVICE);
            while net.endpoints(conformance::HTTP_SERVICE) == before {
                tokio::task::yield_now().await;
            }
            let stop: conformance::Stop = Box::new(move || task.abort());
            stop
        }
    };
    conformance::http(start, |name| {
        let http = net.client(&name, clock.clone());
        async move { http }
    })
    .await;
}
