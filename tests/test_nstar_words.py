"""N* in words (physrl.experiment.words, fitting's CriticalDiversity.describe): every number says
which estimator it is, a bracket stands in for a logistic point that rests on one separated seed,
and no 'nan' or 'None' reaches a person."""

import math

import numpy as np
import pytest

from physrl.experiment import words
from physrl.fitting import _protocol


def _entry(**kw):
    base = {"n_star": 5.417521398894564, "interval_95": [None, None], "n_seeds": 1, "bracket": [4, 8],
            "status": "separated"}
    return {**base, **kw}


def test_one_separated_seed_is_quoted_as_its_bracket_not_as_the_firth_point():
    """The demo's case: N = 1, 2, 4 lost, N = 8 won, one seed; Firth puts the 50% point at 5.42."""
    e = _entry()
    assert words.observed_headline(e) == "in (4, 8]"
    basis = words.observed_basis(e)
    assert basis.startswith("one seed, perfectly separated: every N ≤ 4 lost, every N ≥ 8 won")
    assert "5.42" in basis and "not measured" in basis


@pytest.mark.parametrize("entry, headline", [
    (_entry(n_seeds=6, status="ok", bracket=None, n_star=4.8857, interval_95=[0.0, None]), "4.89, 95% [< 4, > 8]"),
    (_entry(n_seeds=3, status="ok", bracket=None, n_star=3.57, interval_95=[2.85, 5.62]), "3.57, 95% [2.85, 5.62]"),
    (_entry(n_seeds=6, status="below_grid", bracket=[0, 4], n_star=None, interval_95=[0.0, None]), "< 4"),
    (_entry(n_seeds=3, status="no_wins", bracket=[8, None], n_star=None), "> 8"),
    (_entry(n_seeds=3, status="all_wins", bracket=[0, 1], n_star=None), "≤ 1"),
    (_entry(n_seeds=1, status="ok", bracket=None, n_star=3.3), "≈ 3.3"),
    (_entry(n_seeds=3, status="no_increase", bracket=None, n_star=None), "undefined"),
])
def test_observed_headline_per_status(entry, headline):
    assert words.observed_headline(entry, (4, 8)) == headline


def test_predicted_ends_read_as_bounds_never_none_or_nan():
    # the frozen prediction of the demo: 8.17 with draws from the grid's lower end to above n_max
    assert words.predicted_headline(8.171939, [1.0, None], n_max=64, level=95) == "8.17, 95% [≤ 1, > 64]"
    # the fit's integer-grid N* with a NaN upper end (pandas) and at the grid's lower end
    assert words.predicted_headline(9.0, [2.0, math.nan], n_max=64, level=90, digits=6) == "9, 90% [2, > 64]"
    assert words.predicted_headline(1.0, [1.0, 3.0], n_max=64, level=90) == "≤ 1, 90% [≤ 1, 3]"
    assert words.predicted_headline(None, [None, None], n_max=32, level=95) == "> 32, 95% [both ends > 32]"
    assert words.smallest_winning({"0": 8.0}) == "8 (seed 0)"
    assert words.smallest_winning({0: 8.0, 1: None, 2: 4.0}, 16) == "8, > 16, 4 (seeds 0, 1, 2)"
    assert words.plural(1, "seed") == "1 seed" and words.plural(3, "seed") == "3 seeds"


class _Converged:
    converged = True


@pytest.mark.parametrize("share, status, text", [
    (0.9, "at_grid_min", "protocol N* ≤ 1 (RS wins already at N = 1, the grid's lower end), "
                         "90% over 8 parameter draws [≤ 1, ≤ 1]"),
    (0.1, "above_n_max", "protocol N* > 16 (no N ≤ 16 made RS win; 100% of draws above too), "
                         "90% over 8 parameter draws [> 16, > 16]"),
    (None, "ok", "protocol N* = 5 (integer grid 1..16), 90% over 8 parameter draws [5, 5]"),
])
def test_fitted_critical_diversity_says_where_the_grid_ends(monkeypatch, share, status, text):
    """`physrl fit --predict` printed 'N* = 1.0 [1.0, 1.0]' with status ok when RS won already at
    N = 1, and 'N* = 11.0 [2.0, None]' when draws lay above n_max."""
    def final_share(fit, p0, n, max_steps, n_draws, seed):
        n = np.asarray(n, float)
        value = np.where(n >= 5, 0.9, 0.1) if share is None else np.full(n.shape, share)
        return np.broadcast_to(value, (n_draws + 1, n.size)).copy()

    monkeypatch.setattr(_protocol, "protocol_final_p", final_share)
    res = _protocol.critical_diversity(_Converged(), 0.1, max_steps=100, n_max=16, n_draws=8)
    assert res.status == status
    assert res.describe() == text
    assert res.to_dict()["text"] == text
    assert "None" not in text and "nan" not in text
