"""The report's first screen: three plain answers, one line each, and one figure (issue 21 §3.8).

A researcher opening ``report.html`` first reads, before any statistic:

1. did reward-seeking (RS) spread more with more environments N (the share of runs RS won, at the
   fewest against the most environments, per prior p0);
2. where it took over (the observed critical diversity N* as a bracket or a point, in words);
3. did the prediction frozen before the sweep hold (cells it called on the right side of 50%, its N*
   beside the observed one, and whether its Brier score beat, lost to, or did not differ from the
   baselines).

Then one figure: each sweep run's final RS share against N with the frozen prediction's band. The
statistics behind every answer (Firth logistic, bootstrap intervals, scores, hashes) follow below it
in the report, unchanged. Everything is read from ``summary.json``'s ``cells``, ``observed_n_star``,
``predicted_n_star``, ``scores`` and ``scaling`` entries and the outcomes table
(:func:`physrl.experiment.scaling.outcomes_table`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import words  # noqa: E402
from .report import Section, figure_to_data_uri  # noqa: E402

QUESTIONS = ("Did RS spread more with more environments?", "Where did it take over?",
             "Did the frozen prediction hold?")


def _cells(summary: dict) -> dict[float, list[dict]]:
    """The primary budget's sweep cells by p0, each sorted by N."""
    budget = summary["scaling"]["budget"]
    by_p0: dict[float, list[dict]] = {}
    for c in summary["cells"]:
        if c["budget"] == budget:
            by_p0.setdefault(c["p0"], []).append(c)
    return {p0: sorted(cs, key=lambda c: c["n_envs"]) for p0, cs in sorted(by_p0.items())}


def _ns(values) -> str:
    """``1, 2 and 4``."""
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


def _one_run_each(cs: list[dict]) -> str:
    """One run per N: which N RS took over at and which it died out at, smallest N first."""
    won = [c["n_envs"] for c in cs if c["wins"]]
    lost = [c["n_envs"] for c in cs if not c["wins"]]
    parts = [(won[0], f"took over at N = {_ns(won)}")] if won else []
    parts += [(lost[0], f"died out at N = {_ns(lost)}")] if lost else []
    return "RS " + " and ".join(text for _, text in sorted(parts))


def spread_line(summary: dict) -> str:
    """Answer 1: "Yes" / "No" / "At some priors", by whether the share of runs RS won is higher at the
    largest N swept than at the smallest, per p0; with one run per N, where RS took over and died out."""
    cells = _cells(summary)
    rose = {p0: cs[-1]["wins"] / cs[-1]["n"] > cs[0]["wins"] / cs[0]["n"] for p0, cs in cells.items() if len(cs) > 1}
    if not rose:
        return "Not measured: one N per prior, nothing to compare."
    answer = "Yes" if all(rose.values()) else "No" if not any(rose.values()) else "At some priors"
    one_run = max(c["n"] for cs in cells.values() for c in cs) == 1
    if one_run:
        parts = [(f"at p0 = {p0:g}, " if len(cells) > 1 else "") + _one_run_each(cs) for p0, cs in cells.items()]
        where = f", at p0 = {next(iter(cells)):g}" if len(cells) == 1 else ""
        return f"{answer}{where}: {'; '.join(parts)} (one run per N, so a hint only)."
    parts = [f"{cs[0]['wins']}/{cs[0]['n']} at N = {cs[0]['n_envs']} but {cs[-1]['wins']}/{cs[-1]['n']} at "
             f"N = {cs[-1]['n_envs']}" + (f" (p0 = {p0:g})" if len(cells) > 1 else "")
             for p0, cs in cells.items() if len(cs) > 1]
    where = f", at p0 = {next(iter(cells)):g}" if len(cells) == 1 else ""
    parts[0] = parts[0].replace(" at N", " runs at N", 1)
    return f"{answer}{where}: RS took over in {', '.join(parts)}."


def _takeover(est: dict, n_range: tuple[float, float] | None) -> str:
    status, bracket, n_star = est.get("status"), est.get("bracket"), est.get("n_star")
    if status == "separated" and bracket:
        return f"between N = {bracket[0]} and N = {bracket[1]}"
    if status in ("no_wins", "above_grid") and bracket:
        return f"not within the N swept (RS lost in most runs up to N = {bracket[0]})"
    if status in ("all_wins", "below_grid") and bracket:
        return f"already at the fewest environments swept (N = {bracket[1]})"
    if status == "no_increase" or n_star is None:
        return "nowhere clear (winning did not become likelier with N)"
    if (est.get("n_seeds") or 0) <= 1:
        return f"near N = {words.number(n_star, 2)} (one seed)"
    lo, hi = est.get("interval_95") or (None, None)
    if lo is None and hi is None:
        return f"near N = {words.number(n_star, 2)}"
    small, large = n_range if n_range else (None, None)
    low = f"below {small}" if not lo else words.number(lo, 2)  # 0 / None: beyond the swept N
    high = f"above {large}" if hi is None else words.number(hi, 2)
    return f"near N = {words.number(n_star, 2)} (95% interval {low} to {high})"


def takeover_line(summary: dict) -> str:
    """Answer 2: where the observed N* lies, per p0, in words (the bracket where the seeds separate)."""
    grid = summary.get("scaling", {}).get("design", {}).get("grid", {})
    parts = []
    for key, est in sorted(summary["observed_n_star"].items(), key=lambda kv: float(kv[0])):
        ns = next((v for k, v in grid.items() if math.isclose(float(k), float(key), rel_tol=1e-9)), None)
        parts.append((key, _takeover(est, (min(ns), max(ns)) if ns else None)))
    if len(parts) == 1:
        key, text = parts[0]
        return f"{text[0].upper()}{text[1:]}, at p0 = {key}."
    text = "; ".join(f"at p0 = {key}, {text}" for key, text in parts)
    return f"{text[0].upper()}{text[1:]}."


def _called(summary: dict) -> tuple[int, int]:
    """Cells whose frozen P(RS wins) lies on the same side of 50% as the observed share of runs won."""
    cells = [c for cs in _cells(summary).values() for c in cs]
    right = sum((c["p_win_predicted"] > 0.5) == (c["wins"] / c["n"] > 0.5) for c in cells)
    return right, len(cells)


#: what the report calls each baseline in plain words, and whether a forecaster could have had it before the sweep
BASELINE_WORDS = {"base_rate": ("guessing the base rate (known only in hindsight)", False),
                  "median_n": ("'RS wins iff N ≥ the median N'", True),
                  "half": ("the constant 0.5", True),
                  "calibration": ("a logistic in log N fitted to the calibration runs", True)}


def _baselines(scores: dict) -> dict[str, bool]:
    """Baseline -> prospective, for those scored (summary.json's ``scores.baselines`` where present; an older
    summary scored the hindsight base rate and the median-N rule)."""
    known = scores.get("baselines") or {b: {"prospective": BASELINE_WORDS[b][1]} for b in ("base_rate", "median_n")}
    return {b: bool(v.get("prospective")) for b, v in known.items()
            if b in BASELINE_WORDS and scores.get(f"brier_{b}") is not None}


def forecast_line(summary: dict) -> str:
    """Answer 3 on the Brier score: "Yes" (the frozen P(RS wins) beat every prospective baseline and lost to
    none), "No" (it lost to a baseline, the hindsight base rate included) or "Not measurably" (otherwise: what
    it beat is named, the rest had 95% intervals of the difference holding 0), with the (p0, N) points where it
    called the winner right and, for one prior, its N* beside the observed one (issue 18.3: prospective
    baselines are the ones a forecaster could have had)."""
    if not summary.get("fit_converged_for_predictions", True):
        return "No claim: the calibration fit behind the frozen prediction did not converge."
    s = summary["scores"]
    prospective = _baselines(s)
    intervals = s.get("interval_95") or {}
    # a difference without its bootstrap interval (an older summary) is no evidence either way
    verdicts = {b: words.brier_verdict(s, b) if intervals.get(f"brier_minus_{b}") else "did not differ from"
                for b in prospective}
    beat = [b for b, v in verdicts.items() if v == "beat"]
    lost = [b for b, v in verdicts.items() if v == "lost to"]
    answer = ("No" if lost else
              "Yes" if all(verdicts[b] == "beat" for b, p in prospective.items() if p) else "Not measurably")
    right, total = _called(summary)
    one_p0 = len(summary["observed_n_star"]) == 1
    text = f"it called the winner at {right} of {total} " + ("values of N" if one_p0 else "(p0, N) points")
    if one_p0:
        key, est = next(iter(summary["observed_n_star"].items()))
        p = summary["predicted_n_star"].get(key) or {}
        if p:
            observed = _takeover(est, None)
            text += f" and put N* at {words.predicted_value(p.get('n_star'), n_max=p.get('n_max'))} " \
                    f"(observed: {observed})"
    named = lambda bs: " and ".join(BASELINE_WORDS[b][0] for b in bs)  # noqa: E731
    if answer == "Yes":
        how = "and beat every simple baseline a forecaster could have had on its score"
    elif answer == "No":
        how = f"but scored worse than {named(lost)}"
    elif beat:
        how = f"beat {named(beat)} but was no better than the other simple guesses over {s['n_events']} runs"
    else:
        how = f"no better than simple guesses over {s['n_events']} runs"
    return f"{answer}: {text}, {how}."


def plain_lines(summary: dict) -> list[tuple[str, str]]:
    """The three (question, answer) pairs of the report's first screen, answers in plain words."""
    return list(zip(QUESTIONS, (spread_line(summary), takeover_line(summary), forecast_line(summary))))


def final_share_figure(summary: dict, outcomes: pd.DataFrame, path: Path) -> tuple[str, str]:
    """Each sweep run's final RS share (trained environments, at the primary budget) against N, one panel
    per p0, with the frozen prediction (its point-estimate final share and the 95% band of simulated
    runs) and the threshold above which RS won. Returns (data URI, caption)."""
    budget, threshold = summary["scaling"]["budget"], summary["threshold"]
    cells = _cells(summary)
    fig, axes = plt.subplots(1, len(cells), figsize=(max(4.3 * len(cells), 5.2), 3.5), squeeze=False,
                             sharey=True)
    at = outcomes[outcomes.budget == budget]
    for ax, (p0, cs) in zip(axes[0], cells.items()):
        ns = np.array([c["n_envs"] for c in cs], float)
        lo = np.array([c["final_p_band_95"][0] for c in cs], float)
        hi = np.array([c["final_p_band_95"][1] for c in cs], float)
        ax.fill_between(ns, lo, hi, color="tab:red", alpha=0.15, lw=0, label="frozen prediction: 95% of runs")
        ax.plot(ns, [c["final_p_predicted"] for c in cs], "-", color="tab:red", lw=1.5,
                label="frozen prediction: the fit's final share")
        mine = at[np.isclose(at.p0, p0)]
        gap = float(np.diff(np.log(ns)).min()) if len(ns) > 1 else 0.5  # closest swept N, log scale
        for n, g in mine.groupby("n_envs"):  # a cell's seeds side by side, within a third of that gap
            k = len(g)
            offsets = np.exp(gap / 3 * (np.arange(k) / max(k - 1, 1) - 0.5)) if k > 1 else np.ones(1)
            won = g.win.to_numpy(bool)
            ax.scatter(n * offsets[won], g.final_p.to_numpy(float)[won], s=28, color="black", zorder=3,
                       label="a run RS won")
            ax.scatter(n * offsets[~won], g.final_p.to_numpy(float)[~won], s=28, facecolor="white",
                       edgecolor="black", zorder=3, label="a run RS lost")
        ax.axhline(threshold, color="grey", ls="--", lw=0.9, label=f"threshold {threshold:g}")
        ax.set_xscale("log")
        ax.set_xticks(ns)
        ax.set_xticklabels([f"{int(n)}" for n in ns])
        ax.minorticks_off()
        ax.set_ylim(-0.04, 1.04)
        ax.grid(alpha=0.3)
        ax.set_title(f"prior p0 = {p0:g}", fontsize=10)
        ax.set_xlabel("environments N")
    axes[0, 0].set_ylabel(f"final RS share ({budget} steps)")
    legend = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    caption = (f"Each dot is one sweep run: its RS share on the trained environments after {budget} optimizer "
               f"steps (filled: above {threshold:g}, RS won; open: RS lost). Red: the prediction frozen before the "
               "sweep (line: the calibration fit's final share; band: 95% of simulated runs).")
    return figure_to_data_uri(fig, path), caption


def first_screen(summary: dict, outcomes: pd.DataFrame, figs: Path) -> Section:
    """The report's opening section: the three plain answers, then :func:`final_share_figure`."""
    items = [f"<b>{html.escape(q)}</b> {html.escape(a)}" for q, a in plain_lines(summary)]
    uri, caption = final_share_figure(summary, outcomes, figs / "final_share.png")
    return Section("In short", items=items, figures=[(uri, caption)], css_class="first", heading=False)
