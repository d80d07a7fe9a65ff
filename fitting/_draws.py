"""Parameter draws from a fit, for propagating its uncertainty into predictions and the N* protocol.

Identified parameters come from the fit's normal approximation (covariance scaled by the dispersion, clipped to
their bounds); parameters the fit could not identify are drawn over their whole plausible range (uniform for
probabilities, log-uniform over a factor 10 either side for scales). Shared by :mod:`._predict` (predictive bands)
and :mod:`._protocol` (the protocol's N*), which is why it sits below both.
"""

from __future__ import annotations

import math

import numpy as np

from ._fit import FitResult
from ._problem import PROB_MAX, PROB_MIN


def sampled_names(fit: FitResult) -> list[str]:
    """The parameters a draw covers: the varying ones and those held fixed as unsupported."""
    return list(fit.var_names) + [n for n, e in fit.estimates.items() if not e.vary and not e.identified]


def _sample_fit(fit: FitResult, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """(S + 1, P) draws; row 0 is the point estimate."""
    names = sampled_names(fit)
    theta = np.array([fit.params[n].value for n in names])
    draws = np.repeat(theta[None, :], n_samples + 1, axis=0)
    nv = len(fit.var_names)
    ident = np.array([fit.estimates[n].identified for n in names])
    ident_var = ident[:nv]
    if ident_var.any():
        cov = fit.covariance[np.ix_(ident_var, ident_var)]
        evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
        root = evecs * np.sqrt(np.clip(evals, 0, None))
        cols = np.flatnonzero(ident_var)
        draws[1:, cols] += rng.standard_normal((n_samples, cols.size)) @ root.T
    for j in np.flatnonzero(~ident):
        par = fit.params[names[j]]
        domain = fit.problem.info[names[j]].domain
        if domain in ("prob", "unit"):
            lo, hi = max(par.min, PROB_MIN), min(par.max, PROB_MAX)
            draws[1:, j] = rng.uniform(lo, hi, n_samples)
        else:
            v = max(abs(par.value), 1e-3)
            draws[1:, j] = np.exp(rng.uniform(math.log(v / 10), math.log(v * 10), n_samples))
    for j, n in enumerate(names):
        par = fit.params[n]
        draws[:, j] = np.clip(draws[:, j], par.min, par.max)
    return draws, names


def sample_parameters(fit: FitResult, n_samples: int = 200, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Draws of the fit's parameters, for propagating its uncertainty.

    Identified parameters are drawn from the Gaussian of the fit's covariance
    (scaled by the dispersion); unidentified ones uniformly over their
    plausible range (probabilities over their bounds, scales over a factor 10
    either side), then every draw is clipped to its bounds.

    Parameters
    ----------
    fit : FitResult
    n_samples : int
        Number of draws S.
    seed : int

    Returns
    -------
    (draws, names) : ndarray of shape (S + 1, P), list of P str
        Row 0 is the point estimate; ``names`` are the varying parameters
        (``fit.var_names``) followed by any held fixed as unsupported.
    """
    return _sample_fit(fit, n_samples, np.random.default_rng(seed))
