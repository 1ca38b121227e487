//! The simulated compute host: the `Hypervisor` seam as a latency and failure model. Each
//! phase draws its duration from the scenario's distribution with the host's own seeded
//! RNG; images are fetched once per host into the `_base` cache (concurrent boots of the same
//! image wait on one download); a spawn fails with the scenario's probability.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::sync::OnceCell;

use stackbed_core::dist::Dist;
use stackbed_core::model::{ComputeNode, Image, Instance};
use stackbed_core::scenario::HostModel;
use stackbed_services::seams::{HvError, Hypervisor, PhaseTimings};

pub struct SimHost {
    node: ComputeNode,
    model: HostModel,
    rng: Mutex<SmallRng>,
    image_cache: Mutex<BTreeMap<String, Arc<OnceCell<()>>>>,
}

impl SimHost {
    pub fn new(node: ComputeNode, model: HostModel, rng: SmallRng) -> SimHost {
        SimHost { node, model, rng: Mutex::new(rng), image_cache: Mutex::new(BTreeMap::new()) }
    }

    fn draw(&self, d: &Dist) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        Duration::from_secs_f64(d.sample(&mut *rng))
    }

    async fn phase(&self, d: &Dist) -> f64 {
        let t = self.draw(d);
        tokio::time::sleep(t).await;
        t.as_secs_f64()
    }
}

#[async_trait]
impl Hypervisor for SimHost {
    fn node_info(&self) -> ComputeNode {
        self.node.clone()
    }

    fn kind(&self) -> &'static str {
        "sim"
    }

    async fn allocate_network(&self, _instance: &Instance) -> Result<(), HvError> {
        self.phase(&self.model.network_allocate).await;
        Ok(())
    }

    async fn deallocate_network(&self, _instance: &Instance) -> Result<(), HvError> {
        Ok(())
    }

    async fn block_device_mapping(&self, _instance: &Instance) -> Result<(), HvError> {
        self.phase(&self.model.block_device_mapping).await;
        Ok(())
    }

    async fn spawn(&self, _instance: &Instance, image: &Image) -> Result<PhaseTimings, HvError> {
        let t0 = tokio::time::Instant::now();
        if self.model.image_cache {
            let cell = self
                .image_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(image.name.clone())
                .or_default()
                .clone();
            cell.get_or_init(|| async {
                self.phase(&self.model.image_fetch).await;
            })
            .await;
        } else {
            self.phase(&self.model.image_fetch).await;
        }
        let fetch = t0.elapsed().as_secs_f64();
        let start = self.phase(&self.model.spawn).await;
        let failed = {
            let p = self.model.spawn_failure_probability;
            p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).gen_bool(p)
        };
        if failed {
            return Err(HvError::Reschedule(
                "libvirtError: internal error: process exited while connecting to monitor".into(),
            ));
        }
        let vif = self.phase(&self.model.vif_plugged).await;
        let boot = self.phase(&self.model.guest_boot).await;
        Ok(vec![("image_fetch", fetch), ("define_start", start), ("vif_plugged", vif), ("guest_boot", boot)])
    }

    async fn destroy(&self, _instance: &Instance) -> Result<(), HvError> {
        self.phase(&self.model.destroy).await;
        Ok(())
    }
}
