//! The simulated compute host: the `Hypervisor` seam as a latency and failure model. Each
//! phase draws its duration from the scenario's distribution with the host's own seeded
//! RNG; images are fetched once per host into the `_base` cache (concurrent boots of the same
//! image wait on one download); a spawn fails with the scenario's probability.
//!
//! With `[model.images] enabled = true` the image path follows
//! `stackbed_core::image_model` instead of `model.image_fetch`: a miss pays download,
//! checksum verification and (with force_raw_images) conversion by the image's size, a hit
//! pays a lookup, every instance pays an overlay, bases nobody used for
//! `unused_base_max_age_s` are dropped, and `prewarmed` starts every host with a full cache.
//! The spawn then reports the phases `image_fetch` (the wait, for every boot),
//! `image_download`, `image_verify`, `image_convert` (for the boot that fetched) and
//! `image_overlay`.

use stackbed_core::sync::guard;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::sync::OnceCell;

use stackbed_core::dist::Dist;
use stackbed_core::image_model::BaseEntry;
use stackbed_core::model::{ComputeNode, Image, Instance};
use stackbed_core::scenario::HostModel;
use stackbed_services::seams::{HvError, Hypervisor, PhaseTimings};

use crate::knobs::NodeCell;

/// One `_base` entry: the download every boot of the image waits on, and who uses it.
struct Base {
    cell: Arc<OnceCell<()>>,
    entry: BaseEntry,
}

#[derive(Default)]
struct Bases {
    by_image: BTreeMap<String, Base>,
    /// Instance uuid to the image whose base it uses (counted once per instance).
    users: BTreeMap<String, String>,
}

/// The guests a host runs, kept outside the nova-compute process: a service restart keeps
/// them (libvirt keeps its domains), a power-off ([`GuestTable::power_off`]) loses them. The
/// run's registry holds one per host and gives it to every incarnation of the host's compute.
#[derive(Clone, Default)]
pub struct GuestTable(Arc<Mutex<BTreeSet<String>>>);

impl GuestTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // Every critical section is one insert, remove, clear or copy: a panic inside one
        // cannot leave the set half-changed.
        guard(&self.0)
    }

    /// The uuids of the guests this host runs, in order.
    pub fn list(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    /// The host lost power: every guest is gone.
    pub fn power_off(&self) {
        self.lock().clear();
    }

    fn started(&self, uuid: &str) {
        self.lock().insert(uuid.to_string());
    }

    fn destroyed(&self, uuid: &str) {
        self.lock().remove(uuid);
    }
}

pub struct SimHost {
    node: ComputeNode,
    guests: GuestTable,
    /// The faults in force on this host (slow, hypervisor errors).
    knobs: NodeCell,
    model: HostModel,
    rng: Mutex<SmallRng>,
    image_cache: Mutex<BTreeMap<String, Arc<OnceCell<()>>>>,
    bases: Mutex<Bases>,
    started: tokio::time::Instant,
}

impl SimHost {
    pub fn new(node: ComputeNode, model: HostModel, rng: SmallRng, guests: GuestTable, knobs: NodeCell) -> SimHost {
        SimHost {
            node,
            guests,
            knobs,
            model,
            rng: Mutex::new(rng),
            image_cache: Mutex::new(BTreeMap::new()),
            bases: Mutex::new(Bases::default()),
            started: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn jittered(&self, secs: f64) -> Duration {
        let f = self.model.images.jitter(&mut *guard(&self.rng));
        Duration::from_secs_f64((secs * f * self.knobs.get().slow).max(0.0))
    }

    async fn sleep_s(&self, secs: f64) -> f64 {
        let t = self.jittered(secs);
        tokio::time::sleep(t).await;
        t.as_secs_f64()
    }

    /// The image path of `image_model`: the `_base` lookup (and fetch on a miss), then the
    /// instance's overlay.
    async fn modelled_image(&self, instance: &Instance, image: &Image, phases: &mut PhaseTimings) {
        let m = &self.model.images;
        let t0 = tokio::time::Instant::now();
        let cell = {
            let now = self.now_ms();
            let mut b = guard(&self.bases);
            let expired = b.by_image.get(&image.name).is_some_and(|x| x.entry.expired(now, m.unused_base_max_age_s));
            if expired {
                b.by_image.remove(&image.name);
            }
            let base = b.by_image.entry(image.name.clone()).or_insert_with(|| Base {
                cell: Arc::new(if m.prewarmed { OnceCell::new_with(Some(())) } else { OnceCell::new() }),
                entry: BaseEntry::default(),
            });
            let cell = base.cell.clone();
            if b.users.insert(instance.uuid.clone(), image.name.clone()).is_none() {
                if let Some(base) = b.by_image.get_mut(&image.name) {
                    base.entry.users += 1;
                    base.entry.unused_since_ms = None;
                }
            }
            cell
        };
        let mut fetched = None;
        if cell.initialized() {
            self.sleep_s(m.cache_hit_s).await;
        } else {
            cell.get_or_init(|| async {
                let cost = m.miss_cost(image.size_mb, &image.disk_format);
                let d = self.sleep_s(cost.download_s).await;
                let v = self.sleep_s(cost.verify_s).await;
                let c = if cost.convert_s > 0.0 { Some(self.sleep_s(cost.convert_s).await) } else { None };
                fetched = Some((d, v, c));
            })
            .await;
        }
        phases.push(("image_fetch", t0.elapsed().as_secs_f64()));
        if let Some((d, v, c)) = fetched {
            phases.push(("image_download", d));
            phases.push(("image_verify", v));
            if let Some(c) = c {
                phases.push(("image_convert", c));
            }
        }
        phases.push(("image_overlay", self.sleep_s(m.overlay_create_s).await));
    }

    /// The instance no longer uses its base; the base's unused clock starts when nobody does.
    fn release_base(&self, instance: &Instance) {
        let now = self.now_ms();
        let mut b = guard(&self.bases);
        if let Some(image) = b.users.remove(&instance.uuid) {
            if let Some(base) = b.by_image.get_mut(&image) {
                base.entry.users = base.entry.users.saturating_sub(1);
                if base.entry.users == 0 {
                    base.entry.unused_since_ms = Some(now);
                }
            }
        }
    }

    fn draw(&self, d: &Dist) -> Duration {
        let slow = self.knobs.get().slow;
        let mut rng = guard(&self.rng);
        Duration::from_secs_f64(d.sample(&mut *rng) * slow)
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

    async fn spawn(&self, instance: &Instance, image: &Image) -> Result<PhaseTimings, HvError> {
        if self.model.images.enabled {
            let mut phases = PhaseTimings::new();
            self.modelled_image(instance, image, &mut phases).await;
            return self.start_guest(instance, phases).await;
        }
        let t0 = tokio::time::Instant::now();
        if self.model.image_cache {
            let cell = guard(&self.image_cache).entry(image.name.clone()).or_default().clone();
            cell.get_or_init(|| async {
                self.phase(&self.model.image_fetch).await;
            })
            .await;
        } else {
            self.phase(&self.model.image_fetch).await;
        }
        let fetch = t0.elapsed().as_secs_f64();
        self.start_guest(instance, vec![("image_fetch", fetch)]).await
    }

    async fn destroy(&self, instance: &Instance) -> Result<(), HvError> {
        self.guests.destroyed(&instance.uuid);
        self.release_base(instance);
        self.phase(&self.model.destroy).await;
        Ok(())
    }

    async fn list_instance_uuids(&self) -> Result<Vec<String>, HvError> {
        Ok(self.guests.list())
    }
}

impl SimHost {
    /// Define and start, the failure draw, vif-plugged and guest boot, after `phases`. The
    /// guest exists from its start on: a compute killed while waiting for vif-plugged or
    /// the boot leaves it behind, as libvirt would.
    async fn start_guest(&self, instance: &Instance, mut phases: PhaseTimings) -> Result<PhaseTimings, HvError> {
        let start = self.phase(&self.model.spawn).await;
        let failed = {
            let p = self.model.spawn_failure_probability;
            p > 0.0 && guard(&self.rng).gen_bool(p)
        };
        if failed || self.knobs.hypervisor_error() {
            return Err(HvError::Reschedule(
                "libvirtError: internal error: process exited while connecting to monitor".into(),
            ));
        }
        self.guests.started(&instance.uuid);
        let vif = self.phase(&self.model.vif_plugged).await;
        let boot = self.phase(&self.model.guest_boot).await;
        phases.extend([("define_start", start), ("vif_plugged", vif), ("guest_boot", boot)]);
        Ok(phases)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use stackbed_core::scenario::Scenario;
    use stackbed_services::report::{Report, RunOptions};

    fn run(name: &str, seed: u64) -> Report {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(name);
        let scenario = Arc::new(Scenario::load(&path).unwrap_or_else(|e| panic!("{e}")));
        let opts = RunOptions {
            scenario,
            scenario_file: path.display().to_string(),
            seed,
            revision: "test".into(),
            replay: String::new(),
        };
        crate::run(&opts).unwrap()
    }

    fn action(r: &Report, name: &str) -> Option<(u64, f64, f64)> {
        r.actions.iter().find(|a| a.action == name).map(|a| (a.count, a.mean_s, a.max_s))
    }

    /// The cold and warm image scenarios differ only in the cache: the image phases carry the
    /// whole difference, and every (host, image) pair downloads exactly once when cold.
    #[test]
    fn cold_cache_pays_one_download_per_host_and_image_warm_pays_none() {
        let cold = run("images-cold.toml", 1);
        let warm = run("images-warm.toml", 1);
        assert!(cold.passed && warm.passed);
        let (downloads, _, _) = action(&cold, "compute.spawn.image_download").expect("cold runs download");
        assert!((3..=24).contains(&downloads), "{downloads} downloads: at most one per host and image");
        assert_eq!(action(&warm, "compute.spawn.image_download"), None, "a warm cache never downloads");
        assert_eq!(action(&warm, "compute.spawn.image_verify"), None);
        let (_, _, warm_fetch_max) = action(&warm, "compute.spawn.image_fetch").unwrap();
        assert!(warm_fetch_max < 0.01, "a hit is a lookup, got {warm_fetch_max} s");
        let (_, cold_fetch_mean, _) = action(&cold, "compute.spawn.image_fetch").unwrap();
        let (_, cold_boot, _) = action(&cold, "boot_server").unwrap();
        let (_, warm_boot, _) = action(&warm, "boot_server").unwrap();
        // The boot difference is (almost all) the fetch wait.
        assert!(cold_boot - warm_boot > 0.5 * cold_fetch_mean, "cold {cold_boot}, warm {warm_boot}");
        // Overlays cost what the calibration measured, for every boot.
        let (n, overlay_mean, _) = action(&warm, "compute.spawn.image_overlay").unwrap();
        assert_eq!(n, 120);
        let want = stackbed_core::image_model::ImageModel::default().overlay_create_s;
        assert!(overlay_mean > 0.8 * want && overlay_mean < 1.25 * want, "{overlay_mean} vs {want}");
        // Deterministic like every other run.
        assert_eq!(run("images-cold.toml", 1).digest, cold.digest);
    }
}
