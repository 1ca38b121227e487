#!/usr/bin/env bash
# Every test of stackbed, in both builds: formatting, lints, the real build's tests, the
# simulator build's tests, and the cross-process determinism check.
#
#   scripts/test.sh
#
# The simulator build needs nothing but cargo. The real build links libvirt (through the
# `virt` crate) and SQLite, and the image tests run qemu-img, qemu-io and isoinfo; the
# real-guest test and scenario boot a Debian kernel with a busybox initramfs on QEMU through
# libvirtd (TCG, or KVM where the CPU allows). This script installs their Debian packages
# when missing and starts virtlogd and libvirtd when they are not running.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-utils (qemu-img, qemu-io) and genisoimage (isoinfo): the references the image tests
# check the project's qcow2 images and config drives against.
# qemu-system-x86, libvirt-daemon-system, linux-image-amd64, busybox-static, cpio, xz-utils: the
# real guest (scripts/guest/build.sh) and the daemon that runs it.
# chromium: tests/tests/reports.rs opens report.html headless (screenshot, no request).
packages=(libvirt-dev libsqlite3-dev pkg-config qemu-utils genisoimage
    qemu-system-x86 libvirt-daemon-system linux-image-amd64 busybox-static cpio xz-utils chromium)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=""
# Twice: installing one package can remove another. A machine with a backported qemu-utils
# loses it when Debian's qemu-system-x86 comes in (their versions conflict); the second
# round installs the matching qemu-utils.
for _ in 1 2; do
    missing=()
    for pkg in "${packages[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || break
    echo "== installing ${missing[*]} (needed by the real build and the report tests)"
    [ -n "$updated" ] || { $sudo apt-get update -qq; updated=1; }
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
for tool in qemu-img qemu-io isoinfo qemu-system-x86_64 chromium; do
    command -v "$tool" >/dev/null || { echo "FAILED: $tool is missing after the install" >&2; exit 1; }
done

# libvirtd for qemu:///system, started by hand (no systemd here); only its local socket.
pgrep -x virtlogd >/dev/null || $sudo virtlogd -d
pgrep -x libvirtd >/dev/null || $sudo libvirtd -d
for _ in $(seq 1 50); do
    $sudo virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
done

echo "== format"
cargo fmt --all --check

echo "== lints (real build, then simulator build)"
cargo clippy --release --target-dir target/real --workspace --all-targets -q -- -D warnings
cargo sim-clippy --workspace --all-targets -q -- -D warnings

echo "== tests, real build (tokio, SQLite, libvirt test:///default, a real QEMU guest, io_uring)"
scripts/guest/build.sh target/guest >/dev/null
# Neither the guest boot nor the io_uring reads may skip here: this machine has both.
STACKBED_REQUIRE_GUEST=1 STACKBED_REQUIRE_URING=1 cargo real-test --workspace

echo "== real guests end to end: scenarios/real-guest.toml through the control plane"
out=$(cargo real run scenarios/real-guest.toml --seed 1 --report-dir target/real-guest)
echo "$out" | grep -E '^scenario|guest_boot|^\| boot_server|^iterations'
echo "$out" | grep -q '^iterations: 4 ok, 0 failed' || { echo "FAILED: real guests did not all boot" >&2; exit 1; }

echo "== tests, simulator build (--cfg madsim)"
# The headless-Chromium test of report.html may not skip here: chromium was installed above.
STACKBED_REQUIRE_CHROMIUM=1 cargo sim-test --workspace

echo "== determinism: same seed, same digest, in separate processes; another seed differs"
digest() {
    cargo sim run scenarios/quickstart.toml --seed "$1" --report-dir "target/determinism/$2" | grep '^digest:'
}
a=$(digest 1 a)
b=$(digest 1 b)
c=$(digest 2 c)
echo "seed 1: $a"
echo "seed 1: $b"
echo "seed 2: $c"
if [ "$a" != "$b" ]; then
    echo "FAILED: seed 1 gave two different digests" >&2
    exit 1
fi
if [ "$a" = "$c" ]; then
    echo "FAILED: seeds 1 and 2 gave the same digest" >&2
    exit 1
fi
echo "determinism: 2 passed, 0 failed"

echo "== fault scenarios: a fixed seed range of each, as shipped and with its mitigation"
# Each file in scenarios/faults/ states what seed 1 shows: a scenario with a
# `# mitigation:` line fails as shipped and passes with it; one without passes as shipped.
mkdir -p target/faults
for f in scenarios/faults/*.toml; do
    flags=$(sed -n 's/^# mitigation: *//p' "$f" | head -1)
    if [ -n "$flags" ]; then
        if cargo sim sweep "$f" --seeds 1..3 --jobs 2 --out "target/faults/$(basename "$f" .toml).json" >/dev/null 2>&1; then
            echo "FAILED: $f passed as shipped; it should show its failure" >&2
            exit 1
        fi
        # shellcheck disable=SC2086 # the flags are words
        cargo sim sweep "$f" --seeds 1..3 --jobs 2 $flags --out "target/faults/$(basename "$f" .toml)-mitigated.json" |
            grep 'seeds run'
    else
        cargo sim sweep "$f" --seeds 1..3 --jobs 2 --out "target/faults/$(basename "$f" .toml).json" | grep 'seeds run'
    fi
done

echo "== a strategy from outside the tree: examples/custom-strategy through compare beside spread"
# Its own crate (not a workspace member), on stackbed as a library; the simulator build
# shares target/sim, so stackbed's compiled dependencies are reused.
example=(--manifest-path examples/custom-strategy/Cargo.toml --target-dir target/sim
    --config "build.rustflags=['--cfg','madsim']")
cargo fmt --manifest-path examples/custom-strategy/Cargo.toml --check
cargo clippy --release -q "${example[@]}" -- -D warnings
cargo build --release -q "${example[@]}"
out=$(target/sim/release/stackbed-custom compare scenarios/quickstart.toml --strategies spread,fewest-instances \
    --seeds 1..2 --report-dir target/custom-strategy 2>/dev/null)
echo "$out" | grep -E '^metric|^accepted|^runs with'
echo "$out" | grep -qE '^metric +spread +fewest-instances' ||
    { echo "FAILED: compare did not run the custom strategy beside spread" >&2; exit 1; }
echo "$out" | grep -q 'runs with a violated invariant or aborted: 0' ||
    { echo "FAILED: a run with the custom strategy failed" >&2; exit 1; }

echo "== HA scenarios: a fixed seed range of each, as shipped and with its mitigation"
# Each file in scenarios/ha/ passes its checks both ways; what it shows is a count in
# report.json's anomalies, which tests/tests/galera.rs checks on seeds 1 and 2.
for f in scenarios/ha/*.toml; do
    flags=$(sed -n 's/^# mitigation: *//p' "$f" | head -1)
    cargo sim sweep "$f" --seeds 1..3 --jobs 2 --out "target/faults/$(basename "$f" .toml).json" | grep 'seeds run'
    # shellcheck disable=SC2086 # the flags are words
    cargo sim sweep "$f" --seeds 1..3 --jobs 2 $flags --out "target/faults/$(basename "$f" .toml)-mitigated.json" |
        grep 'seeds run'
done

# Seed 1 of a scenario twice, in separate processes: the same digest, byte for byte.
replays() {
    local name a b
    name=$(basename "$1" .toml)
    a=$(cargo sim run "$1" --seed 1 --report-dir "target/determinism/$name-a" 2>&1 | grep '^digest:' || true)
    b=$(cargo sim run "$1" --seed 1 --report-dir "target/determinism/$name-b" 2>&1 | grep '^digest:' || true)
    echo "$name seed 1: $a"
    echo "$name seed 1: $b"
    if [ -z "$a" ] || [ "$a" != "$b" ]; then
        echo "FAILED: $1 ($2) did not replay byte for byte" >&2
        exit 1
    fi
}

echo "== determinism on a Galera cluster, and with kills and a broker restart, in separate processes"
replays scenarios/ha/galera-writers.toml "a Galera cluster behind HAProxy"
replays scenarios/faults/broker-restart.toml "a run with faults"
echo "determinism with faults: passed"
