"""CPU forward time and peak memory of the pretrained I3ResNet-152 encoder, per volume.

Each input size runs in its own child process so that its peak RSS is its own. Per size: load
the weights (fp32), one warm-up pass, then ``--repeats`` timed passes under ``torch.no_grad``.
Wall time is reported as min and median (the min is the best estimate on a shared machine),
with the process CPU time and the 1-minute load average so contention is visible.

    python benchmarks/i3resnet_forward.py                       # 224x224x160 and 96x96x64
    python benchmarks/i3resnet_forward.py --sizes 96x96x64 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of all Conv3d layers for one forward pass (the bulk of the compute)."""
    total = 0

    def hook(module: nn.Conv3d, _inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.kernel_size[2]
        total += out.numel() * (module.in_channels // module.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def run_one(size: tuple[int, int, int], repeats: int) -> dict[str, object]:
    """Time one input size in this process; returns a JSON-able record."""
    from ctsurv.models.i3resnet import load_i3resnet152

    t0 = time.perf_counter()
    model = load_i3resnet152(torch.float32)
    load_s = time.perf_counter() - t0
    rss_loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    x = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(0))  # (1, 1, X, Y, Z)
    walls, cpus = [], []
    with torch.no_grad():
        grid = model(x)  # warm-up: oneDNN primitive creation, allocator growth
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            model(x)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    return {
        "size_xyz": list(size),
        "grid": list(grid.shape),
        "gmacs": round(count_macs(model, x) / 1e9, 1),
        "load_s": round(load_s, 2),
        "wall_min_s": round(min(walls), 2),
        "wall_median_s": round(statistics.median(walls), 2),
        "cpu_median_s": round(statistics.median(cpus), 2),
        "rss_after_load_mb": round(rss_loaded_mb),
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
    }


def parse_size(text: str) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in text.lower().split("x"))
    return x, y, z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["224x224x160", "96x96x64"], help="X x Y x Z input sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one size, JSON out
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(parse_size(args.one), args.repeats)))
        return

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads, fp32, batch 1, torch.no_grad\n"
    )
    print(
        "| input X×Y×Z | output grid | GMACs | wall min (s) | wall median (s) | CPU median (s) "
        "| RSS after load (MB) | peak RSS (MB) | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", size, "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        grid = "×".join(str(v) for v in r["grid"][1:])
        print(
            f"| {size.replace('x', '×')} | {grid} | {r['gmacs']} | {r['wall_min_s']} | {r['wall_median_s']} "
            f"| {r['cpu_median_s']} | {r['rss_after_load_mb']} | {r['rss_peak_mb']} | {r['loadavg_1min']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
