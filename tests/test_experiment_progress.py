"""Progress of ``physrl experiment`` (issue 21 §3.1): every long stage shows a tqdm bar on stderr whose clock
moves during a long call, and the training stage shows each running organism's GRPO step, reported by the
run through a file beside the run folders (works alike for the local pool, submitit and Ray)."""

import re
import time
from types import SimpleNamespace

from conftest import ode_trainer, scaling_config

from physrl._util.progress import stage
from physrl.experiment import run_experiment, runs as _runs
from physrl.experiment.config import ExperimentConfig


def test_a_stage_bar_redraws_its_clock_during_one_long_call(capsys):
    with stage("a long call", 1, unit="call") as bar:
        time.sleep(2.6)  # no update: only the ticker draws
        seen = capsys.readouterr().err
        bar.update(1)
    assert "a long call:   0%" in seen and "00:02" in seen, seen
    assert "1/1" in capsys.readouterr().err
    with stage("quiet", 1, enabled=False) as bar:
        bar.update(1)
    assert capsys.readouterr().err == ""


def test_train_one_reports_each_step_through_the_progress_file(tmp_path, monkeypatch):
    """The organism run's own TrainerCallback (added through ``train``'s recorder_hook) writes the step."""
    import physrl.organisms as organisms

    run_dir = tmp_path / "exp" / "runs" / "sweep-N2-p0.1-h0-s0"
    seen = {}

    def fake_train(config, path, resume=False, *, recorder_hook=None, log=print):
        callbacks = []
        recorder_hook(None, SimpleNamespace(add_callback=callbacks.append))
        (callback,) = callbacks
        seen["start"] = _runs.read_progress(path)
        callback.on_train_begin(None, SimpleNamespace(global_step=0), None)
        callback.on_step_end(None, SimpleNamespace(global_step=3), None)
        seen["step 3"] = _runs.read_progress(path)
        return path

    monkeypatch.setattr(organisms, "train", fake_train)
    _runs.train_one({"max_steps": 7, "n_envs": 2}, str(run_dir), False)
    assert _runs.progress_file(run_dir) == tmp_path / "exp" / "logs" / "progress" / "sweep-N2-p0.1-h0-s0.json"
    assert (seen["start"]["phase"], seen["start"]["step"], seen["start"]["max_steps"]) == ("stage 1", 0, 7)
    assert (seen["step 3"]["phase"], seen["step 3"]["step"]) == ("GRPO", 3)
    assert _runs.read_progress(run_dir)["phase"] == "finished" and _runs.read_progress(run_dir)["step"] == 7


def test_training_shows_each_running_organisms_step(tmp_path, monkeypatch, capsys):
    """A stand-in organism that takes 0.5 s per step: the parent's steps bar names the run and its step."""
    def slow_organism(organism, run_dir, resume):
        for step in range(1, 5):
            time.sleep(0.5)
            _runs.write_progress(run_dir, step, 4, "GRPO")
        return run_dir

    monkeypatch.setattr(_runs, "train_one", slow_organism)
    config = ExperimentConfig(n_envs=[1, 2], p0=[0.1], organism={"max_steps": 4},
                              executor={"engine": "local", "max_workers": 1})
    _runs.train_all(config, tmp_path, progress=True, role="sweep")
    err = capsys.readouterr().err
    assert re.search(r"sweep GRPO steps: .*sweep-N1-p0\.1-h0-s0 GRPO [1-3]/4", err), err[-2000:]
    assert re.search(r"sweep GRPO steps: .*sweep-N2-p0\.1-h0-s0 GRPO [1-3]/4", err), err[-2000:]
    assert "sweep runs: 100%" in err


def test_every_stage_after_training_shows_a_bar(tmp_path, monkeypatch, capsys):
    """Freezing, predicting, the protocol N* curve, the bootstrap and the report each draw a bar to 100%."""
    monkeypatch.setattr(_runs, "train_one", ode_trainer([]))
    config = scaling_config(p0=[0.1, 0.2], seeds=[0, 1], n_envs_by_p0={"0.1": [2, 8], "0.2": [1, 4]},
                            bootstrap=40, prediction_draws=16, n_star_max=16)
    run_experiment(config, tmp_path, progress=True)
    err = capsys.readouterr().err
    for bar in (r"fitting the ODE on 2 calibration runs: 100%.* 1/1", r"freezing predictions \(N\* search and cells per budget and p0\): 100%.* 8/8",
                r"predicting sweep runs: 100%.* 8/8", r"the fit's protocol N\* curve over \d+ priors: 100%",
                r"observed N\*: logistic fits and 40 bootstrap replicates over stage-1 models, per budget: 100%.* 2/2",
                r"writing the report \(figures and tables\): 100%.* 4/4"):
        assert re.search(bar, err), (bar, err[-3000:])
