"""Peak memory of `ctsurv pretrain` and `ctsurv survival` with configs/demo.yaml as the cohort grows.

    python benchmarks/command_memory.py --root /tmp/ctsurv-memory --sizes 600 3000

For each size it simulates one cohort under ``--root`` (kept for reruns; it has reports and survival, so both
commands read the same studies), then runs, each in a fresh process:

* ``ctsurv pretrain`` with one epoch per stage (memory does not grow with epochs: each epoch frees what the
  last one held; the time does), into an empty ``data.cache_dir``: preprocessing, stages 0-2 and the
  held-out evaluation;
* ``ctsurv survival --pretrained`` on that run, reading the same ``data.cache_dir`` (the volumes and the
  encoder's features are then on disk): scoring every study with the model, the 5-fold cross-validation of
  every method, the bootstrap and the figures.

The measured process runs the CLI in-process and reports ``resource.getrusage`` at exit: ``ru_maxrss`` of
itself (the command's main process) and of its largest child (a preprocessing worker). Linux carries the
launcher's resident set over into a child's ``ru_maxrss`` at exec, so this launcher imports no ctsurv module
and simulates in a subprocess too. Prints a Markdown table for benchmarks/command_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "src" / "ctsurv" / "configs" / "demo.yaml"
ONE_EPOCH = ["pretrain.vision.epochs=1", "pretrain.align.epochs=1", "pretrain.instruct.epochs=1"]

RUNNER = """
import json, resource, sys
from ctsurv.cli import app
sys.argv = ["ctsurv", *json.loads(sys.argv[1])]
try:
    app()
except SystemExit as e:
    if e.code not in (None, 0):
        raise
print("PEAK " + json.dumps({"main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                            "child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measure(args: list[str]) -> dict:
    """Run ``ctsurv *args`` in a fresh process: its peak RSS (main process, largest child) and seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    peaks = [line for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
    if proc.returncode != 0 or not peaks:
        raise SystemExit(f"ctsurv {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(peaks[-1][5:]), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ctsurv-memory"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 3000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--commands", nargs="+", default=["pretrain", "survival"], choices=["pretrain", "survival"],
                        help="survival needs the pretrain run of the same size (from this or an earlier run)")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for n in args.sizes:
        cohort = args.root / f"sim{n}"
        if not (cohort / "cohort.csv").is_file():
            t0 = time.perf_counter()
            code = (f"from ctsurv.synthetic.simulate import simulate; "
                    f"simulate({str(cohort)!r}, n={n}, seed=0, workers={args.workers}, progress=False)")
            subprocess.run([sys.executable, "-c", code], check=True)
            print(f"simulated {n} studies in {time.perf_counter() - t0:.0f} s", flush=True)
        cache, run = args.root / f"cache{n}", args.root / f"run{n}"
        if "pretrain" in args.commands:  # a cold cache and a fresh run
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
        common = ["--config", str(CONFIG), "--cohort", str(cohort / "cohort.csv")]
        data = [f"data.cache_dir={cache}", f"data.workers={args.workers}"]
        for command, extra in (
            ("pretrain", ["--out", str(run / "pretrain"), *data, *ONE_EPOCH]),
            ("survival", ["--out", str(run / "survival"), "--pretrained", str(run / "pretrain"), *data]),
        ):
            if command not in args.commands:
                continue
            result = measure([command, *common, *extra])
            rows.append((n, command, result))
            print(n, command, json.dumps(result), f"load {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| studies | command | peak RSS, main process (MiB) | peak RSS, largest child (MiB) | seconds |")
    print("|---:|---|---:|---:|---:|")
    for n, command, r in rows:
        print(f"| {n} | `ctsurv {command}` | {r['main_mib']:.0f} | {r['child_mib']:.0f} | {r['seconds']:.0f} |")
    for command in ("pretrain", "survival"):
        peaks = [r["main_mib"] for _, c, r in rows if c == command]
        if len(peaks) > 1:
            print(f"{command}: main-process peak grows {100 * (peaks[-1] / peaks[0] - 1):+.1f}% "
                  f"from {args.sizes[0]} to {args.sizes[-1]} studies")


if __name__ == "__main__":
    main()
