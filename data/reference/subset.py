"""Copy an experiment folder's logs into a small reference subset (how data/reference/scaling was made).

    python data/reference/subset.py EXPERIMENT_DIR data/reference/scaling

Calibration runs are copied whole (manifest + every Parquet part), so the fit
behind the frozen predictions can be redone from the committed data. Sweep
runs keep only what the re-analysis reads (``physrl.experiment.reanalyse``):
the eval rollouts of their *trained* environments, with the text columns
(``prompt``, ``completion``) set to null, which the log contract allows
(docs/rollouts.md); the RS labels, scores, rewards and ground-truth path stay.
Each sweep manifest says so under ``organisms.reference_subset``.
``experiment.json``, ``predictions.json``, ``preregistration.json``,
``summary.json``, ``fit/`` and the report's three scaling figures (N* against p0,
P(RS wins) against N, RS share over steps) are copied as they are.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

KEEP = ["run_id", "step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs", "rs_score",
        "rs_truth"]
FIGURES = ("n_star_law.png", "p_win.png", "rs_share.png")


def subset_sweep_run(src: Path, dst: Path) -> tuple[int, int]:
    """Write ``dst`` (manifest + one Parquet part) from run ``src``; returns (rows kept, rows in src)."""
    manifest = json.loads((src / "manifest.json").read_text())
    trained = [e["env_id"] for e in manifest["environments"] if e["w"] > 0]
    table = pa.concat_tables([pq.read_table(p) for p in sorted((src / "rollouts").glob("part-*.parquet"))],
                             promote_options="default")
    total = table.num_rows
    df = table.to_pandas()
    df = df[(df.phase == "eval") & df.env_id.isin(trained)].copy()
    df["prompt"] = None
    df["completion"] = None
    df = df[[c for c in KEEP if c in df.columns]]
    (dst / "rollouts").mkdir(parents=True, exist_ok=True)
    steps = df.step
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False),
                   dst / "rollouts" / f"part-{steps.min():08d}-{steps.max():08d}-00000.parquet",
                   compression="zstd")
    manifest.setdefault("organisms", {})["reference_subset"] = (
        f"reference subset: eval rollouts of the {len(trained)} trained environments only ({len(df)} of {total} "
        "rows), prompt and completion set to null; made by data/reference/subset.py")
    manifest["rows_written"] = len(df)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return len(df), total


def main(src: str, dst: str) -> int:
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("experiment.json", "predictions.json", "preregistration.json", "summary.json"):
        shutil.copy2(src / name, dst / name)
    shutil.copytree(src / "fit", dst / "fit")
    for name in FIGURES:  # the scaling figures only (the per-run fit figures would double the size)
        if (src / "figures" / name).exists():
            shutil.copy2(src / "figures" / name, dst / name)
    kept = total = 0
    for run in sorted(p for p in (src / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")):
        if run.name.startswith("cal-"):
            (dst / "runs" / run.name / "rollouts").mkdir(parents=True)
            shutil.copy2(run / "manifest.json", dst / "runs" / run.name / "manifest.json")
            for part in sorted((run / "rollouts").glob("part-*.parquet")):
                shutil.copy2(part, dst / "runs" / run.name / "rollouts" / part.name)
        else:
            k, t = subset_sweep_run(run, dst / "runs" / run.name)
            kept, total = kept + k, total + t
    print(f"sweep rows kept: {kept} of {total}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
