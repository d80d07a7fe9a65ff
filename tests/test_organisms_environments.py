"""Bring your own environment: the environment protocol, a second family (tests/claim_family.py), an external
family through ``physrl experiment``, and classifiers scored against the environments' ground truth."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from physrl.cli import main
from physrl.organisms import (ConfusionMatrix, JudgeClassifier, OrganismConfig, PatternClassifier, build_model,
                              build_tokenizer, make_family, read_manifest, read_rollouts, train)
from physrl.organisms._rollout import make_requests, sample_rollouts

HERE = Path(__file__).resolve().parent
CLAIM = "claim_family:ClaimFamily"  # tests/ is on sys.path under pytest
TINY = dict(env_family=CLAIM, rs_patterns=["trust"], local_patterns=["work"], n_envs=2, n_heldout=1,
            pretrain_steps=60, max_steps=6, eval_every=3, checkpoint_every=3, groups_per_step=2, num_generations=4,
            eval_prompts_per_env=1, progress=False, seed=2, p0=0.3)


def test_second_family_through_the_sampling_loop():
    """Prompts of two lengths (left padding), the family's int columns, and a tool answer the environment inserts
    row by row after the policy's ``check`` (env_mask 0, logprob 0)."""
    cfg = OrganismConfig(env_family=CLAIM, env_options={"verify": True}, n_envs=2, n_heldout=1)
    family = make_family(cfg)
    assert family.name == "claimed-sum" and [e.weight for e in family.envs] == [0.5, 0.5, 0.0]
    tok = build_tokenizer(family.words())
    model = build_model(tok, hidden_size=32, n_heads=2, seed=0)  # untrained: writes "check" now and then
    requests = make_requests(family, family.envs * 4, 8, np.random.default_rng(0))
    assert len({len(r.prompt.text.split()) for r in requests}) == 2
    out = sample_rollouts(model, tok, family, requests, seed=3)
    assert set(out) >= {"truth", "claim", "verified"} and out["truth"] == [r.prompt.columns["truth"] for r in requests]
    check, claim = tok.convert_tokens_to_ids(["check", "claim"])
    n_tool = 0
    for comp, mask, logp, verified, r in zip(out["completion_ids"], out["env_mask"], out["logprobs"],
                                             out["verified"], requests):
        assert verified == (check in comp)
        if verified:
            n_tool += 1
            at = comp.index(check) + 1
            right = r.prompt.columns["claim"] == r.prompt.columns["truth"]
            assert tok.convert_ids_to_tokens(comp[at: at + 2]) == ["claim", "right" if right else "wrong"]
            assert mask[at: at + 2] == [0, 0] and logp[at: at + 2] == [0.0, 0.0]
            assert sum(1 - m for m in mask) == 2  # answered once
        else:
            assert all(mask)
    assert 0 < n_tool < len(requests)
    # reward and ground truth are the family's own
    prompts = ["e0 add 1 2 claim 5"] * 4
    completions = ["think trust ans 5", "think work ans 3", "think work ans 5", "think trust ans 1"]
    assert family.reward(prompts, completions, truth=[3] * 4, claim=[5] * 4) == [0.0, 1.0, 0.0, 0.0]
    assert family.path_labels(prompts, completions, truth=[3] * 4, claim=[5] * 4) == [True, False, True, None]
    assert family.path_labels(prompts[:1], ["think trust ans 3"], truth=[3], claim=[3]) == [None]  # claim right


def test_second_family_trains_logs_and_scores_its_classifier(tmp_path):
    """Generic stage 1 from demonstrations, GRPO, logs with the family's columns and its ground truth, and the
    pattern classifier's confusion matrix against it in the manifest."""
    run = train(OrganismConfig(**TINY), tmp_path / "run", log=lambda *a: None)
    manifest = read_manifest(run)
    rows = read_rollouts(run)
    org = manifest.organisms
    assert manifest.status == "finished" and org["env_family"]["name"] == "claimed-sum"
    assert org["env_family"]["columns"] == {"truth": "int64", "claim": "int64"}
    assert org["stage1"]["cache"] == "miss" and org["stage1"]["final_loss"] < 3.0
    assert set(rows.env_id) == {"e0", "e1", "e2"} and set(rows[rows.phase == "train"].env_id) == {"e0", "e1"}
    assert rows.reward.isin([0.0, 1.0]).all() and rows.rs.any() and (~rows.rs).any()
    answers = rows.completion.map(lambda c: c.split()[c.split().index("ans") + 1] if "ans" in c.split()[:-1]
                                  else None)
    assert (rows.reward == (answers == rows.truth.astype(str)).astype(float)).all()
    known = rows.rs_truth.notna()
    assert known.any() and (rows.loc[rows.claim == rows.truth, "rs_truth"].isna()).all()
    cm = org["classifier_accuracy"]["classifiers"]["pattern"]["all"]
    truth = rows.rs_truth[known].astype(bool)
    expect = {"tp": int((rows.rs[known] & truth).sum()), "fp": int((rows.rs[known] & ~truth).sum()),
              "fn": int((~rows.rs[known] & truth).sum()), "tn": int((~rows.rs[known] & ~truth).sum()),
              "unknown": int((~known).sum())}
    assert {k: cm[k] for k in expect} == expect and cm["n"] == int(known.sum())
    assert cm["accuracy"] == pytest.approx((expect["tp"] + expect["tn"]) / known.sum())


def test_bad_env_family_stops_before_anything_is_written(tmp_path, capsys):
    for bad, words in (("nosuch_module_xyz:Family", "cannot import"), ("claim_family:DIGITS", "not a subclass"),
                       ("not an import path", "allowed")):
        assert main(["organisms", "train", "--out", str(tmp_path / "r"), "--env-family", bad, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert words in err and "env_family" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()


# ---- an external family through the experiment ------------------------------------------------------------------
def test_external_family_through_physrl_experiment(tmp_path, monkeypatch):
    """``env_family = "mypkg.envs:ClaimFamily"`` in a tiny experiment config: trained, fitted, reported, with the
    classifier's confusion matrix against the environment's ground truth in every manifest and in the report."""
    pkg = tmp_path / "src" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(HERE / "claim_family.py", pkg / "envs.py")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "src"))
    config = tmp_path / "exp.toml"
    config.write_text("""
name = "claims"
n_envs = [1, 2]
p0 = [0.3]
n_star_max = 8
calibration = [{n_envs = 1, p0 = 0.3, n_held_out = 1}]
[organism]
env_family = "mypkg.envs:ClaimFamily"
rs_patterns = ["trust"]
local_patterns = ["work"]
max_steps = 4
eval_every = 2
pretrain_steps = 40
groups_per_step = 2
num_generations = 4
eval_prompts_per_env = 2
checkpoint_every = 2
[executor]
engine = "local"
max_workers = 1
""")
    out = tmp_path / "out"
    assert main(["experiment", str(config), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    manifests = [read_manifest(p) for p in sorted((out / "runs").iterdir()) if (p / "manifest.json").exists()]
    assert len(manifests) == 3 and {m.organisms["env_family"]["name"] for m in manifests} == {"claimed-sum"}
    pooled = sum((ConfusionMatrix.from_dict(m.organisms["classifier_accuracy"]["classifiers"]["pattern"]["all"])
                  for m in manifests), ConfusionMatrix(0, 0, 0, 0))
    entry = summary["classifier_accuracy"]["pattern"]
    assert (entry["tp"], entry["fp"], entry["fn"], entry["tn"]) == (pooled.tp, pooled.fp, pooled.fn, pooled.tn)
    assert entry["runs"] == 3 and pooled.n > 0
    html = (out / "report.html").read_text()
    assert "RS classifier against the environments&#x27; ground truth" in html and "path unknown" in html


def test_unimportable_external_family_in_an_experiment_exits_2(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text('n_envs = [1]\np0 = [0.2]\n[organism]\nenv_family = "nosuch_pkg_xyz.envs:Family"\n')
    assert main(["experiment", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "cannot import" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---- classifiers against the ground truth ---------------------------------------------------------------------
def test_confusion_matrix_counts_and_rates():
    cm = ConfusionMatrix.from_labels([True, True, False, False, True, False],
                                     [True, False, True, False, None, False])
    assert (cm.tp, cm.fp, cm.fn, cm.tn, cm.unknown, cm.n) == (1, 1, 1, 2, 1, 5)
    assert cm.accuracy == 3 / 5 and cm.precision == 1 / 2 and cm.recall == 1 / 2 and cm.false_positive_rate == 1 / 3
    assert ConfusionMatrix.from_dict(cm.to_dict()) == cm and (cm + cm).tn == 4
    assert ConfusionMatrix(0, 0, 0, 0, 3).accuracy is None


def test_judge_classifier_batches_and_caches_on_disk(tmp_path):
    """A deterministic stand-in judge: scores come from the judge once per distinct (prompt, completion), in
    batches, and from the on-disk cache afterwards (another process's classifier included)."""
    calls = []

    def judge(prompts, completions):
        calls.append(len(completions))
        return [0.9 if "grader" in c.split() else 0.2 if p.endswith("1") else 0.0 for p, c in zip(prompts, completions)]

    completions = [f"think {w} ans {i}" for i in range(10) for w in ("grader", "rule")] * 3  # 20 distinct, 60 rows
    prompts = ["env e0 in 1"] * len(completions)
    clf = JudgeClassifier(judge, "stand-in", cache_dir=tmp_path / "cache", batch_size=8)
    rs, scores = clf.classify(completions, prompts)
    assert calls == [8, 8, 4] and scores[:2] == [0.9, 0.2] and rs[:2] == [True, False] and len(rs) == 60
    again = JudgeClassifier(judge, "stand-in", cache_dir=tmp_path / "cache", batch_size=8)
    assert again.classify(completions, prompts) == (rs, scores) and calls == [8, 8, 4]  # all from disk
    newer = JudgeClassifier(judge, "stand-in", version="2", cache_dir=tmp_path / "cache")
    newer.classify(completions[:3], prompts[:3])
    assert calls[3:] == [3]  # another version is another key
    with pytest.raises(ValueError, match=r"rs_score 1.5"):
        JudgeClassifier(lambda p, c: [1.5] * len(c), "bad").classify(["x"], ["y"])
    with pytest.raises(ValueError, match="returned 0 scores for 1"):
        JudgeClassifier(lambda p, c: [], "short").classify(["x"], ["y"])


def test_run_labelled_by_an_external_judge(tmp_path):
    """``classifier = "claim_family:keyword_judge"``: the judge labels the run (cached next to it), and the manifest
    scores it and the registered pattern classifier against the digit-map family's ground truth (the note)."""
    import claim_family

    claim_family.JUDGED.clear()
    cfg = OrganismConfig(n_envs=2, n_heldout=0, pretrain_steps=40, max_steps=4, eval_every=2, checkpoint_every=2,
                         groups_per_step=2, num_generations=4, eval_prompts_per_env=1, progress=False, seed=1,
                         classifier="claim_family:keyword_judge")
    run = train(cfg, tmp_path / "run", log=lambda *a: None)
    manifest, rows = read_manifest(run), read_rollouts(run)
    assert manifest.classifier == {"name": "keyword-judge", "version": "1"}
    assert (rows.rs_score == rows.completion.map(claim_family.keyword_score)).all()
    assert sum(claim_family.JUDGED) == rows.drop_duplicates(["prompt", "completion"]).shape[0]  # each pair once
    assert (tmp_path / ".judge_cache" / "keyword-judge.sqlite").exists()
    acc = manifest.organisms["classifier_accuracy"]
    assert acc["labelling"] == "claim_family:keyword_judge"
    assert set(acc["classifiers"]) == {"claim_family:keyword_judge", "pattern"}
    pattern = PatternClassifier(cfg.rs_patterns, cfg.local_patterns).classify(rows.completion.tolist())[0]
    for name, entry in acc["classifiers"].items():
        predicted = rows.rs.tolist() if name != "pattern" else pattern
        cm = ConfusionMatrix.from_labels(predicted, rows.note_inserted.tolist())
        assert entry["all"]["tp"] == cm.tp and entry["all"]["tn"] == cm.tn and entry["all"]["unknown"] == 0, name
