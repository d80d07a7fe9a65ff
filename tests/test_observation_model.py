"""docs/model.md §7: the observation model in the vector field (every engine) and in the fit."""

import numpy as np
import pytest
import torch

from physrl import sim
from physrl.organisms import OrganismConfig
from physrl.organisms.families.digit_map import EnvFamily


def _model(observation, n=3):
    base = sim.ToyModel.homogeneous(n, c_z=0.8, c_x=0.5, c_y=0.1, alpha_x=2.0, alpha_y=0.7)
    w = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    return sim.ToyModel(*base.couplings, *base.alphas, w, 0.0, observation)


def _y0(n=3):
    return sim.Latents.from_probabilities(torch.full((2, n), 0.2, dtype=torch.float64), 0.4, 0.3)


@pytest.mark.parametrize("engine", ["numba", "numpy", "torch"])
def test_unit_bounds_are_the_posts_model_exactly(engine):
    unit = tuple(torch.tensor(v, dtype=torch.float64) for v in (0.0, 1.0, 0.0, 1.0))
    a = sim.euler(_model(unit), _y0(), dt=0.05, t_max=20.0, tol=None, engine=engine).final_p
    b = sim.euler(_model(None), _y0(), dt=0.05, t_max=20.0, tol=None, engine=engine).final_p
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_engines_agree_with_observation_bounds_and_the_gap_is_in_reward_units():
    obs = tuple(torch.tensor(v, dtype=torch.float64).expand(2, 3) for v in (0.05, 0.5, 0.2, 1.0))
    finals = [torch.as_tensor(sim.euler(_model(obs), _y0(), dt=0.05, t_max=20.0, tol=None, engine=e).final_p)
              for e in ("numba", "numpy", "torch")]
    for f in finals[1:]:
        torch.testing.assert_close(f, finals[0], rtol=0, atol=1e-12)
    # latent a = 0.4 > b = 0.3 but observed a = 0.05 + 0.45 * 0.4 = 0.23 < b = 0.2 + 0.8 * 0.3 = 0.44:
    # RS loses ground at once (dp/dt < 0), which the latent gap alone would never give
    d = _model(obs).rhs(_y0())
    assert (d.z[:, :2] < 0).all()
    d0 = _model(None).rhs(_y0())
    assert (d0.z[:, :2] > 0).all()


def test_organisms_write_their_bounds_per_environment():
    fam = EnvFamily(OrganismConfig(n_envs=2, n_heldout=1, b0=0.3, note_reveal=0.5))
    for entry in fam.describe():
        assert entry["observation"] == pytest.approx({"a_lo": 0.05, "a_hi": 0.5, "b_lo": 2 / 9, "b_hi": 1.0},
                                                     abs=1e-6)
