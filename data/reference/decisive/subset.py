"""Copy a decisive-experiment folder into its committed reference subset (how data/reference/decisive was made).

    python data/reference/decisive/subset.py EXPERIMENT_DIR data/reference/decisive

What is kept: every file the analysis writes or reads besides the logs (``summary.json``, ``outcomes.csv``,
``brackets.csv``, ``step0.csv``, ``continuation.csv``, ``eval_counts.csv``, ``n_star.png``, ``report.html``),
the design and its pre-registration (``experiment.json``, ``predictions.json``, ``preregistration.json``,
``continued-<arm>.json``) and each arm's calibration fit (``fit/<arm>/``). ``eval_counts.csv`` holds every
analysed run's trained-env eval counts per eval step, so ``physrl experiment`` re-analyses the subset without
the logs (``physrl.experiment.decisive_analysis.analyse_decisive``; tests/test_reference_decisive.py). The
calibration runs are kept as logs in ``calibration_runs/`` (manifest and rollouts, prompt and completion set to
null, which the log contract allows), so each arm's fit can be redone; sweep runs are not (about 800 runs of ~100 KB each).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FILES = ("experiment.json", "predictions.json", "preregistration.json", "summary.json", "outcomes.csv",
         "brackets.csv", "step0.csv", "continuation.csv", "eval_counts.csv", "n_star.png", "report.html")


def copy_calibration_run(src: Path, dst: Path) -> None:
    """The run's manifest and rollouts, text columns set to null (one Parquet part per source part)."""
    (dst / "rollouts").mkdir(parents=True)
    shutil.copy2(src / "manifest.json", dst / "manifest.json")
    for part in sorted((src / "rollouts").glob("part-*.parquet")):
        table = pq.read_table(part)
        for name in ("prompt", "completion"):
            if name in table.column_names:
                i = table.column_names.index(name)
                field = table.schema.field(i)
                table = table.set_column(i, field, pa.nulls(table.num_rows, type=field.type))
        pq.write_table(table, dst / "rollouts" / part.name, compression="zstd")


def main(src: str, dst: str) -> int:
    src, dst = Path(src), Path(dst)
    keep_script = (dst / "subset.py").read_bytes() if (dst / "subset.py").exists() else None
    for name in FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    for record in src.glob("continued-*.json"):
        shutil.copy2(record, dst / record.name)
    if (dst / "fit").exists():
        shutil.rmtree(dst / "fit")
    shutil.copytree(src / "fit", dst / "fit")
    runs = dst / "calibration_runs"  # not runs/: the analysis reads a folder with runs/ from its logs
    if runs.exists():
        shutil.rmtree(runs)
    for run in sorted(p for p in (src / "runs").iterdir() if p.is_dir() and "-cal-" in p.name):
        copy_calibration_run(run, runs / run.name)
    if keep_script is not None:
        (dst / "subset.py").write_bytes(keep_script)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
