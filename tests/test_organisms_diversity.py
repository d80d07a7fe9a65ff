"""The diversity effect, observed: same knobs, seed and difficulty distribution; N = 1 ends below N = 8.

The full comparison trains two default runs without held-out envs, as in the
demo (~30-35 s of one CPU thread each, physrl/configs/demo.toml)
and is marked slow; ``test_calibrate_sweep_runs_both_sizes`` covers the same
code path (``calibrate`` -> ``run_pair`` -> ``train`` -> ``summarize``) in CI.
"""

import pytest

from physrl.organisms import EnvFamily, OrganismConfig
from physrl.organisms._calibrate import calibrate


def test_runs_of_different_size_share_the_difficulty_distribution():
    one, eight = EnvFamily(OrganismConfig(n_envs=1)), EnvFamily(OrganismConfig(n_envs=8))
    # every env: the same alphabet and the same number of pretrained (known) map entries
    assert {len(e.known) for e in one.envs} == {len(e.known) for e in eight.envs} == {1}
    assert one.envs[0].digit_map == eight.envs[0].digit_map and one.envs[0].known == eight.envs[0].known
    assert (one.envs[0].weight, eight.envs[0].weight) == (1.0, 0.125)


def test_calibrate_sweep_runs_both_sizes(tmp_path):
    base = OrganismConfig(max_steps=4, eval_every=2, checkpoint_every=2, pretrain_steps=20, n_heldout=1,
                          eval_prompts_per_env=1)
    table = calibrate(base, {"family_size": [3]}, tmp_path, n_values=(1, 2))
    assert list(table.N) == [1, 2]
    assert list(table.stage1) == ["miss", "hit"]  # one family (K = 3) at both N: stage 1 trained once
    assert (table.cpu_seconds > 0).all() and (table.eval_seconds > 0).all()
    assert table.p_end.between(0, 1).all() and table.p_step0.between(0, 1).all()
    assert (tmp_path / "calibration.csv").exists()
    assert set(table.flip) == {bool(table.p_end.iloc[0] < 0.5 < table.p_end.iloc[1])}


@pytest.mark.slow
def test_one_env_ends_with_lower_rs_share_than_eight(tmp_path):
    base = OrganismConfig(n_heldout=0)
    table = calibrate(base, {"p0": [base.p0]}, tmp_path, n_values=(1, 8))
    end = dict(zip(table.N, table.p_end))
    assert end[1] < 0.5 < end[8], table.to_string()
