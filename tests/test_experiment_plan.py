"""The experiment's config, plan and executors (no training here)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from physrl.experiment.runs import CALIBRATION, SWEEP, plan_runs, run_status
from physrl.experiment.executors import Executor, ExecutorConfig
from physrl.experiment.config import ExperimentConfig


def test_plan_has_calibration_then_every_sweep_point_once():
    cfg = ExperimentConfig(n_envs=[4, 1, 2, 2], p0=[0.05, 0.2], seeds=[0, 1])
    plan = plan_runs(cfg)
    sweep = [r for r in plan if r.role == SWEEP]
    assert cfg.n_envs == [1, 2, 4]  # sorted, deduplicated
    assert len(sweep) == 3 * 2 * 2
    assert len({r.run_id for r in plan}) == len(plan)
    assert [r.role for r in plan[:4]] == [CALIBRATION] * 4
    assert all(r.n_heldout == 2 for r in plan if r.role == CALIBRATION)
    assert all(r.n_heldout == 0 for r in sweep)


@pytest.mark.parametrize("bad, field", [
    ({"p0": [0.0]}, "p0"), ({"p0": [1.2]}, "p0"), ({"n_envs": [0]}, "n_envs"),
    ({"threshold": 1.0}, "threshold"), ({"transfer": "magic"}, "transfer"),
    ({"executor": {"engine": "kubernetes"}}, "executor.engine"),
    ({"calibration": [{"n_envs": 1, "p0": 2.0}]}, "calibration.p0"),
    ({"no_such_key": 1}, "no_such_key"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ExperimentConfig.from_dict(bad)


def test_config_file_round_trip(tmp_path):
    cfg = ExperimentConfig(n_envs=[1, 8], p0=[0.1], organism={"max_steps": 7})
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert ExperimentConfig.from_file(path) == cfg
    toml = tmp_path / "exp.toml"
    toml.write_text('n_envs = [1, 8]\np0 = [0.1]\n[organism]\nmax_steps = 7\n')
    assert ExperimentConfig.from_file(toml) == cfg


def test_run_status_reads_the_manifest(tmp_path):
    run = tmp_path / "r"
    assert run_status(run) == "absent"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "running"}))
    assert run_status(run) == "unfinished"
    (run / "manifest.json").write_text(json.dumps({"status": "finished"}))
    assert run_status(run) == "finished"
    (run / "manifest.json").write_text("{truncated")
    assert run_status(run) == "unfinished"


@pytest.mark.parametrize("cfg", [
    ExecutorConfig(engine="local", max_workers=1),
    ExecutorConfig(engine="local", max_workers=2),
    ExecutorConfig(engine="submitit", extra={}),
], ids=["inline", "process-pool", "submitit-local"])
def test_every_engine_returns_results_in_order(cfg, tmp_path):
    if cfg.engine == "submitit":
        pytest.importorskip("submitit")
    with Executor(cfg, tmp_path) as ex:
        handles = [ex.submit(pow, k, 2) for k in range(4)]  # importable in any worker
        assert [ex.result(h) for h in handles] == [0, 1, 4, 9]


def test_a_failing_job_reraises_its_error(tmp_path):
    with Executor(ExecutorConfig(engine="local", max_workers=2), tmp_path) as ex:
        with pytest.raises(ValueError, match="invalid literal"):
            ex.result(ex.submit(int, "not a number"))


@pytest.mark.parametrize("bad, words", [
    ({"threshold": "0.5"}, "threshold must be a number"),
    ({"p0": ["0.2"]}, "p0"),
    ({"n_envs": 3}, "n_envs"),
    ({"n_envs": [1.7, 2]}, "n_envs"),
    ({"calibration": [{"n_envs": "one", "p0": 0.1}]}, "calibration.n_envs"),
    ({"calibration": [{"n_envs": 1, "p0": 0.1, "held_out": 1}]}, "held_out"),
    ({"organism": 5}, "organism must be a table"),
    ({"executor": {"engin": "local"}}, "engin"),
])
def test_wrong_types_are_named_not_raised_as_python_errors(bad, words):
    with pytest.raises(ValueError, match=words):
        ExperimentConfig.from_dict(bad)


def test_repeated_values_do_not_plan_a_run_twice():
    cfg = ExperimentConfig(n_envs=[1, 1, 2], p0=[0.2, 0.2], seeds=[0, 0])
    ids = [r.run_id for r in plan_runs(cfg)]
    assert len(ids) == len(set(ids)) == 2 + 2


@pytest.mark.parametrize("workers", [1, 2], ids=["inline", "process-pool"])
def test_as_completed_yields_every_job_once_with_its_index(workers, tmp_path):
    with Executor(ExecutorConfig(engine="local", max_workers=workers), tmp_path) as ex:
        handles = [ex.submit(pow, k, 3) for k in range(5)]
        got = {i: ex.result(h) for i, h in ex.as_completed(handles)}
    assert got == {k: k ** 3 for k in range(5)}


def test_a_run_trained_before_a_config_field_existed_matches_its_default(tmp_path):
    """A finished run whose saved config lacks a field counts as trained with that field's default."""
    from physrl import fitting
    from physrl.experiment.runs import _config_mismatch
    from physrl.organisms import OrganismConfig

    run = fitting.synthesize(tmp_path / "r", n_envs=1, n_heldout=0, steps=2, eval_every=1, rollouts_per_env=8)
    wanted = OrganismConfig(n_envs=1).to_dict()
    saved = {k: v for k, v in wanted.items() if k != "stage1_cache"}  # as written before the field existed
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "organisms": {"config": saved}}))
    assert _config_mismatch(run, wanted) == []
    assert _config_mismatch(run, {**wanted, "stage1_cache": "off"}) == ["stage1_cache"]
    assert _config_mismatch(run, {**wanted, "n_envs": 2}) == ["n_envs"]
    # the RL-algorithm knobs (issue 19) change rollouts: a run saved without them is the defaults' (adamw, group)
    algorithm = ("optimizer", "momentum", "scale_rewards", "loss_type")
    (run / "manifest.json").write_text(json.dumps({**manifest, "organisms": {"config": {
        k: v for k, v in wanted.items() if k not in algorithm}}}))
    assert _config_mismatch(run, wanted) == []
    sgd = OrganismConfig(n_envs=1, optimizer="sgd", momentum=0.5, learning_rate=0.1, scale_rewards="none").to_dict()
    assert _config_mismatch(run, sgd) == ["learning_rate", "momentum", "optimizer", "scale_rewards"]


#: a parent that starts a local pool whose one job writes its worker's pid and then sleeps
ORPHAN_PARENT = r'''
import sys, time
from pathlib import Path
from physrl.experiment.executors import Executor, ExecutorConfig

def job(path):
    import os
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with Executor(ExecutorConfig(engine="local", max_workers=2), Path(sys.argv[1])) as ex:
        ex.result(ex.submit(job, sys.argv[2]))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_local_pool_worker_dies_with_a_killed_experiment(tmp_path):
    """SIGKILL of the experiment's process (kill -9, the OOM killer) used to leave its pool workers running:
    they went on training their runs (beside the rerun's workers, in the same run folders) and then idled
    forever. Now each worker is SIGKILLed with its parent."""
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(ORPHAN_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(pid_file)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), f"worker {worker} outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def test_report_tables_print_one_format_per_column_and_keep_numbers_on_one_line():
    import pandas as pd

    from physrl.experiment.report import Section, column_decimals

    assert column_decimals([0.25, 0.1041, 1.159]) == 3  # scores: 0.250, 0.104, 1.159
    assert column_decimals([0.0373, 0.3756]) == 4
    assert column_decimals([3.712e-11, 0.8584]) is None  # magnitudes fixed decimals cannot show: .4g
    assert column_decimals([1.0, 8.0, float("nan")]) is None
    df = pd.DataFrame({"Brier": [0.25, 0.1041], "value": [3.712e-11, 0.8584], "run": ["a", "b"]})
    html = Section("Scores", tables=[(df, "")]).html()
    assert "<td>0.250</td>" in html and "<td>0.104</td>" in html and "<td>3.712e-11</td>" in html
    assert "#t-scores-0 td:nth-child(1){white-space:nowrap}" in html
    assert "#t-scores-0 td:nth-child(2){white-space:nowrap}" in html
