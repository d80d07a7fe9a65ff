"""What a new user of `physrl organisms train` reads when something goes wrong (issue 21, section 3): Ctrl-C is one
line saying how to resume (exit 130), a --resume of a folder that is no run is refused before the trainer is
imported."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_envs=1, n_heldout=0, max_steps=400, eval_every=50, checkpoint_every=2, pretrain_steps=60,
            groups_per_step=2, num_generations=4, eval_prompts_per_env=1, stage1_cache="off")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_resume_of_a_folder_without_a_run_is_refused_before_importing_the_trainer(tmp_path):
    code = ("import sys; from physrl.organisms.cli import main; rc = main(['train', '--resume', sys.argv[1]]); "
            "print(rc, sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nothere")], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert out.stdout.split("\n")[0] == "2 []", (out.stdout, out.stderr)   # exit 2, no torch / TRL imported
    assert out.stderr.strip() == (f"physrl organisms: --resume {tmp_path / 'nothere'}: no such run (no "
                                  f"{tmp_path / 'nothere' / 'manifest.json'}); start a new run with --out")


def test_ctrl_c_during_training_prints_one_line_with_the_resume_command_and_exits_130(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "physrl", "organisms", "train", "--out", str(run_dir),
                             "--config", str(config), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=str(tmp_path),
                            # as at a terminal: a test runner started in the background (`cmd &`) ignores SIGINT,
                            # and its children would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not list((run_dir / "checkpoints").glob("checkpoint-*")):
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it was interrupted: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)
        assert list((run_dir / "checkpoints").glob("checkpoint-*")), "no checkpoint within 400 s"
        proc.send_signal(signal.SIGINT)   # what Ctrl-C sends
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[-1] == f"physrl organisms: interrupted; resume with `physrl organisms train --resume {run_dir}`"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].startswith("KeyboardInterrupt")


def test_experiment_set_of_an_unknown_organism_field_lists_the_valid_fields(tmp_path, capsys):
    from physrl.cli import main
    from physrl.organisms import OrganismConfig

    code = main(["experiment", "demo", "--out", str(tmp_path / "x"), "--set", "organism.max_step=10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unexpected keyword" not in err
    assert "unknown config field(s) ['max_step'] (did you mean 'max_steps' for 'max_step'?); allowed fields: [" in err
    assert all(f"'{name}'" in err for name in OrganismConfig().to_dict())
    assert not (tmp_path / "x" / "runs").exists()


def test_a_config_file_typo_gets_the_same_hint(tmp_path, capsys):
    from physrl.organisms.cli import main

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"learning_rat": 1e-4}))
    assert main(["train", "--out", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown config field(s) ['learning_rat'] (did you mean 'learning_rate' for 'learning_rat'?)" in err
