"""Model comparison with each transfer variant as the truth (issue 18 item 8): does QAIC pick the model
that made the data?

For each truth (none, homogeneous with c_z = 0.9, kernel) and each seed, the two-run design of docs/model.md
§6 (p0 0.1 and 0.4, four trained and two held-out environments, eval every 10 steps to 120, 128 eval
rollouts, overdispersed counts φ = 2) is sampled and ``fitting.compare`` ranks none / homogeneous / kernel
(``--step0 prior``, eval phase), one dispersion from the largest model for every variant.

Usage: ``python benchmarks/fit_ranking.py --seeds 3 --out ranking.csv``; prints a markdown table of
ΔQAIC (mean and range over seeds) per truth and fitted variant, and how often the truth ranked first or
within ΔQAIC < 2. Cost: ~25 s per comparison on one core.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from physrl import fitting

VARIANTS = ("none", "homogeneous", "kernel")


def one(root: Path, truth: str, seed: int, dispersion: float) -> pd.DataFrame:
    params = {"c_z": 0.9} if truth == "homogeneous" else {}
    runs = [fitting.synthesize(root / f"{truth}-{seed}-{p0}", seed=2 * seed + k, transfer=truth,
                               params={**params, "p0": p0}, steps=120, eval_every=10, rollouts_per_env=128,
                               dispersion=dispersion, overwrite=True)
            for k, p0 in enumerate((0.1, 0.4))]
    table = fitting.compare(runs, variants={v: {"transfer": v} for v in VARIANTS}, phases=("eval",),
                            step0="prior", n_starts=2)
    table.insert(0, "truth", truth)
    table.insert(1, "seed", seed)
    table["rank"] = range(1, len(table) + 1)
    return table


def markdown(df: pd.DataFrame) -> str:
    lines = ["| truth | " + " | ".join(f"ΔQAIC {v}" for v in VARIANTS) + " | truth first | truth within 2 |",
             "|---|" + "---:|" * (len(VARIANTS) + 2)]
    for truth, rows in df.groupby("truth", sort=False):
        cells = []
        for v in VARIANTS:
            d = rows[rows.variant == v]["delta_qaic"]
            cells.append(f"{d.mean():.1f} [{d.min():.1f}, {d.max():.1f}]")
        at = rows[rows.variant == truth]
        n = len(at)
        first = int((at["rank"] == 1).sum())
        within = int((at["delta_qaic"] < 2).sum())
        lines.append(f"| {truth} | " + " | ".join(cells) + f" | {first}/{n} | {within}/{n} |")
    phi = df.groupby(["truth", "seed"])["dispersion"].first()
    lines.append("")
    lines.append("φ used (largest model's, per set): " + "; ".join(f"{t} s{s}: {v}" for (t, s), v in phi.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dispersion", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("fit_ranking.csv"))
    args = ap.parse_args(argv)
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for truth in VARIANTS:
                frame = one(Path(tmp), truth, seed, args.dispersion)
                frames.append(frame)
                best = frame.iloc[0]
                print(f"truth {truth} seed {seed}: first {best.variant}; ΔQAIC of the truth "
                      f"{float(frame.set_index('variant').loc[truth, 'delta_qaic']):.1f}", flush=True)
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(args.out, index=False)
    print(markdown(df))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
