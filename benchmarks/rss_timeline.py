"""Where a `ctsurv` command's memory grows: run it in this process and, every 0.1 s, record the resident size and
the innermost ctsurv frames of the main thread; print each step of >= 16 MiB (up or down) and the peak.

    python benchmarks/rss_timeline.py survival --config src/ctsurv/configs/demo.yaml --cohort COHORT.csv ...

Run it at two cohort sizes and compare the steps: what grows with the cohort shows up as a step that is larger at
the larger size (how `command_memory.md`'s causes were found). Linux only (/proc/self/statm).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

PAGE = os.sysconf("SC_PAGE_SIZE")
STEP = 16 * 2**20


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def where(frame) -> str:
    """The innermost four ctsurv frames (outside the CLI), innermost first."""
    mine = [f for f in traceback.extract_stack(frame) if "/ctsurv/" in f.filename and "/cli/" not in f.filename]
    return " < ".join(f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}" for f in mine[::-1][:4]) or "?"


def main() -> None:
    from ctsurv.cli import app

    main_thread, t0 = threading.get_ident(), time.time()
    steps: list[tuple[float, int, str]] = []
    peak = [0, ""]

    def watch() -> None:
        last = 0
        while True:
            rss = resident()
            if abs(rss - last) >= STEP:
                frame = sys._current_frames().get(main_thread)
                steps.append((time.time() - t0, rss, where(frame) if frame is not None else "-"))
                last = rss
                if rss > peak[0]:
                    peak[:] = [rss, steps[-1][2]]
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    sys.argv = ["ctsurv", *sys.argv[1:]]
    try:
        app()
    except SystemExit:
        pass
    for t, rss, at in steps:
        print(f"STEP {t:7.1f}s {rss / 2**20:7.0f} MiB  {at}")
    print(f"PEAK {peak[0] / 2**20:.0f} MiB at {peak[1]}")


if __name__ == "__main__":
    main()
