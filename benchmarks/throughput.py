"""Throughput of each pretraining stage on this machine, and the projected time of a CT-RATE run on 8 GPUs.

    python benchmarks/throughput.py --work /tmp/ctsurv-throughput

Measured here, in this process (one line of JSON each, then a Markdown table for benchmarks/throughput.md):

* preprocessing, ``configs/demo.yaml`` on simulated studies (48 x 64 x 64 at 6 x 5 x 5 mm), with 1 and 2
  worker processes: volumes per second into an empty cache;
* preprocessing, ``configs/paper.yaml`` (Merlin's input for the I3ResNet-152 weights: 1.5 x 1.5 x 3 mm,
  224 x 224 x 160, HU [-1000, 1000]) on CT-RATE-sized files: a real chest CT from ../shared/realdata
  interpolated to 512 x 512 x 300 voxels of 0.7 x 0.7 x 1 mm, int16, gzip-compressed NIfTI (CT-RATE's median
  volume is about that size); 1 and 2 workers;
* reading preprocessed demo volumes from the cache through a ``DataLoader`` (0 and 2 worker processes);
* encoding demo volumes with the demo's cnn3d encoder (no gradients, batches of 8);
* one training step of stage 0 (cnn3d + augmentation, forward and backward, 8 volumes) and of stage 2 (the
  tiny LM on cached features, 8 studies with every presence question and the report).

The I3ResNet-152 forward pass is measured by benchmarks/i3resnet_forward.py (665 GMAC a volume); the
SmolLM2 step by benchmarks/smollm2_step.py. The projection at the end multiplies measured FLOP counts and
token counts by a GPU's peak and an assumed utilisation; it says which is which.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "ctsurv" / "configs"
REALDATA = Path(os.environ.get("CTSURV_REALDATA", ROOT.parent / "shared" / "realdata"))

# for the projection: public figures, not measured here
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM, dense bf16 tensor-core peak
ASSUMED_MFU = 0.35  # a typical share of that peak for LoRA fine-tuning and 3D convolutions in bf16
CT_RATE_VOLUMES = 50_188  # CT-RATE's reconstructed training volumes
I3RESNET_GMAC = 664.6  # per 224 x 224 x 160 volume, benchmarks/i3resnet_forward.md
LM_PARAMS = 7.24e9  # Mistral-7B


def timed(fn, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def report(name: str, **values: object) -> dict:
    row = {"stage": name, **values}
    print(json.dumps(row), flush=True)
    return row


def preprocess_rate(cohort, data, workers: int) -> float:
    """Volumes per second preprocessing ``cohort`` into an empty cache with ``workers`` processes."""
    from ctsurv.features import volume_store

    cache = Path(tempfile.mkdtemp(prefix="ctsurv-throughput-"))
    try:
        t0 = time.perf_counter()
        volume_store(cohort, dataclasses.replace(data, cache_dir=str(cache)), workers=workers)
        return len(cohort) / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def ct_rate_sized(folder: Path, n: int) -> list[Path]:
    """``n`` CT-RATE-sized NIfTI files (512 x 512 x 300, 0.7 x 0.7 x 1 mm, int16, gzip) made from a real chest CT."""
    import nibabel as nib
    from scipy.ndimage import zoom

    source = nib.load(REALDATA / "chest_cta_pulmonary_crop.nii.gz")
    hu = np.asarray(source.dataobj, dtype=np.float32)  # 1.5 mm isotropic
    big = zoom(hu, (512 / hu.shape[0], 512 / hu.shape[1], 300 / hu.shape[2]), order=1)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    files = []
    for i in range(n):  # distinct files (distinct cache keys); the content barely matters to the cost
        path = folder / f"ctrate_like_{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.round(big + i).astype(np.int16), affine), path)
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctsurv-throughput"))
    parser.add_argument("--n", type=int, default=48, help="simulated studies for the demo-config stages")
    parser.add_argument("--n-large", type=int, default=4, help="CT-RATE-sized files to preprocess")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from ctsurv.config import load_config
    from ctsurv.features import encode_all, volume_store
    from ctsurv.io.cohort import load_cohort
    from ctsurv.models.vlm import build_vlm
    from ctsurv.text.questions import PRESENCE_QUESTIONS
    from ctsurv.training.datasets import study_collate
    from ctsurv.training.stages import FindingLoss, InstructionLoss, set_trainable

    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    demo = load_config(CONFIGS / "demo.yaml", [])
    sim = args.work / f"sim{args.n}"
    if not (sim / "cohort.csv").is_file():
        code = f"from ctsurv.synthetic.simulate import simulate; simulate({str(sim)!r}, n={args.n}, seed=0, progress=False)"
        subprocess.run([sys.executable, "-c", code], check=True)
    cohort = load_cohort(sim / "cohort.csv", demo.data)
    for workers in (1, 2):
        rows.append(report("preprocess (demo config)", workers=workers, volumes_per_s=preprocess_rate(cohort, demo.data, workers)))

    if (REALDATA / "chest_cta_pulmonary_crop.nii.gz").is_file():
        paper = load_config(CONFIGS / "paper.yaml", ["language.model=tiny", "lora.enabled=false"])  # only its data section is used
        large = args.work / "ct_rate_sized"
        large.mkdir(exist_ok=True)
        files = sorted(large.glob("*.nii.gz")) or ct_rate_sized(large, args.n_large)
        table = large / "cohort.csv"
        table.write_text("id,volume\n" + "".join(f"S{i},{f}\n" for i, f in enumerate(files)))
        big = load_cohort(table, paper.data)  # no outcome columns: none are needed to preprocess
        for workers in (1, 2):
            rows.append(report("preprocess (paper config, 512x512x300 input)", workers=workers,
                               volumes_per_s=preprocess_rate(big, paper.data, workers)))

    torch.manual_seed(0)
    data = dataclasses.replace(demo.data, cache_dir=str(args.work / "cache"), workers=2)
    store = volume_store(cohort, data)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(store, batch_size=8, num_workers=workers)
        t0 = time.perf_counter()
        n = sum(len(batch) for batch in loader)
        rows.append(report("read preprocessed volumes (DataLoader)", workers=workers, volumes_per_s=n / (time.perf_counter() - t0)))

    vlm = build_vlm(demo, texts=["There is cardiomegaly. No pleural effusion."] * 20)
    encoder = vlm.vision_encoder.eval()
    rows.append(report("encode (cnn3d, no gradients)", workers=0,
                       volumes_per_s=len(store) / timed(lambda: encode_all(vlm, store[:]), repeats=1)))

    set_trainable(vlm, demo, "vision")
    encoder.train()
    stage0 = FindingLoss(vlm, len(PRESENCE_QUESTIONS), augment=True).train()
    images, labels = store[:8].float(), torch.randint(0, 2, (8, len(PRESENCE_QUESTIONS)))
    rows.append(report("train stage 0 (cnn3d, 8 volumes, fwd+bwd)", workers=0,
                       volumes_per_s=8 / timed(lambda: stage0(images, labels).backward())))

    set_trainable(vlm, demo, "instruct")
    stage2 = InstructionLoss(vlm, True, "sequence", n_findings=len(PRESENCE_QUESTIONS)).train()
    features = encode_all(vlm, store[:8])
    reports = cohort.reports()[:8]
    pairs = [[(q, "No.") for q in PRESENCE_QUESTIONS] + [("Describe the findings of this CT.", r)] for r in reports]
    batch = study_collate(vlm, "features")(list(zip(features, pairs)))
    tokens = int(batch["attention_mask"].sum())
    rows.append(report("train stage 2 (tiny LM, 8 studies, fwd+bwd)", workers=0, tokens_per_study=tokens / 8,
                       volumes_per_s=8 / timed(lambda: stage2(**batch).backward())))

    steps = {"stage 0 step": lambda: stage0(images, labels).backward(), "stage 2 step": lambda: stage2(**batch).backward()}
    threads_rows = thread_counts(steps)

    print("\n| stage | workers | volumes / s |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['workers']} | {r['volumes_per_s']:.2f} |")
    print("\n| step | torch threads | seconds, idle machine | seconds, one other busy process |")
    print("|---|---:|---:|---:|")
    for r in threads_rows:
        print(f"| {r['step']} | {r['threads']} | {r['idle_s']:.3f} | {r['busy_s']:.3f} |")
    projection(rows, tokens / 8)


def thread_counts(steps: dict) -> list[dict]:
    """Each step's seconds with 1 and with all of torch's threads, on the idle machine and with one other
    process spinning on a core (what `--threads` is for)."""
    default = torch.get_num_threads()
    out = []
    for name, step in steps.items():
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            idle = timed(step)
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.5)
                busy = timed(step)
            finally:
                spinner.kill()
                spinner.wait()
            out.append(report("threads", step=name, threads=threads, idle_s=idle, busy_s=busy))
    torch.set_num_threads(default)
    return out


def projection(rows: list[dict], demo_tokens_per_study: float) -> None:
    """CT-RATE (about 50 k volumes) on one node of 8 H100s: what each stage would take, from the measured CPU
    costs and FLOP counts, at an assumed utilisation (every assumption is printed)."""
    per_gpu = H100_BF16_DENSE_TFLOPS * 1e12 * ASSUMED_MFU
    pre = [r for r in rows if r["stage"].startswith("preprocess (paper") and r["workers"] == 1]
    print(f"\nProjection, CT-RATE ({CT_RATE_VOLUMES} volumes) on 8 H100s (bf16 dense peak {H100_BF16_DENSE_TFLOPS:.0f} "
          f"TFLOP/s each, assumed {ASSUMED_MFU:.0%} of it):")
    if pre:
        cpu_s = 1 / pre[0]["volumes_per_s"]  # one worker: CPU seconds per volume
        for cores in (32, 96):
            print(f"- preprocessing: {cpu_s:.1f} CPU-s a volume (measured, 1 worker); with {cores} cores: "
                  f"{CT_RATE_VOLUMES * cpu_s / cores / 3600:.1f} h, once (cached on disk afterwards)")
    encode_s = 2 * I3RESNET_GMAC * 1e9 / per_gpu
    print(f"- I3ResNet-152 features: {2 * I3RESNET_GMAC:.0f} GFLOP a volume -> {encode_s * 1e3:.1f} ms a volume a GPU; "
          f"{CT_RATE_VOLUMES * encode_s / 8 / 60:.1f} min on 8 GPUs, once (the encoder is frozen and its features cached); "
          "in practice reading the 32 MB float32 cache entries bounds it (8 GPUs x 1 / 4 ms = 2,000 volumes/s = 64 GB/s)")
    # a 7B LM with LoRA and gradient checkpointing: forward 2N, recomputed forward 2N, backward to the
    # activations 2N (the frozen weights get no gradient) = 6N FLOPs a token
    for name, tokens in (("measured tiny-LM token count", demo_tokens_per_study),):
        flops = 6 * LM_PARAMS * tokens
        epoch_h = CT_RATE_VOLUMES * flops / (8 * per_gpu) / 3600
        print(f"- stage 2 with a 7B LM ({name}: {tokens:.0f} tokens a study, 6N FLOPs a token): "
              f"{flops / 1e12:.0f} TFLOP a study, {epoch_h:.1f} h an epoch on 8 GPUs; configs/paper.yaml's 3 epochs: "
              f"{3 * epoch_h:.1f} h; stage 1 (the report only, about a fifth of the tokens, 1 epoch): "
              f"{epoch_h / 5:.1f} h")


if __name__ == "__main__":
    main()
