#!/usr/bin/env python3
"""Generate a VM request trace in stackbed's CSV format (see core/src/trace.rs).

Shaped after public cloud VM traces: Poisson arrivals, mostly small VMs (1-2 vCPU) with a
tail of large ones, 2 or 4 GB of RAM per vCPU, log-normal lifetimes with a long tail.
Deterministic for a given seed.

    scripts/gen_trace.py --rows 200 --rate 2 --seed 1 > traces/sample.csv
    scripts/gen_trace.py --rows 20000 --rate 10 --median-lifetime 600 --seed 7 > traces/compare-20k.csv
"""
import argparse
import math
import random


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2.0, help="mean arrivals per second")
    ap.add_argument("--median-lifetime", type=float, default=600.0, help="seconds")
    ap.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of lifetimes")
    ap.add_argument("--max-lifetime", type=float, default=6 * 3600.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    sizes = [(1, 0.30), (2, 0.40), (4, 0.20), (8, 0.08), (16, 0.02)]
    print("arrival_s,vcpus,memory_mb,disk_gb,lifetime_s")
    t = 0.0
    for _ in range(a.rows):
        t += rng.expovariate(a.rate)
        x, vcpus = rng.random(), sizes[-1][0]
        for v, p in sizes:
            if x < p:
                vcpus = v
                break
            x -= p
        memory = vcpus * rng.choice([2048, 4096])
        disk = vcpus * 20
        life = min(a.max_lifetime, a.median_lifetime * math.exp(a.sigma * rng.gauss(0.0, 1.0)))
        print(f"{t:.3f},{vcpus},{memory},{disk},{life:.1f}")


if __name__ == "__main__":
    main()
