"""Experiment tracking: ``report_to`` passed to TRL, the organisms' own scalars beside TRL's, read back from
TensorBoard event files and from an offline W&B run file, and compared with the logged rollouts."""

import importlib.util
import json
import struct

import pandas as pd
import pytest

from physrl.organisms import OrganismConfig, read_manifest, read_rollouts, train
from physrl.organisms.cli import main as organisms_main

SMALL = dict(n_envs=2, n_heldout=1, pretrain_steps=40, max_steps=6, eval_every=3, checkpoint_every=3,
             groups_per_step=2, num_generations=4, eval_prompts_per_env=2, progress=False, seed=3)


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed "
                    "(pip install 'physrl[tensorboard]')")
def test_tensorboard_scalars_equal_the_logged_rows(tmp_path):
    run = train(OrganismConfig(**SMALL, report_to="tensorboard"), tmp_path / "tb", log=lambda *a: None)
    assert read_manifest(run).organisms["config"]["report_to"] == "tensorboard"
    scalars = _scalars(run / "tensorboard")
    rows = read_rollouts(run)
    train_rows, eval_rows = rows[rows.phase == "train"], rows[rows.phase == "eval"]
    # the train batch of update s was sampled at step s - 1 (its rows carry step = s - 1)
    share = scalars["train/physrl/rs_share"]
    assert sorted(share) == list(range(1, 7))
    for s, value in share.items():
        batch = train_rows[train_rows.step == s - 1]
        assert value == pytest.approx(batch.rs.mean(), abs=1e-6), s
        for key, pick in (("a", batch.rs), ("b", ~batch.rs)):
            if pick.any():
                assert scalars[f"train/physrl/{key}"][s] == pytest.approx(batch.reward[pick].mean(), abs=1e-6)
            else:  # no such rollout in the batch: nothing logged (not a NaN)
                assert s not in scalars.get(f"train/physrl/{key}", {})
    # eval passes at steps 0, 3, 6: RS share per environment, trained and held out
    for env in ("e0", "e1", "e2"):
        per_env = scalars[f"eval/physrl/rs_share/{env}"]
        assert sorted(per_env) == [0, 3, 6]
        for step, value in per_env.items():
            at = eval_rows[(eval_rows.step == step) & (eval_rows.env_id == env)]
            assert value == pytest.approx(at.rs.mean(), abs=1e-6)
    trained = eval_rows[eval_rows.env_id.isin(["e0", "e1"])].groupby("step").rs.mean()
    assert [scalars["eval/physrl/rs_share_trained"][s] for s in (0, 3, 6)] == pytest.approx(trained.tolist())
    # TRL's own metrics are there too (the mean reward of the batch of update s, same rows)
    reward = scalars["train/reward"]
    assert [reward[s] for s in range(1, 7)] == pytest.approx(
        [train_rows[train_rows.step == s - 1].reward.mean() for s in range(1, 7)], abs=1e-6)
    assert "train/loss" in scalars
    # tracking changes nothing the run logs
    plain = read_rollouts(train(OrganismConfig(**SMALL), tmp_path / "plain", log=lambda *a: None))
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    pd.testing.assert_frame_equal(rows[cols].reset_index(drop=True), plain[cols].reset_index(drop=True))


def _wandb_scalars(run_file) -> dict[str, dict[int, float]]:
    """Scalars of an offline W&B run file (``offline-run-*/run-*.wandb``) by TRL's optimizer step:
    ``{key: {train/global_step: value}}``.

    The file is a LevelDB log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records, each with a
    7-byte header: CRC, length, kind 1 full / 2 first / 3 middle / 4 last) of ``wandb.proto``
    ``Record`` messages; wandb >= 0.19 ships no Python reader of its own (its core is in Go).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:8]
    pos, part, rows = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the block's zero padding
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not key.startswith("_"):
                out.setdefault(key, {})[int(row["train/global_step"])] = value
    return out


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed "
                    "(pip install 'physrl[wandb]')")
def test_wandb_offline_scalars_equal_the_logged_rows(tmp_path, monkeypatch, capsys):
    """``physrl organisms train --report-to wandb`` writes an offline W&B run into the run folder whose
    scalars are the logged rows' (as the TensorBoard test checks), and nothing leaves the machine."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))
    config = tmp_path / "small.json"
    config.write_text(json.dumps({k: v for k, v in SMALL.items() if k != "progress"}))
    run = tmp_path / "wb"
    assert organisms_main(["train", "--out", str(run), "--config", str(config), "--report-to", "wandb",
                           "--no-progress"]) == 0
    assert read_manifest(run).organisms["config"]["report_to"] == "wandb"
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    scalars = _wandb_scalars(files[0])
    rows = read_rollouts(run)
    train_rows, eval_rows = rows[rows.phase == "train"], rows[rows.phase == "eval"]
    share = scalars["train/physrl/rs_share"]  # update s used the batch sampled at step s - 1
    assert sorted(share) == list(range(1, 7))
    for s, value in share.items():
        assert value == pytest.approx(train_rows[train_rows.step == s - 1].rs.mean(), abs=1e-6), s
    reward = scalars["train/reward"]
    assert [reward[s] for s in range(1, 7)] == pytest.approx(
        [train_rows[train_rows.step == s - 1].reward.mean() for s in range(1, 7)], abs=1e-6)
    for env in ("e0", "e1", "e2"):  # eval passes at steps 0, 3, 6, trained and held-out envs
        per_env = scalars[f"eval/physrl/rs_share/{env}"]
        assert sorted(per_env) == [0, 3, 6]
        for step, value in per_env.items():
            at = eval_rows[(eval_rows.step == step) & (eval_rows.env_id == env)]
            assert value == pytest.approx(at.rs.mean(), abs=1e-6)
    trained = eval_rows[eval_rows.env_id.isin(["e0", "e1"])].groupby("step").rs.mean()
    assert [scalars["eval/physrl/rs_share_trained"][s] for s in (0, 3, 6)] == pytest.approx(trained.tolist())
    assert "train/loss" in scalars
    # a second run in the same process (as an experiment's pool worker trains one run after another) gets
    # its own W&B run in its own folder, not the first run's (TRL's callback reuses an unfinished wandb.run)
    other = tmp_path / "wb2"
    assert organisms_main(["train", "--out", str(other), "--config", str(config), "--report-to", "wandb",
                           "--seed", "4", "--no-progress"]) == 0
    files2 = list((other / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files2) == 1, files2
    rows2 = read_rollouts(other)
    train2 = rows2[rows2.phase == "train"]
    share2 = _wandb_scalars(files2[0])["train/physrl/rs_share"]
    assert [share2[s] for s in range(1, 7)] == pytest.approx(
        [train2[train2.step == s - 1].rs.mean() for s in range(1, 7)], abs=1e-6)
    assert _wandb_scalars(files[0]) == scalars  # the first run's file is closed, untouched by the second


def test_report_to_is_validated_and_a_missing_tracker_named(tmp_path, capsys, monkeypatch):
    assert OrganismConfig(report_to="wandb,tensorboard").report_to == "tensorboard,wandb"
    assert OrganismConfig(report_to="None").report_to == "none"
    with pytest.raises(ValueError, match="'report_to'.*mlflow"):
        OrganismConfig(report_to="mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = organisms_main(["train", "--out", str(tmp_path / "r"), "--report-to", "wandb", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "wandb package is not installed" in err and "physrl[wandb]" in err
    assert not (tmp_path / "r").exists()
