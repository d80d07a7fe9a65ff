"""N* in words: which estimator a critical diversity comes from, and how sure it is.

Four numbers called "N*" appear in an experiment's outputs (docs/model.md §3);
every report line and CLI line names the one it shows:

- **observed, logistic 50% point**: where a Firth-penalised logistic
  regression of win/loss on log N crosses 50% (:mod:`physrl.experiment.scaling`), with
  a percentile bootstrap over stage-1 models (the unit of replication). On one seed, or when the seeds separate
  perfectly (every N up to some N lost, every larger N won), the data say only
  that N* lies in the bracket (largest N that lost, smallest N that won]; the
  penalised point inside it is set by the penalty, not by the data, so the
  bracket is the headline.
- **observed, smallest winning N**: per seed, the smallest swept N whose run
  ended with RS share above the threshold (:func:`physrl.experiment.analysis.observed_n_star`).
- **predicted, frozen**: the calibration fit's N* on continuous N (first
  crossing, log-linear between grid points), with a 95% interval over
  parameter draws, written to ``predictions.json`` before any sweep run was
  trained (:mod:`physrl.experiment.freeze`).
- **predicted, integer grid**: the same fit's protocol N*, the first integer
  N in 1..n_max whose final share passes, with a 90% interval over parameter
  draws (:func:`physrl.experiment.freeze.predicted_n_star`).

Unknown or unbounded ends are never printed as ``nan``/``None``: an end above
the searched N reads ``> n_max``, a value at the grid's lower end ``≤ 1``.
"""

from __future__ import annotations

import math

OBSERVED_LOGISTIC = "logistic 50% point on log N (Firth), bootstrap 95% over stage-1 models"
OBSERVED_GRID = "smallest swept N whose run ended RS, per seed"
PREDICTED_FROZEN = ("frozen before the sweep: first crossing on continuous N (log-interpolated), "
                    "95% over parameter draws")
PREDICTED_GRID = "the fit's protocol N* on the integer grid 1..n_max, 90% over parameter draws"


def number(v, digits: int = 3) -> str:
    """``v`` to ``digits`` significant digits; "–" for None, NaN or ±inf."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}"


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def predicted_value(v, *, n_min: float = 1, n_max: float | None = None, digits: int = 3) -> str:
    """A predicted N* or interval end: ``≤ 1`` at the grid's lower end, ``> n_max`` above it.

    Parameters
    ----------
    v : float or None
        None, NaN or +inf mean "no N up to ``n_max`` passed".
    n_min : float
        The smallest N searched (a value there is an upper bound: N* ≤ n_min).
    n_max : float or None
        The largest N searched.
    """
    if not _finite(v):
        return f"> {number(n_max)}" if n_max is not None else "above the searched N"
    if v <= n_min:
        return f"≤ {number(n_min)}"
    return number(v, digits)


def predicted_interval(interval, *, n_min: float = 1, n_max: float | None = None, digits: int = 3) -> str:
    """``[2, > 64]``-style text of a predicted interval (None ends: above ``n_max``); "–" when not computed."""
    if not interval or len(interval) != 2:
        return "–"
    lo, hi = interval
    if not _finite(lo) and not _finite(hi):
        return f"[both ends {predicted_value(None, n_max=n_max)}]"
    return (f"[{predicted_value(lo, n_min=n_min, n_max=n_max, digits=digits)}, "
            f"{predicted_value(hi, n_min=n_min, n_max=n_max, digits=digits)}]")


def predicted_headline(n_star, interval, *, n_max, level: int, n_min: float = 1, digits: int = 3) -> str:
    """``8.17, 95% [≤ 1, > 64]``: a predicted N* with its interval over parameter draws."""
    text = predicted_value(n_star, n_min=n_min, n_max=n_max, digits=digits)
    iv = predicted_interval(interval, n_min=n_min, n_max=n_max, digits=digits)
    return text if iv == "–" else f"{text}, {level}% {iv}"


def observed_interval(interval, n_range: tuple[float, float] | None = None) -> str:
    """A bootstrap interval of the logistic N*: 0 reads "< smallest N", None "> largest N" swept."""
    if not interval or all(v is None for v in interval):
        return "–"
    lo_n, hi_n = n_range if n_range else (None, None)

    def one(v):
        if v is None:
            return f"> {number(hi_n)}" if hi_n is not None else "above the grid"
        if v == 0:
            return f"< {number(lo_n)}" if lo_n is not None else "below the grid"
        return number(v)

    return f"[{one(interval[0])}, {one(interval[1])}]"


def bracket_text(bracket) -> str:
    """``(4, 8]`` from [largest N that lost, smallest N that won] (None: no N won)."""
    lo, hi = bracket
    return f"({lo}, {'∞' if hi is None else hi}]"


def observed_headline(entry: dict, n_range: tuple[float, float] | None = None) -> str:
    """The observed N* of one p0 as it should be quoted first.

    Parameters
    ----------
    entry : dict
        A :class:`physrl.experiment.scaling.NStarEstimate` as a dict (``n_star``,
        ``interval_95``, ``n_seeds``, ``bracket``, ``status``).
    n_range : (float, float), optional
        Smallest and largest N swept (for the interval's open ends).

    Returns
    -------
    str
        ``in (4, 8]`` when the seeds separate perfectly or there is one seed
        with a bracket; ``> 8`` / ``≤ 1`` / ``< 2`` when N* lies beyond the
        grid; ``≈ 5.4`` for one seed without a bracket; otherwise
        ``5.42, 95% [3.1, 7.9]``.
    """
    status, bracket, n_star = entry.get("status"), entry.get("bracket"), entry.get("n_star")
    if status == "separated" and bracket:
        return f"in {bracket_text(bracket)}"
    if status in ("no_wins", "above_grid") and bracket:
        return f"> {bracket[0]}"
    if status == "all_wins" and bracket:
        return f"≤ {bracket[1]}"
    if status == "below_grid" and bracket:
        return f"< {bracket[1]}"
    if status == "no_increase" or n_star is None:
        return "undefined"
    if (entry.get("n_seeds") or 0) <= 1:
        return f"≈ {number(n_star, 2)}"
    iv = observed_interval(entry.get("interval_95"), n_range)
    return number(n_star) if iv == "–" else f"{number(n_star)}, 95% {iv}"


def observed_basis(entry: dict) -> str:
    """Which estimator the headline of :func:`observed_headline` is, and on how many seeds."""
    status, n_star, seeds = entry.get("status"), entry.get("n_star"), entry.get("n_seeds") or 0
    who = "one seed" if seeds <= 1 else f"{seeds} seeds"
    if status == "separated":
        bracket = entry.get("bracket") or [None, None]
        point = (f"; the Firth logistic's 50% point inside that bracket, {number(n_star)}, is set by its penalty, "
                 "not measured" if n_star else "")
        return f"{who}, perfectly separated: every N ≤ {bracket[0]} lost, every N ≥ {bracket[1]} won{point}"
    if status == "no_wins":
        return f"{who}: RS never won at any N swept"
    if status == "all_wins":
        return f"{who}: RS won at every N swept"
    if status == "above_grid":
        return f"{who}: the logistic's 50% point lies above the largest N swept (a bound)"
    if status == "below_grid":
        return f"{who}: the logistic's 50% point lies below the smallest N swept (a bound)"
    if status == "no_increase":
        return f"{who}: winning did not become likelier with N, no 50% point"
    if seeds <= 1:
        return "logistic 50% point on log N (Firth), one seed, outcomes not monotone in N: no interval"
    return f"logistic 50% point on log N (Firth), {who}, bootstrap 95% over stage-1 models (one per seed)"


def smallest_winning(per_seed: dict | None, n_max: int | None = None) -> str:
    """``8 (seed 0)`` or ``4, 4, > 8 (seeds 0, 1, 2)`` from ``{seed: N or None}``."""
    if not per_seed:
        return "–"
    seeds = sorted(per_seed, key=lambda s: int(s))

    def one(v):
        return (f"> {n_max}" if n_max is not None else "none") if not _finite(v) else number(v)

    values = ", ".join(one(per_seed[s]) for s in seeds)
    label = "seed" if len(seeds) == 1 else "seeds"
    return f"{values} ({label} {', '.join(str(s) for s in seeds)})"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


# ---- the frozen forecasts' scores in words --------------------------------------------------------------------
def brier_verdict(scores: dict, baseline: str) -> str:
    """``"beat"``, ``"lost to"`` or ``"did not differ from"`` ``baseline`` ("base_rate", "median_n", "half"
    or "calibration") on
    the Brier score, by whether the 95% interval of the difference excludes 0 (``scores``: a
    :class:`Scores` as a dict, e.g. summary.json's; ``"was not told apart from"`` when the bootstrap's
    ``note`` says there were too few stage-1 models for an interval; without an interval or a note, an older
    summary, by the sign alone)."""
    iv = (scores.get("interval_95") or {}).get(f"brier_minus_{baseline}")
    if scores.get(f"brier_{baseline}") is None:
        return "was not scored against"
    if not iv and (scores.get("bootstrap") or {}).get("note"):  # too few stage-1 models for an interval
        return "was not told apart from"
    if not iv:
        return "beat" if scores["brier"] < scores[f"brier_{baseline}"] else "lost to"
    return "beat" if iv[1] < 0 else "lost to" if iv[0] > 0 else "did not differ from"


def score_with_interval(scores: dict, key: str) -> str:
    """``0.282 [0.199, 0.358]``: one score of ``scores`` (a :class:`Scores` as a dict) with its bootstrap
    95% interval, the value alone where none was computed."""
    iv = (scores.get("interval_95") or {}).get(key)
    if scores.get(key) is None:
        return "–"
    return f"{scores[key]:.3f}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")


def score_difference(scores: dict, kind: str, baseline: str) -> str:
    """``+0.033 [-0.035, +0.109]``: the frozen forecasts' ``kind`` ("brier" or "log_loss") minus
    ``baseline``'s ("base_rate" or "median_n"), with its interval; negative: the forecasts did better."""
    iv = (scores.get("interval_95") or {}).get(f"{kind}_minus_{baseline}")
    if scores.get(f"{kind}_{baseline}") is None:
        return "–"
    diff = scores[kind] - scores[f"{kind}_{baseline}"]
    return f"{diff:+.3f}" + (f" [{iv[0]:+.3f}, {iv[1]:+.3f}]" if iv else "")


# ---- two verdicts, two names; baselines by when they were available; the unit of replication -----------------
FROZEN_AGREEMENT = "frozen forecast's agreement"
FROZEN_AGREEMENT_BASIS = ("each sweep run's end state called from the frozen P(RS wins) > ½, written before any "
                          "sweep run was trained")
PER_RUN_AGREEMENT = "per-run prediction's agreement"
PER_RUN_AGREEMENT_BASIS = ("after the fact: the calibration fit run from each sweep run's own measured step 0 "
                           "(not a forecast; it never stands for the frozen one)")

#: short names of the scores' baselines, with when a forecaster could have had them
BASELINE_NAMES = {"base_rate": "base rate (hindsight)", "median_n": "N ≥ median N (prospective)",
                  "half": "constant 0.5 (prospective)", "calibration": "calibration logistic (prospective)"}


def agreement_text(entry: dict | None) -> str:
    """``frozen forecast's agreement: 75 of 120 (62%, 95% [50%, 73%] over stage-1 models)`` from one
    ``summary.json`` ``agreement`` entry (``name``, ``agree``, ``of``, optional ``interval_95``, ``unit``);
    "not computed" when absent."""
    if not entry or not entry.get("of"):
        return f"{(entry or {}).get('name', 'agreement')}: not computed"
    iv = entry.get("interval_95")
    unit = entry.get("unit")
    extra = (f", 95% [{iv[0]:.0%}, {iv[1]:.0%}]" + (f" over {unit}s" if unit else "")) if iv else ""
    return f"{entry['name']}: {entry['agree']} of {entry['of']} ({entry['agree'] / entry['of']:.0%}{extra})"


def agreement_pair(agreement: dict | None) -> str:
    """The two verdicts side by side, each under its own name (frozen first), with what each one is."""
    agreement = agreement or {}
    frozen, per_run = agreement.get("frozen_forecast"), agreement.get("per_run_prediction")
    parts = [agreement_text(frozen or {"name": FROZEN_AGREEMENT}) + f" — {FROZEN_AGREEMENT_BASIS}"]
    if per_run:
        parts.append(agreement_text(per_run) + f" — {PER_RUN_AGREEMENT_BASIS}")
    return "; ".join(parts)


def icc_text(mixed: dict | None) -> str:
    """``latent ICC 0.46, 95% [0.10, 0.65] (cluster bootstrap over 18 stage-1 models)``; why not, when absent."""
    if not mixed:
        return "latent ICC: not computed"
    if mixed.get("error"):
        return f"latent ICC: not computed ({mixed['error']})"
    lo, hi = mixed.get("icc_interval_95") or (None, None)
    iv = f", 95% [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
    return (f"latent ICC {mixed['icc']:.2f}{iv} (cluster bootstrap over {mixed['n_clusters']} stage-1 models; "
            f"random-intercept SD {mixed['sd_intercept']:.2f} on the logit scale)")
