"""A bounded local load check of `ctsurv serve`, and the page's screenshot.

Starts ``ctsurv serve RUN --port PORT`` as its own process, then through the page's HTTP API (``/read``, via
gradio_client, each request uploading the scan as the page does):

- 50 sequential reads of synthetic scans (cycling through ``--volumes``), then 3 rounds of 4 concurrent clients
  reading 5 scans each (20 requests a round, 4 at a time);
- the server's resident memory (its process and children, from /proc) after each sequential request and after
  each concurrent round; "flat" means the memory after the last sequential request is within a few percent of
  the memory after the first ten (warm-up), and the concurrent rounds after the first add little;
- with ``--screenshot``: headless Chromium opens the page, reads one scan, shows the evidence map of
  ``--finding`` and saves a screenshot.

    python benchmarks/serve_load.py --run runs/demo/survival --volumes runs/demo/cohort/volumes \
        --out benchmarks/serve_load.json --screenshot benchmarks/serve_screenshot.png
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 120) -> None:
    import urllib.request

    end = time.time() + seconds
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not start")


def screenshot(url: str, volume: Path, finding: str, path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1250"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#volume input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#volume input[type=file]").send_keys(str(volume.resolve()))
        wait.until(lambda d: volume.name.split(".")[0] in d.find_element(By.CSS_SELECTOR, "#volume").text)
        driver.find_element(By.CSS_SELECTOR, "#read").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#curve img"))
        target = driver.find_element(By.CSS_SELECTOR, "#target input")
        target.click()
        target.send_keys(Keys.CONTROL, "a")
        target.send_keys(finding)
        time.sleep(0.5)
        target.send_keys(Keys.ENTER)
        time.sleep(30)  # the evidence maps: one read of the scan per block
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--volumes", type=Path, required=True, help="a folder of .nii.gz scans to read")
    ap.add_argument("--sequential", type=int, default=50)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the concurrent phase (memory after each)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--screenshot-volume", type=Path)
    ap.add_argument("--finding", default="Pleural effusion")
    args = ap.parse_args()

    from gradio_client import Client, handle_file

    volumes = sorted(args.volumes.glob("*.nii.gz"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "ctsurv", "serve", str(args.run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    try:
        wait_for(url)
        idle = rss_mb(server.pid)
        client = Client(url, verbose=False)
        n_fields = len(client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/read"]["parameters"])

        def read(volume: Path, c: Client = client) -> float:
            t0 = time.perf_counter()
            result = c.predict(handle_file(str(volume)), "", "", *[None] * (n_fields - 3), api_name="/read")
            if result[1] is None:
                raise SystemExit(f"the read of {volume} failed: {result[0]}")
            return time.perf_counter() - t0

        seq_latency, seq_rss = [], []
        for i in range(args.sequential):
            seq_latency.append(read(volumes[i % len(volumes)]))
            seq_rss.append(rss_mb(server.pid))
        clients = [Client(url, verbose=False) for _ in range(args.concurrent)]
        conc_latency, conc_rss = [], []
        t0 = time.perf_counter()
        for r in range(args.rounds):
            with ThreadPoolExecutor(args.concurrent) as pool:
                jobs = [pool.submit(lambda k=k, r=r: [read(volumes[(r * 97 + k * args.per_client + j) % len(volumes)], clients[k])
                                                 for j in range(args.per_client)]) for k in range(args.concurrent)]
                conc_latency += [t for job in jobs for t in job.result()]
            conc_rss.append(round(rss_mb(server.pid)))
        conc_wall = (time.perf_counter() - t0) / args.rounds
        after = rss_mb(server.pid)
        warm = statistics.mean(seq_rss[5:10])
        result = {
            "run": str(args.run), "server_rss_mb": {"idle": round(idle), "after_10": round(warm),
                                                   "after_sequential": round(seq_rss[-1]), "after_concurrent": round(after),
                                                   "max_during_sequential": round(max(seq_rss)),
                                                   "after_each_concurrent_round": conc_rss,
                                                   "sequential_every_10": [round(v) for v in seq_rss[9::10]]},
            "growth_sequential_after_warmup_pct": round(100 * (seq_rss[-1] - warm) / warm, 1),
            "growth_over_concurrent_rounds_pct": round(100 * (conc_rss[-1] - conc_rss[0]) / conc_rss[0], 1),
            "sequential": {"requests": args.sequential, "median_s": round(statistics.median(seq_latency), 3),
                           "p95_s": round(sorted(seq_latency)[int(0.95 * len(seq_latency)) - 1], 3)},
            "concurrent": {"clients": args.concurrent, "rounds": args.rounds, "requests": len(conc_latency),
                           "wall_s_per_round": round(conc_wall, 2),
                           "median_s": round(statistics.median(conc_latency), 3), "max_s": round(max(conc_latency), 3)},
            "server_alive": server.poll() is None,
        }
        if args.screenshot:
            screenshot(url, args.screenshot_volume or volumes[0], args.finding, args.screenshot)
            result["screenshot"] = str(args.screenshot)
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
