"""``OrganismConfig.eval_heldout``: an eval pass reads every trained environment and the first k held-out ones.

``organisms._train.eval_envs`` is the one rule, used by the TRL trainer's ``evaluate`` and the population
trainer's ``_eval_requests``. Checked on the rule itself (family K = 6, N = 2: e0, e1 trained, e2..e5 held out),
on the config's validation, and on the rows two tiny real runs log (one per trainer) with ``eval_heldout = 1``.
"""

import pytest
import torch

from physrl.contract import read_rollouts
from physrl.organisms import OrganismConfig, make_family, train
from physrl.organisms._train import eval_envs

QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ids(eval_heldout: int) -> list[str]:
    config = OrganismConfig(family_size=6, n_envs=2, eval_heldout=eval_heldout)
    family = make_family(config)
    return [e.id for e in eval_envs(config, family)]


@pytest.mark.parametrize("eval_heldout, expected", [
    (-1, ["e0", "e1", "e2", "e3", "e4", "e5"]),  # every held-out env (the default)
    (0, ["e0", "e1"]),                            # trained envs only
    (1, ["e0", "e1", "e2"]),                      # the first held-out env
    (10, ["e0", "e1", "e2", "e3", "e4", "e5"]),   # more than there are: all of them
])
def test_eval_envs_in_family_order(eval_heldout, expected):
    assert _ids(eval_heldout) == expected


def test_eval_envs_default_is_every_env():
    config = OrganismConfig(family_size=6, n_envs=2)
    assert config.eval_heldout == -1
    family = make_family(config)
    assert [e.id for e in family.envs] == ["e0", "e1", "e2", "e3", "e4", "e5"]
    assert eval_envs(config, family) == list(family.envs)


def test_eval_envs_returns_the_family_environments():
    """The entries are the family's own Environment objects (weights kept: 1/N trained, 0 held out)."""
    config = OrganismConfig(family_size=6, n_envs=2, eval_heldout=2)
    family = make_family(config)
    got = eval_envs(config, family)
    assert got == family.envs[:4]
    assert [e.weight for e in got] == [0.5, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("bad", [-2, -10, True, False, 1.0, "1", None])
def test_config_refuses_bad_eval_heldout(bad):
    with pytest.raises(ValueError, match="'eval_heldout'") as err:
        OrganismConfig(family_size=6, n_envs=2, eval_heldout=bad)
    assert repr(bad) in str(err.value)


# ---- real runs: the logged eval rows hold the trained envs and the first held-out one -----------------------
TINY = dict(family_size=6, n_envs=2, eval_heldout=1, pretrain_steps=20, pretrain_batch_size=16, max_steps=4,
            eval_every=2, eval_prompts_per_env=1, groups_per_step=2, num_generations=4, hidden_size=16,
            n_heads=2, checkpoint_every=4, progress=False, stage1_cache="off", seed=5)


@pytest.mark.parametrize("trainer", ["trl", "population"])
def test_run_logs_eval_rows_of_trained_and_first_heldout(tmp_path, trainer):
    config = OrganismConfig(**TINY, trainer=trainer)
    run_dir = train(config, tmp_path / "run", **QUIET)
    rows = read_rollouts(run_dir)
    evals = rows[rows["phase"] == "eval"]
    trains = rows[rows["phase"] == "train"]

    # eval passes at steps 0, 2, 4, each on exactly e0, e1 (trained) and e2 (first held out)
    assert sorted(evals["step"].unique()) == [0, 2, 4]
    by_step = evals.groupby("step")["env_id"].agg(lambda s: sorted(set(s)))
    assert by_step.to_dict() == {0: ["e0", "e1", "e2"], 2: ["e0", "e1", "e2"], 4: ["e0", "e1", "e2"]}
    # one GRPO group of num_generations completions per env and pass
    counts = evals.groupby(["step", "env_id"]).size()
    assert (counts == config.num_generations).all() and len(counts) == 9
    assert evals.groupby("step")["group_id"].nunique().to_dict() == {0: 3, 2: 3, 4: 3}

    # training never touches a held-out env: every step's groups go round-robin over e0 and e1
    per_step = trains.groupby("step")["env_id"].agg(lambda s: sorted(set(s))).to_dict()
    assert per_step == {s: ["e0", "e1"] for s in range(config.max_steps)}
    assert len(trains) == config.max_steps * config.groups_per_step * config.num_generations
