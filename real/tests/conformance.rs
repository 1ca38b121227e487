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
