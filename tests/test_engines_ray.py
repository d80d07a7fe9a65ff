"""A real distributed engine: a local Ray cluster runs a reduced experiment and gives the
same runs and summary as the local process pool (issue 13)."""

import json
from pathlib import Path

import pandas as pd
import pytest

from physrl.experiment import run_experiment
from physrl.experiment.config import ExperimentConfig

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'physrl[ray]')")


def reduced(engine: str) -> ExperimentConfig:
    """Three organism runs: one calibration run and two sweep runs (N = 1, 2), a few GRPO steps."""
    return ExperimentConfig.from_dict({
        "name": f"reduced-{engine}", "n_envs": [1, 2], "p0": [0.2], "seeds": [0], "calibration_seeds": [7],
        "n_star_max": 8, "calibration": [{"n_envs": 1, "p0": 0.2, "n_held_out": 1}],
        "bootstrap": 50, "prediction_draws": 20, "fit_max_nfev": 60,
        "organism": {"max_steps": 4, "eval_every": 2, "pretrain_steps": 60, "groups_per_step": 2,
                     "num_generations": 4, "eval_prompts_per_env": 1, "checkpoint_every": 2},
        "executor": {"engine": engine, "max_workers": 2}})


def _rollouts(run_dir: Path) -> pd.DataFrame:
    parts = sorted((run_dir / "rollouts").glob("*.parquet"))
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    return df[cols].sort_values(["phase", "step", "env_id", "group_id", "completion"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_cluster_runs_match_the_local_pool(tmp_path, local_cluster):
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2
    out_local, out_ray = tmp_path / "local", tmp_path / "ray"
    s_local = run_experiment(reduced("local"), out_local, progress=False)
    s_ray = run_experiment(reduced("ray"), out_ray, progress=False)
    def run_ids(out):  # (the organisms' stage-1 cache, runs/.stage1_cache, is not a run)
        return sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))

    ids = run_ids(out_local)
    assert ids == run_ids(out_ray) and len(ids) == 3
    for run_id in ids:  # same seed, one torch thread each: the same rollouts, row for row
        pd.testing.assert_frame_equal(_rollouts(out_local / "runs" / run_id), _rollouts(out_ray / "runs" / run_id))
        status = json.loads((out_ray / "runs" / run_id / "manifest.json").read_text())["status"]
        assert status == "finished"
    for a, b in zip(s_local["runs"], s_ray["runs"]):
        assert a["run_id"] == b["run_id"]
        assert a["observed_final_p"] == b["observed_final_p"]
        assert a["predicted_final_p"] == pytest.approx(b["predicted_final_p"], abs=1e-6)
    assert s_local["observed_n_star"] == s_ray["observed_n_star"]
    assert s_local["scores"]["brier"] == pytest.approx(s_ray["scores"]["brier"], abs=1e-9)
    frozen_local = json.loads((out_local / "predictions.json").read_text())
    frozen_ray = json.loads((out_ray / "predictions.json").read_text())
    assert [c["p_win"] for c in frozen_local["cells"]] == pytest.approx([c["p_win"] for c in frozen_ray["cells"]])
