"""Experiments with the population trainer: config, grouping of runs into populations, a tiny real experiment.

``organism.trainer = "population"`` with ``executor.population_size = K`` trains runs that can share a population
(same architecture, step budget, GRPO settings and vocabulary) as populations of at most K members, one executor
job each; every member writes its own run folder, which the fitting and analysis read as they read a solo run.
"""

import json

import pytest

from physrl.experiment.config import ExperimentConfig
from physrl.experiment.executors import ExecutorConfig
from physrl.experiment.runs import plan_populations, population_groups, population_record

POP = {"trainer": "population"}


def test_population_size_round_trips_through_a_config_file(tmp_path):
    cfg = ExperimentConfig(organism={**POP, "max_steps": 7}, executor={"population_size": 4, "max_workers": 1})
    assert cfg.executor.population_size == 4 and cfg.executor.members_per_population() == 4
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = ExperimentConfig.from_file(path)
    assert again.to_dict() == cfg.to_dict()
    toml = tmp_path / "exp.toml"
    toml.write_text('[organism]\ntrainer = "population"\n[executor]\npopulation_size = 16\n')
    assert ExperimentConfig.from_file(toml).executor.population_size == 16
    assert ExperimentConfig(organism=POP).executor.members_per_population() == 8  # the default


@pytest.mark.parametrize("bad", [0, -3, "8", True, 2.5])
def test_a_bad_population_size_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="executor.population_size"):
        ExperimentConfig(organism=POP, executor={"population_size": bad})


def test_population_size_without_the_population_trainer_is_refused():
    with pytest.raises(ValueError, match='population_size = 4 .*organism.trainer = "population".*\'trl\''):
        ExperimentConfig(executor={"population_size": 4})
    from physrl.experiment.takeoff import TakeoffConfig

    with pytest.raises(ValueError, match="organism.trainer"):
        TakeoffConfig(executor={"population_size": 4})


def _job(run_id, **organism):
    return run_id, {**POP, "n_envs": 2, "n_heldout": 2, **organism}


def test_runs_group_only_with_runs_of_the_same_architecture_steps_and_vocabulary():
    jobs = [_job("a", seed=0, p0=0.1), _job("b", seed=1, p0=0.2, n_envs=3, n_heldout=1),  # K = 4 both
            _job("c", seed=2, max_steps=300), _job("d", seed=3, hidden_size=32), _job("e", seed=4, n_heldout=3),
            _job("f", seed=5, learning_rate=1e-3), _job("g", seed=6, a0=0.3, b0=0.2, family_seed=9)]
    groups = population_groups(jobs, 8)
    assert sorted(map(sorted, groups)) == [["a", "b", "g"], ["c"], ["d"], ["e"], ["f"]]
    assert groups[0] == ["a", "b", "g"]  # plan order kept


def test_groups_are_split_evenly_in_plan_order():
    jobs = [_job(f"r{i}", seed=i) for i in range(10)]
    assert population_groups(jobs, 4) == [["r0", "r1", "r2", "r3"], ["r4", "r5", "r6"], ["r7", "r8", "r9"]]
    assert population_groups(jobs, 10) == [[f"r{i}" for i in range(10)]]
    assert population_groups(jobs, 1) == [[f"r{i}"] for i in range(10)]
    with pytest.raises(ValueError, match=">= 1"):
        population_groups(jobs, 0)


def test_recorded_populations_resume_whole_and_broken_ones_are_regrouped(tmp_path):
    jobs = [_job(f"r{i}", seed=i) for i in range(6)]
    first = plan_populations(tmp_path, jobs, 3)
    assert [p.run_ids for p in first] == [("r0", "r1", "r2"), ("r3", "r4", "r5")]
    assert not any(p.resume for p in first)
    for p in first:
        assert json.loads(population_record(tmp_path, p.population_id).read_text())["members"] == list(p.run_ids)
    # a rerun: the first population unfinished as a whole resumes as it was; of the second, r4 finished and
    # r3, r5 did not (they failed alone): they are grouped anew and the broken record removed
    again = plan_populations(tmp_path, [j for j in jobs if j[0] != "r4"], 3)
    assert again[0].population_id == first[0].population_id and again[0].resume
    assert again[1].run_ids == ("r3", "r5") and not again[1].resume
    assert not population_record(tmp_path, first[1].population_id).exists()
    assert population_record(tmp_path, again[1].population_id).exists()


TINY = dict(max_steps=4, eval_every=2, pretrain_steps=40, groups_per_step=2, num_generations=4,
            eval_prompts_per_env=1, checkpoint_every=2, hidden_size=32)


def test_a_tiny_experiment_with_the_population_trainer_reads_like_a_solo_one(tmp_path):
    """Calibration runs (one vocabulary) and sweep runs (the fixed-family design: another) form populations
    through the local pool; every member's folder loads through fitting.load_runs, the summary has every run,
    and only the manifest's trainer record tells a member from a solo run."""
    from physrl import fitting
    from physrl.contract import read_manifest
    from physrl.experiment import run_experiment

    cfg = ExperimentConfig(name="pop", n_envs=[1, 2], p0=[0.2], seeds=[0, 1], family_heldout=1, n_star_max=8,
                           calibration=[{"n_envs": 1, "p0": 0.2, "n_held_out": 1}], bootstrap=50,
                           prediction_draws=5, organism={**POP, **TINY},
                           executor={"max_workers": 2, "population_size": 3})
    out = tmp_path / "out"
    summary = run_experiment(cfg, out, progress=False)
    assert len(summary["runs"]) == 4
    folders = sorted(d for d in (out / "runs").iterdir() if not d.name.startswith("."))
    assert len(folders) == 6
    records = {d.name: read_manifest(d).organisms["trainer"] for d in folders}
    assert all(r["name"] == "population" for r in records.values())
    sweep = {k: r for k, r in records.items() if k.startswith("sweep")}
    cal = {k: r for k, r in records.items() if k.startswith("cal")}
    assert sorted(r["size"] for r in sweep.values()) == [2, 2, 2, 2]  # 4 sweep runs, size 3: two of 2
    assert len({r["population"] for r in sweep.values()}) == 2 and len({r["population"] for r in cal.values()}) == 1
    runs = fitting.load_runs(folders)
    assert len(runs) == 6
    assert all(r.manifest.status == "finished" and not r.warnings and len(r.rollouts) for r in runs)
    # a member's manifest has a solo run's keys; the trainer record is the one difference in kind
    solo_keys = set(read_manifest(folders[0]).to_dict())
    assert all(set(read_manifest(d).to_dict()) == solo_keys for d in folders)
    # a rerun trains nothing
    before = {d.name: (d / "manifest.json").stat().st_mtime for d in folders}
    run_experiment(cfg, out, progress=False)
    assert {d.name: (d / "manifest.json").stat().st_mtime for d in folders} == before


def test_an_interrupted_population_resumes_as_a_whole_on_the_next_invocation(tmp_path, monkeypatch):
    from physrl.contract import read_manifest
    from physrl.experiment.runs import train_planned
    from physrl.organisms import _population

    jobs = [(f"sweep-s{s}", {**POP, **TINY, "n_envs": 2, "n_heldout": 0, "seed": s}) for s in range(2)]
    real = _population._Member.requests

    def requests(self, step):
        if step == 3:
            raise KeyboardInterrupt  # the whole job dies (not a member's failure)
        return real(self, step)

    monkeypatch.setattr(_population._Member, "requests", requests)
    ex = ExecutorConfig(max_workers=1, population_size=2)  # inline: the patch reaches the trainer
    with pytest.raises(KeyboardInterrupt):
        train_planned(ex, tmp_path, jobs, progress=False)
    dirs = [tmp_path / "runs" / r for r, _ in jobs]
    first = [read_manifest(d).organisms["trainer"]["population"] for d in dirs]
    assert [read_manifest(d).status for d in dirs] == ["failed", "failed"]
    monkeypatch.setattr(_population._Member, "requests", real)
    train_planned(ex, tmp_path, jobs, progress=False)
    for d in dirs:
        m = read_manifest(d)
        assert m.status == "finished" and m.organisms["resumed"] == 1
        assert m.organisms["trainer"]["population"] == first[0]


def test_the_command_line_refuses_a_bad_population_size_before_training(tmp_path, capsys):
    from physrl.cli import main

    code = main(["experiment", "demo", "--out", str(tmp_path / "out"), "--no-progress",
                 "--set", "organism.trainer=population", "--set", "executor.population_size=0"])
    assert code == 2
    assert "executor.population_size must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow  # 412 s for both at load ~14; the local pool (spawned workers) carries the same job in the tiny test
@pytest.mark.parametrize("engine", ["submitit", "ray"])
def test_a_population_is_one_job_that_leaves_the_machine_through_submitit_or_ray(tmp_path, engine):
    """The same two-member population through the inline executor and through submitit's local runner (Slurm's
    stand-in) or a local Ray cluster: one job, the same rows for every member."""
    import pandas as pd

    from physrl.contract import read_rollouts
    from physrl.experiment.runs import train_planned

    pytest.importorskip(engine)
    jobs = [(f"sweep-s{s}", {**POP, **TINY, "n_envs": 2, "n_heldout": 0, "seed": s, "max_steps": 2})
            for s in range(2)]
    if engine == "ray":
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = train_planned(ExecutorConfig(engine=engine, population_size=2, timeout_min=20), tmp_path / engine,
                               jobs, progress=False)
    finally:
        if engine == "ray":
            ray.shutdown()
    inline = train_planned(ExecutorConfig(max_workers=1, population_size=2), tmp_path / "inline", jobs,
                           progress=False)
    records = list((tmp_path / engine / "logs" / "populations").glob("*.json"))
    assert len(records) == 1  # one population, one job
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    for run_id, _ in jobs:
        pd.testing.assert_frame_equal(read_rollouts(remote[run_id])[cols], read_rollouts(inline[run_id])[cols])


def test_the_step_bar_shows_a_running_population_once_as_members_times_steps(tmp_path):
    from physrl.experiment.runs import StepMonitor, write_progress

    dirs = {r: tmp_path / "runs" / r for r in ("a", "b", "c")}
    for d in dirs.values():
        d.mkdir(parents=True)
    write_progress(dirs["a"], 3, 4, "GRPO")
    write_progress(dirs["b"], 3, 4, "GRPO")
    write_progress(dirs["c"], 1, 4, "GRPO")
    monitor = StepMonitor(dirs, {r: 4 for r in dirs}, enabled=False, groups={"population-x": ["a", "b"]})
    monitor.update()
    assert monitor.bar.n == 7  # member-steps: 3 + 3 + 1
    assert monitor.bar.postfix == "population of 2 (a, ...) GRPO 2x3/4; c GRPO 1/4"
    monitor.close()
