"""The selection law in the fit: when the logs can identify its exponent γ (docs/model.md §9).

Under the power law dz/dt ∝ [p (1 − p)]^γ (a − b) the exponent sets how the
early growth of the RS log-odds depends on the prior. Within one run, γ is
confounded with the time scale and the learnabilities (the trajectory from
one p0 can be matched by a different γ at a different rate), so γ counts as
identified only when the runs *span priors*: at least two runs whose
step-0 RS shares have disjoint 95% (Jeffreys) intervals. Otherwise the fit
still estimates γ but reports it as not identified, with that reason.
"""

from __future__ import annotations

from itertools import combinations


def priors_spanned(problem) -> tuple[bool, str]:
    """Do the runs of ``problem`` (a ``fitting._problem.Problem``) span priors?

    Returns
    -------
    (bool, str)
        True and "" when two runs' step-0 RS-share intervals (95%, Jeffreys)
        are disjoint; else False and the reason, for people.
    """
    by_run: dict[int, list] = {}
    for name, s0 in problem.step0.items():
        if s0.quantity == "p":
            by_run.setdefault(problem.info[name].run, []).append(s0)
    if len(by_run) < 2:
        return False, ("one run's prior only: γ needs runs that span priors (two runs whose step-0 RS shares "
                       "have disjoint 95% intervals)")
    intervals = {run: (min(s.lower for s in v), max(s.upper for s in v)) for run, v in by_run.items()}
    for (_, (lo1, hi1)), (_, (lo2, hi2)) in combinations(intervals.items(), 2):
        if hi1 < lo2 or hi2 < lo1:
            return True, ""
    shown = ", ".join(f"{problem.run_ids[r]} [{lo:.3g}, {hi:.3g}]" for r, (lo, hi) in intervals.items())
    return False, ("the runs do not span priors (their step-0 RS shares' 95% intervals overlap: " + shown
                   + "): γ is confounded with the time scale and learnabilities")


def gamma_identification(problem, ident: dict) -> dict:
    """``ident`` (name -> (stderr, reason, at_bound) from the fit's identifiability check) with γ marked
    not identified, and why, when the runs do not span priors (that reason first, any other after it);
    unchanged without a varying ``gamma``."""
    if "gamma" not in ident:
        return ident
    spanned, why = priors_spanned(problem)
    if spanned:
        return ident
    se, other, at_bound = ident["gamma"]
    return {**ident, "gamma": (se, why + (f"; also {other}" if other else ""), at_bound)}
