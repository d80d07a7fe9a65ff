"""Model comparison on one quasi-likelihood scale: QAIC with the largest model's dispersion (issue 18 item 8).

Each variant used to estimate its own dispersion φ and be weighted by it, so the variants' likelihoods were
on different scales: on logs sampled with homogeneous transfer, ``none`` ranked first by ΔAIC 7.8 and the
nested model had the lower log-likelihood, which a nested maximum cannot have. Here (Burnham & Anderson
2002, Model Selection and Multimodel Inference, §2.5): the largest model (most parameters) is fitted first
and its dispersion per component φ_c (Pearson χ²_c / dof_c, at least 1) is held fixed for every variant;
each variant maximises the same quasi-likelihood, Σ_c D_c / φ_c (D_c the binomial deviance of component
c ∈ {p, a, b}); QAIC = Σ_c D_c / φ_c + 2K with K = k + the number of φ_c estimated (up to a constant shared
by every variant, so only differences mean anything). Nested maxima are checked: a model that contains
another (``none`` ⊂ ``homogeneous`` at c = 0 and ⊂ ``kernel`` at the smallest length scale; any variant ⊂
its ``+lam`` at λ = 0, and ``+power`` at γ = 1) must reach a quasi-deviance no larger than the nested one; when it does not, it is
refitted from the nested optimum and the better optimum is kept. With ``dispersion="none"`` every φ_c is
1 and the criterion is plain AIC.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd

from physrl.contract import Run, load_runs

from ._fit import FitResult, fit

#: a nested maximum may exceed its nesting model's by optimizer noise only (quasi-deviance units)
NESTED_TOL = 0.01


def component_deviance(result: FitResult) -> dict[str, float]:
    """Unweighted binomial deviance D_c per component (p, a, b) at the fit's optimum (no step-0 prior)."""
    problem = result.problem
    data, _ = problem.split(problem.residual(result.params))
    out, at = {}, 0
    for comp in problem.components:
        r = data[at:at + len(comp.k)]
        at += len(comp.k)
        out[comp.latent] = out.get(comp.latent, 0.0) + float(r @ r) / problem.weights[comp.latent] ** 2
    return out


def _nests(small: dict, large: dict) -> bool:
    """True when variant ``small`` (fit keywords) is a special case of ``large``."""
    model = ("priors", "learnabilities", "phases", "substeps", "observation", "step0")  # besides transfer, λ
    rest = lambda kws: {k: kws[k] for k in model if k in kws}  # noqa: E731
    if rest(small) != rest(large):
        return False
    t_small, t_large = small.get("transfer", "homogeneous"), large.get("transfer", "homogeneous")
    lam_small, lam_large = bool(small.get("lam")), bool(large.get("lam"))
    law_small, law_large = small.get("selection", "replicator"), large.get("selection", "replicator")
    if (t_small, lam_small, law_small) == (t_large, lam_large, law_large):
        return False
    # the replicator is every power law at γ = 1 (docs/model.md §9)
    law_nested = law_small == law_large or law_small == "replicator"
    return (t_small == t_large or t_small == "none") and lam_small <= lam_large and law_nested


def _embedded(small: FitResult, large_params) -> dict[str, float]:
    """The nested optimum as a start of the larger model: shared values copied, extra transfer at
    'no transfer' (c = 0, the smallest length scale) and λ = 0."""
    start = {}
    for name, par in large_params.items():
        if not par.vary:
            continue
        if name in small.params:
            start[name] = float(small.params[name].value)
        elif name.startswith("c_") or name == "lam":
            start[name] = 0.0
        elif name.startswith("length_scale_"):
            start[name] = float(par.min)
        elif name == "gamma":  # the replicator
            start[name] = 1.0
    return start


def _default_variants(runs: list[Run]) -> dict[str, dict]:
    transfers = ["none", "homogeneous"]
    if all(e.coordinates is not None for r in runs for e in r.environments):
        transfers.append("kernel")
    variants = {f"{t}{'+lam' if l else ''}": {"transfer": t, "lam": l} for t in transfers for l in (False, True)}
    variants.update({f"{t}+power": {"transfer": t, "lam": False, "selection": "power"} for t in transfers})
    return variants


def _largest(runs, variants: dict, common: dict) -> tuple[str, FitResult | None, dict[str, float]]:
    """(name, quasi fit, φ_c) of the largest variant; among equally large ones the best-fitting (lowest
    Pearson dispersion). φ_c = 1 everywhere with ``dispersion="none"``."""
    from ._problem import FitSpec, Problem
    from ._observations import observations

    obs = observations(runs)
    fields = ("transfer", "priors", "learnabilities", "lam", "phases", "substeps", "observation", "step0",
              "selection")
    size = {}
    for name, kws in variants.items():
        merged = {k: v for k, v in {**common, **kws}.items() if k in fields}
        if "phases" in merged:
            merged["phases"] = tuple(merged["phases"])
        try:
            size[name] = len(Problem.build(runs, obs, FitSpec(**merged)).var_names)
        except ValueError:
            continue
    if not size:
        return "", None, {}
    top = max(size.values())
    best_name, best, best_phi = "", None, math.inf
    for name in [n for n, k in size.items() if k == top]:
        try:
            res = fit(runs, **{**common, **variants[name], "dispersion": "quasi"})
        except ValueError:
            continue
        if res.dispersion < best_phi or best is None:
            best_name, best, best_phi = name, res, res.dispersion
    if best is None:
        return "", None, {}
    phi = {c: (max(v, 1.0) if np.isfinite(v) else 1.0) for c, v in best.diagnostics.component_dispersion.items()}
    return best_name, best, phi


def compare(runs, variants: dict[str, dict] | None = None, progress: bool = False, **common) -> pd.DataFrame:
    """Fit several model variants to the same runs and rank them by QAIC on one dispersion scale.

    Parameters
    ----------
    runs : list of Run or paths
    variants : dict name -> keyword arguments of :func:`fit`, optional
        Default: transfer none / homogeneous / kernel (kernel only when every env has coordinates), each
        with footnote-4 λ off and on, and with the power selection law (``<transfer>+power``,
        docs/model.md §9).
    progress : bool
        A tqdm bar on stderr over the variants (each fit's own bar below it): the comparison refits the
        runs once per variant, tens of seconds in all.
    **common
        Passed to every :func:`fit`. ``dispersion="none"`` puts φ_c = 1 (plain AIC); otherwise the largest
        variant's φ_c is held fixed for all (module docstring).

    Returns
    -------
    pandas.DataFrame
        One row per variant, lowest QAIC first: ``variant, k, K`` (k + the φ_c estimated),
        ``quasi_deviance`` (Σ_c D_c/φ_c), ``qaic``, ``qbic`` (Σ_c D_c/φ_c + K ln n), ``delta_qaic``,
        ``delta_qbic``, ``loglik`` (the binomial log-likelihood, unscaled) and ``aic`` from it,
        ``converged``, ``unidentified``, ``nested_refit`` (the nested variant it was refitted from, when its
        first maximum was below that variant's), ``error`` (a variant the data cannot carry), and the label
        columns ``criterion`` ("QAIC" or "AIC"), ``dispersion`` (the φ_c used, in words) and ``largest``
        (the variant that gave it). ``table.attrs`` holds ``criterion``, ``phi`` (dict) and ``largest``.
    """
    if runs and not isinstance(runs[0], Run):
        runs = load_runs(runs)
    variants = variants or _default_variants(runs)
    quasi = common.get("dispersion", "quasi") != "none"
    common = {k: v for k, v in common.items() if k != "dispersion"}
    if quasi:
        largest, _, phi = _largest(runs, variants, common)
    else:
        largest, phi = "", {"p": 1.0, "a": 1.0, "b": 1.0}
    fits, errors = {}, {}
    from tqdm.auto import tqdm

    bar = tqdm(variants.items(), desc="model comparison", unit="fit", file=sys.stderr, leave=False,
               disable=not progress)
    for name, kws in bar:
        bar.set_postfix_str(name, refresh=True)
        try:
            fits[name] = fit(runs, **{**common, "progress": progress, **kws,
                                      "dispersion": phi if quasi else "none"})
        except ValueError as exc:
            errors[name] = str(exc)
    dev = {name: _quasi_deviance(res, phi) for name, res in fits.items()}
    refit_from = _enforce_nesting(runs, variants, common, phi if quasi else "none", fits, dev)
    n_phi = sum(v > 1 for v in phi.values()) if quasi else 0
    rows = []
    for name in variants:
        if name in errors:
            rows.append({"variant": name, "k": None, "K": None, "quasi_deviance": None, "qaic": np.inf,
                         "qbic": np.inf, "loglik": None, "aic": None, "converged": False, "unidentified": "",
                         "nested_refit": "", "error": errors[name]})
            continue
        res = fits[name]
        k = len(res.var_names)
        big_k = k + n_phi
        loglik = res.problem.loglik(sum(component_deviance(res).values()))
        rows.append({"variant": name, "k": k, "K": big_k, "quasi_deviance": dev[name],
                     "qaic": dev[name] + 2 * big_k, "qbic": dev[name] + big_k * math.log(res.n_data),
                     "loglik": loglik, "aic": -2 * loglik + 2 * k, "converged": res.converged,
                     "unidentified": ",".join(res.unidentified), "nested_refit": refit_from.get(name, ""),
                     "error": ""})
    table = pd.DataFrame(rows).sort_values("qaic", kind="stable").reset_index(drop=True)
    table["delta_qaic"] = table["qaic"] - table["qaic"].min()
    table["delta_qbic"] = table["qbic"] - table["qbic"].min()
    criterion = "QAIC" if n_phi else "AIC"
    words = ", ".join(f"{c} {v:.2f}" for c, v in phi.items())
    table["criterion"] = criterion
    table["dispersion"] = words + (f" (from {largest})" if largest else " (none)")
    table["largest"] = largest
    table.attrs.update(criterion=criterion, phi=dict(phi), largest=largest)
    return table


def _quasi_deviance(res: FitResult, phi: dict[str, float]) -> float:
    return sum(d / phi.get(c, 1.0) for c, d in component_deviance(res).items())


def _enforce_nesting(runs, variants, common, dispersion, fits, dev) -> dict[str, str]:
    """Refit every variant whose maximum lies below a nested variant's from that nested optimum; returns
    variant -> the nested variant it was refitted from. ``fits`` and ``dev`` are updated in place."""
    refit_from = {}
    order = sorted(fits, key=lambda n: len(fits[n].var_names))  # nested ones first: a refit can chain
    for large in order:
        for small in order:
            if small == large or not _nests(variants[small], variants[large]):
                continue
            if dev[large] <= dev[small] + NESTED_TOL:
                continue
            start = _embedded(fits[small], fits[large].params)
            again = fit(runs, **{**common, **variants[large], "dispersion": dispersion}, start=start)
            d = _quasi_deviance(again, dispersion if isinstance(dispersion, dict) else {})
            if d < dev[large]:
                fits[large], dev[large] = again, d
            refit_from[large] = small
    return refit_from
