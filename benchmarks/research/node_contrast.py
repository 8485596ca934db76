"""How visible is an enlarged lymph node in the phantom? Paired renders, with and without the node.

    python benchmarks/research/node_contrast.py [--patients 5] [--node-mm 16]

Renders each patient (one seed each) with no finding, then with one node at each of the generator's six
stations, on the demo grid (48×64×64 voxels of 6×5×5 mm), and compares each pair inside the node's sphere:
mean HU difference, and voxels whose difference exceeds 3 SD of the pair's difference elsewhere (the
renders' noise, which differs between the two because the node draws from the generator). Appends a table
to benchmarks/research/visibility.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ctsurv.synthetic.phantom import STATIONS, render_phantom_full
from ctsurv.text.findings import Findings, LymphNode

HERE = Path(__file__).parent
SHAPE_ZYX, SPACING_ZYX = (48, 64, 64), (6.0, 5.0, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=5)
    parser.add_argument("--node-mm", type=float, default=16.0, help="short axis of the node")
    args = parser.parse_args()
    rows: dict[str, list[tuple[int, float, int, float]]] = {station: [] for station in STATIONS}
    for seed in range(args.patients):
        plain = render_phantom_full(Findings(), SHAPE_ZYX, SPACING_ZYX, np.random.default_rng(seed))
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in plain.hu.shape], indexing="ij"), -1)
        mm = ijk @ plain.affine[:3, :3].T + plain.affine[:3, 3]  # voxel centres; the node renders share the grid
        for station in STATIONS:
            node = Findings(lymph_nodes=(LymphNode(station, args.node_mm),))
            p = render_phantom_full(node, SHAPE_ZYX, SPACING_ZYX, np.random.default_rng(seed))
            assert np.array_equal(p.affine, plain.affine)
            _, centre, diameter = next(lesion for lesion in p.lesions if lesion[0] == "node")
            inside = np.linalg.norm(mm - centre, axis=-1) < diameter / 2
            diff = p.hu.astype(np.float32) - plain.hu
            noise = float(diff[~inside].std())
            rows[station].append((int(inside.sum()), float(diff[inside].mean()), int((diff[inside] > 3 * noise).sum()), noise))
    lines = [
        f"\n## Lymph node contrast: paired renders of {args.patients} patients, a {args.node_mm:g} mm node, demo grid\n",
        "Reproduce: `python benchmarks/research/node_contrast.py`. Means over the patients.\n",
        "| station | voxels in the node | mean HU difference | voxels above 3 SD of the noise | noise SD (HU) |",
        "|---|---|---|---|---|",
    ]
    for station, r in rows.items():
        v, d, above, sd = (np.mean([x[k] for x in r]) for k in range(4))
        lines.append(f"| {station} | {v:.1f} | {d:+.0f} | {above:.1f} | {sd:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with (HERE / "visibility.md").open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
