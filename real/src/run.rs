//! One real run: every control-plane service as a task on a tokio runtime, talking through
//! the in-process broker, the SQLite database and one libvirt connection per compute host;
//! then the shared driver (`stackbed_services::report::drive`) and the report.
//!
//! Images: when the run has an image service (a scenario with `[guest]`, or
//! `STACKBED_IMAGES_DIR`), the scenario's `[[images]]` are generated (declared size and
//! format, deterministic bytes) and uploaded before the workload. With `[guest]` every host
//! connects to the guest's libvirt URI (`qemu:///system` by default), keeps a `_base` cache
//! and boots real guests (see [`crate::libvirt::GuestBoot`]).

use stackbed_core::sync::guard;
use std::future::Future;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stackbed_services::api::{Api, NovaClient};
use stackbed_services::clock::Clock;
use stackbed_services::compute::Compute;
use stackbed_services::conductor::Conductor;
use stackbed_services::ctx::Ctx;
use stackbed_services::db_retry::DbRetry;
use stackbed_services::dbx::ServiceError;
use stackbed_services::identity::Identity;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::{Monitor, MonitorRef};
use stackbed_services::placement::Placement;
use stackbed_services::report::{drive, Report, ReportContext, RunData, RunOptions};
use stackbed_services::scheduler::Scheduler;
use stackbed_services::seams::{Db, HvRef, Hypervisor};

use stackbed_core::model::Image;
use stackbed_images::disk::DiskFormat;
use stackbed_images::glance::{ImageService, NewImage};

use crate::bus::InProcBroker;
use crate::http::InProcNet;
use crate::libvirt::{GuestBoot, HostImages, LibvirtHypervisor, DEFAULT_URI, IMAGES_DIR_ENV};
use crate::sqlite::SqliteDb;

/// Environment variable: where the SQLite database goes (a path or `:memory:`).
pub const DB_ENV: &str = "STACKBED_DB";
/// Environment variable: the libvirt URI of every compute host.
pub const LIBVIRT_URI_ENV: &str = "STACKBED_LIBVIRT_URI";

/// How long the runtime waits for blocking work (libvirt, SQLite) when the run ends.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where the real seams point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealConfig {
    /// The SQLite file (or `:memory:`); `None`: a temporary file removed after the run.
    pub db_path: Option<String>,
    /// The libvirt URI every compute host connects to. For `test:///default` each host
    /// gets a private instance of the test driver instead (see
    /// [`LibvirtHypervisor::connect_private_test`]): libvirt shares `test:///default`
    /// between all connections of a process, and hosts must not see each other's guests.
    pub libvirt_uri: String,
}

impl Default for RealConfig {
    fn default() -> Self {
        RealConfig { db_path: None, libvirt_uri: DEFAULT_URI.to_string() }
    }
}

impl RealConfig {
    /// The defaults, overridden by `STACKBED_DB` and `STACKBED_LIBVIRT_URI` when set.
    pub fn from_env() -> RealConfig {
        let mut c = RealConfig::default();
        if let Some(p) = std::env::var(DB_ENV).ok().filter(|p| !p.is_empty()) {
            c.db_path = Some(p);
        }
        if let Some(u) = std::env::var(LIBVIRT_URI_ENV).ok().filter(|u| !u.is_empty()) {
            c.libvirt_uri = u;
        }
        c
    }
}

/// A database path unique to this process, seed and run.
fn temp_db_path(seed: u64) -> PathBuf {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("stackbed-real-{}-seed{seed}-{n}.sqlite", std::process::id()))
}

/// Runs the scenario once with real seams (configured from the environment, see
/// [`RealConfig::from_env`]).
pub fn run(opts: &RunOptions) -> Result<Report, String> {
    run_with(opts, &RealConfig::from_env())
}

/// The bytes of a generated image: deterministic, not all zeros, so the checksum means
/// something (the rest of the declared size is sparse zeros).
fn image_pattern(name: &str) -> Vec<u8> {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (0..65536u64).map(|i| (seed.rotate_left((i % 64) as u32) ^ i) as u8).collect()
}

/// Makes an image of the declared size and format: the bytes a real run uploads.
pub fn generate_image(path: &Path, image: &Image) -> Result<DiskFormat, String> {
    let format = DiskFormat::from_name(&image.disk_format).ok_or_else(|| {
        format!(
            "image {}: disk_format `{}` cannot be generated for a real run (raw or qcow2)",
            image.name, image.disk_format
        )
    })?;
    let size = image
        .size_mb
        .max(1)
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("image {}: size_mb {} is too large", image.name, image.size_mb))?;
    let pattern = image_pattern(&image.name);
    match format {
        DiskFormat::Raw => {
            let mut f = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            f.set_len(size)
                .and_then(|_| f.seek(SeekFrom::Start(0)))
                .and_then(|_| f.write_all(&pattern))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        DiskFormat::Qcow2 => {
            use stackbed_images::disk::{create_qcow2, Disk, OpenOptions};
            create_qcow2(path, size).map_err(|e| e.to_string())?;
            let d = Disk::open(path, OpenOptions { writable: true, direct: false }).map_err(|e| e.to_string())?;
            d.write(&pattern, 0).and_then(|_| d.flush()).map_err(|e| e.to_string())?;
        }
    }
    Ok(format)
}

/// Uploads the scenario's `[[images]]` into the image service (an image already there by
/// name is kept): generated bytes of the declared size and format, with their checksum.
pub fn upload_images(glance: &ImageService, images: &[Image], scratch: &Path) -> Result<(), String> {
    std::fs::create_dir_all(scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    for image in images {
        if glance.find_by_name(&image.name).is_some() {
            continue;
        }
        let path = scratch.join("upload.img");
        let disk_format = generate_image(&path, image)?;
        let new = NewImage {
            name: image.name.clone(),
            disk_format,
            container_format: "bare".into(),
            properties: image.properties.clone(),
        };
        let mut f = std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        glance.upload(new, &mut f).map_err(|e| format!("cannot upload image {}: {e}", image.name))?;
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Where a run keeps its image service and the hosts' caches, and whether it is temporary.
fn images_root(seed: u64, guests: bool) -> Option<(PathBuf, bool)> {
    if let Some(dir) = std::env::var_os(IMAGES_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some((PathBuf::from(dir), false));
    }
    guests.then(|| {
        let p = temp_db_path(seed).with_extension("images");
        (p, true)
    })
}

/// Runs the scenario once with real seams configured by `cfg`.
pub fn run_with(opts: &RunOptions, cfg: &RealConfig) -> Result<Report, String> {
    let wall = Instant::now();
    let guest = opts.scenario.guest.as_ref().map(GuestBoot::from_scenario).transpose()?;
    // Guests cannot boot on the test driver: a scenario with `[guest]` names its own URI.
    let uri = match &opts.scenario.guest {
        Some(g) if cfg.libvirt_uri == DEFAULT_URI => g.libvirt_uri.clone(),
        _ => cfg.libvirt_uri.clone(),
    };
    // The image service holds the scenario's images before the workload starts.
    let images = images_root(opts.seed, guest.is_some());
    let open_and_upload = |root: &Path| -> Result<Arc<ImageService>, String> {
        let glance = ImageService::open(&root.join("glance")).map_err(|e| e.to_string())?;
        upload_images(&glance, &opts.scenario.images, &root.join("scratch"))?;
        Ok(Arc::new(glance))
    };
    let glance = images.as_ref().map(|(root, _)| open_and_upload(root)).transpose();
    let outcome = glance.and_then(|glance| run_world(opts, cfg, &uri, guest, images.as_ref().zip(glance)));
    if let Some((root, true)) = &images {
        let _ = std::fs::remove_dir_all(root);
    }
    let (ctx, data, monitor, hypervisor) = outcome?;
    let wall_s = wall.elapsed().as_secs_f64();
    Ok(Report::build(
        &ctx,
        &monitor,
        data,
        ReportContext { opts, world: "real", hypervisor, wall_s, faults: Default::default() },
    ))
}

/// What the report calls the hypervisor: libvirt's domain type, with TCG named.
fn hypervisor_name(kind: &str) -> String {
    match kind {
        "qemu" => "qemu-tcg".to_string(),
        k => k.to_string(),
    }
}

type Images<'a> = Option<(&'a (PathBuf, bool), Arc<ImageService>)>;

fn run_world(
    opts: &RunOptions,
    cfg: &RealConfig,
    uri: &str,
    guest: Option<GuestBoot>,
    images: Images<'_>,
) -> Result<(Ctx, RunData, MonitorRef, String), String> {
    let (db_path, temporary) = match &cfg.db_path {
        Some(p) => (p.clone(), false),
        None => (temp_db_path(opts.seed).to_string_lossy().into_owned(), true),
    };
    if temporary {
        SqliteDb::remove_files(&db_path).map_err(|e| format!("cannot clear {db_path}: {e}"))?;
    }
    // One libvirt connection per compute host (blocking; before the runtime starts).
    let mut hosts = Vec::new();
    for (name, group) in opts.scenario.hosts() {
        let mut hv = if uri == DEFAULT_URI {
            LibvirtHypervisor::connect_private_test(group, &name)?
        } else {
            LibvirtHypervisor::connect(uri, group, &name)?
        };
        if let (Some(g), Some(((root, _), glance))) = (&guest, &images) {
            hv = hv.with_images(HostImages::open(root, &name, glance.clone())?).with_guest(g.clone())?;
        }
        hosts.push((Arc::new(hv), group.clone()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let outcome = rt.block_on(run_services(opts, &db_path, &hosts));
    // Service tasks loop forever; dropping the runtime cancels them.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    if temporary {
        // Best effort: a leftover temporary file is not worth failing the run for.
        let _ = SqliteDb::remove_files(&db_path);
    }
    let (ctx, data, monitor) = outcome?;
    let mut kinds: Vec<&str> = hosts.iter().map(|(hv, _)| hv.kind()).collect();
    kinds.dedup();
    let hypervisor = if kinds.is_empty() {
        "none".to_string()
    } else {
        kinds.into_iter().map(hypervisor_name).collect::<Vec<_>>().join("+")
    };
    Ok((ctx, data, monitor, hypervisor))
}

type Failures = Arc<Mutex<Vec<String>>>;

/// Spawns a service; if its `run` returns an error, counts it and keeps the message.
fn spawn_service<F>(name: &str, metrics: &Metrics, failures: &Failures, service: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = Result<(), ServiceError>> + Send + 'static,
{
    let (name, metrics, failures) = (name.to_string(), metrics.clone(), failures.clone());
    tokio::spawn(async move {
        if let Err(e) = service.await {
            metrics.count(&format!("service_failed.{name}"), 1);
            guard(&failures).push(format!("{name}: {e}"));
        }
    })
}

async fn run_services(
    opts: &RunOptions,
    db_path: &str,
    hosts: &[(Arc<LibvirtHypervisor>, stackbed_core::scenario::HostGroup)],
) -> Result<(Ctx, RunData, MonitorRef), String> {
    let clock = Clock::start();
    let metrics = Metrics::default();
    let scenario = opts.scenario.clone();
    let monitor: MonitorRef = Monitor::new(scenario.control.quota_recheck, scenario.workload.liveness_bound.ms());
    let sqlite =
        SqliteDb::open(db_path, clock.clone()).map_err(|e| format!("cannot open the database {db_path}: {e}"))?;
    sqlite.observe(monitor.clone());
    let db: Db = Arc::new(sqlite);
    let broker = InProcBroker::with_metrics(
        metrics.clone(),
        stackbed_services::seams::BusOptions { durable: scenario.control.amqp_durable_queues },
    );
    let net = InProcNet::new();
    let ctx = |node: &str| Ctx {
        bus: broker.client(node),
        db: db.clone(),
        http: net.client(node, clock.clone()),
        cpu: Arc::new(stackbed_services::seams::RealCpu),
        clock: clock.clone(),
        db_retry: DbRetry::for_node(&scenario, opts.seed, node, clock.clone(), metrics.clone()),
        metrics: metrics.clone(),
        scenario: scenario.clone(),
        seed: opts.seed,
        node: node.to_string(),
        incarnation: 0,
    };
    let failures: Failures = Arc::default();
    let mut tasks = vec![
        spawn_service("nova-conductor", &metrics, &failures, Conductor::new(ctx("nova-conductor")).run()),
        spawn_service("nova-scheduler", &metrics, &failures, Scheduler::new(ctx("nova-scheduler")).run()),
    ];
    // The HTTP services' workers (the scenario's `[topology.workers]`), served in-process.
    let workers = scenario.topology.workers();
    for i in 1..=workers.keystone {
        let name = format!("keystone-{i}");
        tasks.push(spawn_service(&name, &metrics, &failures, Identity::new(ctx(&name)).run()));
    }
    for i in 1..=workers.placement {
        let name = format!("placement-{i}");
        tasks.push(spawn_service(&name, &metrics, &failures, Placement::new(ctx(&name)).run()));
    }
    for i in 1..=workers.api {
        let name = format!("nova-api-{i}");
        tasks.push(spawn_service(&name, &metrics, &failures, Api::new(ctx(&name)).run()));
    }
    for (hv, group) in hosts {
        let host = hv.node_info().host;
        let compute = Compute::new(ctx(&host), hv.clone() as HvRef, group.clone());
        tasks.push(spawn_service(&host, &metrics, &failures, compute.run()));
    }

    // The workload is a client of nova-api and keystone, as Rally is.
    let api_ctx = ctx(stackbed_core::faults::CLIENT);
    let services = [stackbed_services::seams::KEYSTONE, stackbed_services::seams::NOVA_API];
    net.wait_for(&services, Duration::from_secs(60)).await?;
    let mut data = drive(api_ctx.clone(), NovaClient::new(api_ctx.http.clone()), monitor.clone(), None).await;

    for t in &tasks {
        t.abort();
    }
    // Tear down the guests the run left (boot-only workloads keep them ACTIVE).
    for (hv, _) in hosts {
        if hv.destroy_all().await.is_err() {
            metrics.count("libvirt.cleanup_errors", 1);
        }
    }
    let failures = guard(&failures).clone();
    if let (Some(a), false) = (&mut data.aborted, failures.is_empty()) {
        *a = format!("{a}; service failures: {}", failures.join("; "));
    }
    Ok((api_ctx, data, monitor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, size_mb: u64, disk_format: &str) -> Image {
        Image { name: name.into(), size_mb, disk_format: disk_format.into(), properties: Default::default() }
    }

    /// The scenario's images reach the image service with their declared size and format and
    /// a checksum of their bytes; an existing name is kept; an unknown format is an error.
    #[test]
    fn upload_generates_images_of_the_declared_size() {
        let root = std::env::temp_dir().join(format!("stackbed-upload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let glance = ImageService::open(&root.join("glance")).unwrap();
        let images = [image("raw-one", 3, "raw"), image("q", 5, "qcow2")];
        upload_images(&glance, &images, &root.join("scratch")).unwrap();
        let raw = glance.find_by_name("raw-one").unwrap();
        assert_eq!((raw.size, raw.virtual_size, raw.disk_format), (3 << 20, 3 << 20, DiskFormat::Raw));
        let q = glance.find_by_name("q").unwrap();
        assert_eq!((q.virtual_size, q.disk_format), (5 << 20, DiskFormat::Qcow2));
        let got = root.join("got");
        glance.download(&raw.id, &got).unwrap();
        assert_eq!(stackbed_images::glance::sha256_file(&got).unwrap(), raw.os_hash_value);
        assert_ne!(std::fs::read(&got).unwrap()[..4096], [0u8; 4096], "not all zeros");
        upload_images(&glance, &images, &root.join("scratch")).unwrap();
        assert_eq!(glance.list().len(), 2, "uploaded once");
        let e = upload_images(&glance, &[image("v", 1, "vmdk")], &root.join("scratch")).unwrap_err();
        assert!(e.contains("image v: disk_format `vmdk`"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
