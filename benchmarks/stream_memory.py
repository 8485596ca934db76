"""Benchmark the streamed volumes (``features.store``) against the stacked tensor they replace: peak RSS and
wall time of preprocessing + encoding a simulated cohort with configs/demo.yaml, per cohort size.

    python benchmarks/stream_memory.py --root /tmp/ctsurv-stream --sizes 300 1500 --workers 2

For each size it simulates a cohort under ``--root`` (kept for reruns), then runs each step in a fresh
subprocess and reads ``resource.getrusage`` there (``ru_maxrss``: the process's peak resident set, in KiB on
Linux; ``RUSAGE_CHILDREN`` for the largest preprocessing worker). Linux carries the resident set of the forked
launcher over into the measured child's ``ru_maxrss`` at exec, so this launcher stays small: it imports no
ctsurv module and simulates in a subprocess too (an earlier version simulated in-process, and its first child
after each simulation reported the launcher's ~1.2 GiB).

* ``streamed, cold cache``  ``volume_store`` (preprocessing in ``--workers`` processes into an empty
  ``data.cache_dir``), then ``encode_all`` and ``cells_all`` batch by batch: what a command does now;
* ``stacked, warm cache``   the previous path: every volume read (from that cache, so no recomputing) and
  stacked into one (N, C, X, Y, Z) float16 tensor, then ``encode_all`` and ``projector.cells`` on it;
* ``streamed, warm cache``  the streamed path again, nothing left to preprocess.

Prints a Markdown table for benchmarks/stream_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "src" / "ctsurv" / "configs" / "demo.yaml"


def child(cohort: str, cache: str, mode: str, workers: int) -> None:
    """One measured step, in its own process: prints a JSON line with peak RSS (MiB) and seconds."""
    import dataclasses

    import torch

    from ctsurv.config import load_config
    from ctsurv.features import cells_all, encode_all, preprocess_all, volume_store
    from ctsurv.io.cohort import load_cohort
    from ctsurv.models.vlm import build_vlm

    torch.manual_seed(0)
    cfg = load_config(CONFIG, [])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=cache, workers=workers))
    vlm = build_vlm(cfg, texts=["no finding"] * 4)  # the vision encoder and projector are what run here
    studies = load_cohort(cohort, cfg.data)
    start = time.perf_counter()
    if mode == "stacked":
        volumes = preprocess_all(studies, cfg, progress=False)  # (N, C, X, Y, Z) float16 in memory
        grids, cells = encode_all(vlm, volumes), vlm.projector.cells(volumes)
    else:
        volumes = volume_store(studies, cfg.data)
        grids, cells = encode_all(vlm, volumes), cells_all(vlm, volumes)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "worker_peak_mib": workers_peak, "seconds": seconds,
                      "grids": list(grids.shape), "cells": None if cells is None else list(cells.shape)}))


def measure(cohort: Path, cache: Path, mode: str, workers: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(cohort), str(cache), mode, str(workers)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} on {cohort} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ctsurv-stream"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1500])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cohort, cache, mode, workers = args.child
        child(cohort, cache, mode, int(workers))
        return

    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for n in args.sizes:
        folder = args.root / f"sim{n}"
        if not (folder / "cohort.csv").is_file():
            t0 = time.perf_counter()
            code = f"from ctsurv.synthetic.simulate import simulate; simulate({str(folder)!r}, n={n}, seed=0, workers={args.workers}, progress=False)"
            subprocess.run([sys.executable, "-c", code], check=True)
            print(f"simulated {n} studies in {time.perf_counter() - t0:.0f} s", flush=True)
        cache = args.root / f"cache{n}"
        shutil.rmtree(cache, ignore_errors=True)
        for label, mode in (("streamed, cold cache", "streamed"), ("stacked, warm cache", "stacked"),
                            ("streamed, warm cache", "streamed")):
            result = measure(folder / "cohort.csv", cache, mode, args.workers)
            rows.append((n, label, result))
            print(n, label, json.dumps(result), f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"launcher peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print("\n| studies | path | peak RSS, main process (MiB) | peak RSS, largest worker (MiB) | seconds |")
    print("|---:|---|---:|---:|---:|")
    for n, label, r in rows:
        worker = f"{r['worker_peak_mib']:.0f}" if label.endswith("cold cache") else "-"
        print(f"| {n} | {label} | {r['peak_mib']:.0f} | {worker} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
