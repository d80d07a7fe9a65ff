"""The scaling law's part of the report: verdict, P(RS wins) against N, N* against p0,
and the frozen predictions against the outcomes (matplotlib, Agg backend)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import scaling as _scaling  # noqa: E402
from . import words  # noqa: E402
from .report import Section, figure_to_data_uri  # noqa: E402
from .words import brier_verdict, score_difference, score_with_interval  # noqa: E402


def _fmt(v, digits: int = 3) -> str:
    return words.number(v, digits)


def _n_range(summary: dict, p0: float) -> tuple[float, float] | None:
    """Smallest and largest N swept at ``p0`` (from the summary's design), or None."""
    grid = summary.get("scaling", {}).get("design", {}).get("grid", {})
    ns = next((v for k, v in grid.items() if math.isclose(float(k), p0, rel_tol=1e-9)), None)
    return (min(ns), max(ns)) if ns else None


def _short_headline(est) -> str:
    """Figure-title form of the observed N*: ``N* = 5.42`` when the logistic point stands, else
    ``N* in (4, 8]`` / ``N* > 8`` / ``N* ≈ 5.4``."""
    entry = est.to_dict() if hasattr(est, "to_dict") else est
    head = words.observed_headline(entry)
    if entry["status"] == "ok" and entry["n_seeds"] > 1:
        return f"N* = {_fmt(entry['n_star'])}"
    return f"N* {head}"


def win_probability_figure(scaling: dict, frozen: dict, budgets: list[int], path: Path) -> str:
    """Rows: step budgets; columns: p0. Observed P(RS wins) per N (Jeffreys 95%), the Firth
    logistic fit, its N* with the bootstrap interval, and the frozen predicted P(RS wins)."""
    p0s = scaling["by_budget"][budgets[-1]]["p0"]
    legend_in = 0.55 if len(p0s) == 1 else 0.35  # the legend's band below the panels (two rows or one), inches
    height = 2.9 * len(budgets) + legend_in
    fig, axes = plt.subplots(len(budgets), len(p0s), figsize=(max(3.9 * len(p0s), 4.6), height),
                             squeeze=False, sharey=True)
    for i, b in enumerate(budgets):
        part = scaling["by_budget"][b]
        table = part["win_table"]
        for j, p0 in enumerate(p0s):
            ax = axes[i, j]
            rows = table[np.isclose(table.p0, p0)].sort_values("n_envs")
            est = next(e for e in part["estimates"] if np.isclose(e.p0, p0))
            ns = rows.n_envs.to_numpy(float)
            grid = np.geomspace(ns.min() / 1.3, ns.max() * 1.3, 200)
            ax.plot(grid, _scaling.logistic_curve(est, grid), color="black", lw=1.2, label="logistic fit (Firth)")
            pred = [c for c in frozen["cells"] if c["budget"] == b and np.isclose(c["p0"], p0)]
            pred.sort(key=lambda c: c["n_envs"])
            ax.plot([c["n_envs"] for c in pred], [c["p_win"] for c in pred], "D--", color="tab:red", ms=4,
                    lw=1, label="frozen prediction")
            ax.errorbar(ns, rows.p_win, yerr=[rows.p_win - rows.lower, rows.upper - rows.p_win], fmt="o",
                        color="tab:blue", ms=5, capsize=2, label="observed (Jeffreys 95%)")
            if est.status == "separated" and est.bracket:  # the data say only N* in (lost, won]
                ax.errorbar([math.sqrt(est.bracket[0] * est.bracket[1])], [0.5],
                            xerr=[[math.sqrt(est.bracket[0] * est.bracket[1]) - est.bracket[0]],
                                  [est.bracket[1] - math.sqrt(est.bracket[0] * est.bracket[1])]],
                            fmt="none", ecolor="black", elinewidth=2, capsize=5,
                            label="N* bracket (largest N lost, smallest N won]")
            elif est.n_star is not None:
                ax.axvline(est.n_star, color="black", ls=":", lw=1)
                lo, hi = est.interval_95
                if lo is not None or hi is not None:
                    ax.axvspan(lo if lo else grid[0], hi if hi else grid[-1], color="grey", alpha=0.15, lw=0)
            ax.set_xscale("log")
            ax.set_xticks(ns)
            ax.set_xticklabels([f"{int(n)}" for n in ns], fontsize=8)
            ax.minorticks_off()
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.set_title(f"p0 = {p0:g}, budget {b} steps: {_short_headline(est)}", fontsize=9)
            if i == len(budgets) - 1:
                ax.set_xlabel("diversity N (trained environments)")
            if j == 0:
                ax.set_ylabel("P(RS wins)")
    legend = {}  # every panel's entries once (the bracket is drawn only where seeds separate)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 2 if len(p0s) == 1 else 4),
               fontsize=8, frameon=False)  # below the panels: inside, it covered the error bars
    return figure_to_data_uri(fig, path)


PRED_OFFSET = 1.06  # frozen predictions drawn this factor right of the observed point at the same p0


def n_star_law_figure(summary: dict, scaling: dict, frozen: dict, budget: int, path: Path) -> tuple[str, str]:
    """N* against p0 on log-log axes, drawing only what exists; needs two or more p0.

    Observed N* per p0: the logistic 50% point with its bootstrap 95% interval
    (an arrow only where the interval's end lies beyond the grid), or, where
    the seeds separate perfectly, the bracket (largest N that lost, smallest N
    that won] as an interval bar; bounds beyond the grid as open triangles.
    The frozen prediction: a line with its 95% band over parameter draws
    (points with bars where fewer than two p0 have a value). The observed law
    and the post's slope −1 only when two or more p0 have a finite N*.

    Returns
    -------
    (data URI, caption)
        The caption names exactly what was drawn.
    """
    part = scaling["by_budget"][budget]
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    drawn = []
    pred = sorted((c for c in frozen["n_star"] if c["budget"] == budget), key=lambda c: c["p0"])
    pp = np.array([c["p0"] for c in pred])
    pn = np.array([np.nan if c["n_star"] is None else c["n_star"] for c in pred], float)
    plo = np.array([np.nan if c["interval_95"][0] is None else c["interval_95"][0] for c in pred], float)
    phi = np.array([np.nan if c["interval_95"][1] is None else c["interval_95"][1] for c in pred], float)
    top = max(c["n_max"] for c in pred) if pred else 64
    ok = np.isfinite(pn)
    slope = summary["scaling"]["by_budget"][str(budget)]["predicted_slope"]["value"]
    if ok.sum() >= 2:
        ax.plot(pp[ok], pn[ok], "-", color="tab:red", lw=1.5,
                label="frozen prediction (continuous N)" + (f", slope {_fmt(slope)}" if slope is not None else ""))
        band = np.isfinite(plo)
        if band.sum() >= 2:
            ax.fill_between(pp[band], plo[band], np.where(np.isfinite(phi), phi, top)[band], color="tab:red",
                            alpha=0.18, lw=0, label=f"its 95% band over parameter draws (open top: > {top})")
        drawn.append("red line: the frozen prediction on continuous N, with its 95% band over parameter draws "
                     f"(cut at {top} where draws lie above the searched N)")
    elif ok.any():
        for i in np.flatnonzero(ok):
            lo, hi = (plo[i] if np.isfinite(plo[i]) else pn[i]), (phi[i] if np.isfinite(phi[i]) else pn[i])
            if not np.isfinite(phi[i]):  # open above the searched N: an arrow, not a capped bar
                ax.annotate("", xy=(pp[i] * PRED_OFFSET, top), xytext=(pp[i] * PRED_OFFSET, pn[i]),
                            arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.5))
            ax.errorbar([pp[i] * PRED_OFFSET], [pn[i]], yerr=[[pn[i] - lo], [hi - pn[i]]], fmt="D", color="tab:red", ms=6,
                        capsize=3, label="frozen prediction (95% over parameter draws)" if i == np.flatnonzero(ok)[0]
                        else None)
        drawn.append("red diamonds: the frozen prediction with its 95% interval over parameter draws")
    above = np.flatnonzero(~ok)
    if above.size and ok.sum() < 2:  # no red line: say where the prediction is instead of leaving it out
        for i in above:
            lo = plo[i] if np.isfinite(plo[i]) else top
            ax.plot([pp[i] * PRED_OFFSET] * 2, [lo, top], "-", color="tab:red", lw=1.5)
            ax.plot([pp[i] * PRED_OFFSET], [top], "^", color="tab:red", ms=8,
                    label=f"frozen prediction: N* > {top} (its 95% interval's lower end below)"
                    if i == above[0] else None)
        drawn.append(f"red triangles at {top}: a frozen prediction above the largest N searched ({top}), with a "
                     "bar down to its 95% interval's lower end")
    finite, labelled = [], set()

    def once(label):
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for est in part["estimates"]:
        lo, hi = est.interval_95
        if est.status == "separated" and est.bracket:
            b_lo, b_hi = est.bracket
            ax.plot([est.p0, est.p0], [b_lo, b_hi], "-", color="black", lw=2.2, solid_capstyle="butt",
                    label=once("observed: N* in (largest N lost, smallest N won]"))
            ax.plot([est.p0] * 2, [b_lo, b_hi], "_", color="black", ms=12, mew=2)
            if est.n_star is not None:
                finite.append((est.p0, est.n_star))
                ax.plot([est.p0], [est.n_star], "s", color="black", mfc="white", ms=6,
                        label=once("its logistic 50% point (inside the bracket)"))
        elif est.n_star is not None:
            finite.append((est.p0, est.n_star))
            yerr = [[est.n_star - (lo if lo else est.n_star)], [(hi if hi else est.n_star) - est.n_star]]
            ax.errorbar([est.p0], [est.n_star], yerr=yerr, fmt="ks", ms=7, capsize=3,
                        label=once("observed N* (logistic 50% point, bootstrap 95%)"))
            if hi is None:  # the bootstrap's upper end lies beyond the grid
                ax.annotate("", xy=(est.p0, est.n_star * 3), xytext=(est.p0, est.n_star),
                            arrowprops=dict(arrowstyle="->", color="black"))
            if not lo:  # ... and its lower end below it (0 or missing: "< smallest N")
                ax.annotate("", xy=(est.p0, est.n_star / 3), xytext=(est.p0, est.n_star),
                            arrowprops=dict(arrowstyle="->", color="black"))
        elif est.status in ("no_wins", "above_grid"):
            n_max = est.bracket[0]
            ax.plot([est.p0], [n_max], "k^", mfc="white", ms=8, label=once("observed: N* > largest N swept"))
        elif est.status in ("all_wins", "below_grid"):
            n_min = est.bracket[1]
            ax.plot([est.p0], [n_min], "kv", mfc="white", ms=8, label=once("observed: N* ≤ smallest N swept"))
    drawn.append("black: the observed N* (squares: logistic 50% point with its bootstrap 95% interval; bars: the "
                 "bracket where the seeds separate perfectly; open triangles: bounds beyond the swept N)")
    obs_slope = summary["scaling"]["by_budget"][str(budget)]["observed_slope"]
    if len(finite) >= 2:
        x = np.log([f[0] for f in finite])
        y = np.log([f[1] for f in finite])
        xs = np.geomspace(min(pp.min() if pp.size else 1, np.exp(x.min())) / 1.2, max(pp.max() if pp.size
                          else 1, np.exp(x.max())) * 1.2, 50)
        if obs_slope["value"] is not None:
            ax.plot(xs, np.exp(y.mean() + obs_slope["value"] * (np.log(xs) - x.mean())), "k-", lw=1,
                    label=f"observed law, slope {_fmt(obs_slope['value'])}")
            drawn.append("black line: the observed law")
        ax.plot(xs, np.exp(y.mean() + _scaling.CANONICAL_SLOPE * (np.log(xs) - x.mean())), color="grey",
                ls="--", lw=1.2, label="the post's law, slope −1 (through the observed mean)")
        drawn.append("grey dashed: the post's slope −1 drawn through the observed points' mean (only the slope "
                     "is the post's claim)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(pp if pp.size else ax.get_xticks())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    lo_y, hi_y = ax.get_ylim()
    ax.set_yticks([2.0 ** k for k in range(-2, 12) if lo_y <= 2.0 ** k <= hi_y])
    ax.set_ylim(lo_y, hi_y)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("prior p0")
    ax.set_ylabel(f"critical diversity N* (budget {budget} steps)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    body = "; ".join(drawn)
    caption = f"Log-log axes, budget {budget} steps. {body[0].upper()}{body[1:]}."
    return figure_to_data_uri(fig, path), caption


def _slope_sentence(name: str, s: dict) -> str:
    if s.get("value") is None:
        return f"{name} slope: not defined (fewer than two p0 with a finite N*)"
    lo, hi = s["interval_95"]
    iv = "interval not computed" if lo is None else f"95% interval [{_fmt(lo)}, {_fmt(hi)}]"
    und = s.get("share_undefined")
    extra = f"; {und:.0%} of replicates had no slope" if und else ""
    cens = s.get("share_censored")
    if cens is not None:
        extra += (f"; every replicate enters, {cens:.0%} with an N* beyond the grid censored at its edge"
                  if cens else "; every replicate enters, none censored")
    return f"{name} slope <b>{_fmt(s['value'])}</b> ({iv}{extra})"


def _status_words(est: dict) -> str:
    """The verdict's red flag for an observed N* that is a bound or undefined (``observed_basis`` words
    every status; these three are also flagged)."""
    status, bracket = est["status"], est.get("bracket")
    if status == "below_grid":
        return (f" (<span class='bad'>RS already won in most seeds at the smallest N swept: N* < {bracket[1]}, "
                "below the grid</span>)")
    if status == "above_grid":
        return f" (<span class='bad'>RS lost in most seeds at the largest N swept: N* > {bracket[0]}</span>)"
    if status == "no_increase":
        return " (<span class='bad'>winning did not become likelier with N: no N* defined</span>)"
    return ""


def verdict(summary: dict) -> list[str]:
    """Plain-words verdict on the scaling law, the frozen predictions and their scores."""
    sc = summary["scaling"]
    obs, pred = sc["observed_slope"], sc["predicted_slope"]
    lines = [f"Budget {sc['budget']} optimizer steps, p0 ∈ {{{', '.join(f'{p:g}' for p in sc['p0'])}}}, "
             f"{words.plural(len(sc['seeds']), 'seed')} per cell (sweep {'seed' if len(sc['seeds']) == 1 else 'seeds'} "
             f"{', '.join(str(x) for x in sc['seeds'])}; calibration "
             f"{'seed' if len(sc['calibration_seeds']) == 1 else 'seeds'} "
             f"{', '.join(str(x) for x in sc['calibration_seeds'])}"
             f"{', reused in the sweep' if sc['calibration_seeds_reused_in_sweep'] else ''})."]
    rep = summary.get("replication")
    if rep:
        lines.append(f"The unit of replication is the <b>{html.escape(rep['unit'])}</b> ({rep['clusters']} of them: "
                     "every N of one (p0, seed) starts from one pretrained model, named by its key in each run's "
                     "manifest); every interval below resamples whole stage-1 models within each p0. How much of "
                     "winning they carry, from P(RS wins | N, p0) with a random intercept per stage-1 model: "
                     f"{html.escape(words.icc_text(rep.get('random_intercept')))}.")
    lo, hi = obs["interval_95"]
    one_p0 = len(sc["p0"]) < 2
    if one_p0:  # a design choice (the demo), not a failure of the law
        lines.append(f"One prior, p0 = {', '.join(f'{p:g}' for p in sc['p0'])}, by design: this experiment "
                     "measures N* at that prior and scores the frozen forecasts; it measures no slope of log N* "
                     "on log p0 (that needs two or more p0: <code>physrl experiment scaling</code> sweeps three), "
                     "so it neither confirms nor refutes the post's law.")
    else:
        lines.append(_slope_sentence("Observed", obs) + "; " + _slope_sentence("predicted", pred)
                     + f"; the post's canonical slope {sc['canonical_slope']:g}.")
    censored = [p for p in sc["p0"] if p not in obs.get("p0_used", sc["p0"])]
    if one_p0:
        pass
    elif censored and obs["value"] is not None:
        lines.append(f"<span class='bad'>N* lies outside the swept grid at p0 = "
                     f"{', '.join(f'{p:g}' for p in censored)}</span>: the observed slope uses only "
                     f"{', '.join(f'{p:g}' for p in obs['p0_used'])}.")
    if not one_p0 and (obs.get("share_censored") or 0) > 0.2:
        lines.append(f"<span class='bad'>{obs['share_censored']:.0%} of the bootstrap replicates had an N* beyond "
                     "the grid</span>, entered at the grid's edge: the interval's ends there are bounds.")
    if not one_p0 and (obs.get("share_undefined") or 0) > 0.2:
        lines.append(f"<span class='bad'>{obs['share_undefined']:.0%} of the bootstrap replicates had no slope</span> "
                     "(a p0 whose resampled N* fell outside the grid or was undefined); the interval is over the "
                     "rest only and does not measure the law.")
    if one_p0:
        pass
    elif obs["value"] is None:
        lines.append("<span class='bad'>The organisms give no scaling law here:</span> N* was not finite at "
                     "two or more p0 (see the table below); the law is neither confirmed nor refuted.")
    elif lo is None or hi is None:
        lines.append("The observed slope has no interval (one seed or undefined replicates).")
    elif censored or (obs.get("share_undefined") or 0) > 0.2:
        lines.append("Reading: <span class='bad'>this design does not measure the slope</span>; compare the "
                     "per-p0 N* below, not the slope.")
    else:
        contains = lo <= sc["canonical_slope"] <= hi
        falls = hi < 0
        reading = ("consistent with the post's −1" if contains else "<span class='bad'>not consistent with the "
                   "post's −1</span>")
        trend = ("N* falls as p0 rises (the whole interval is below 0)" if falls else
                 "<span class='bad'>the interval includes 0 or positive slopes: no clear fall of N* with p0"
                 "</span>")
        lines.append(f"Reading: {trend}; the observed slope is {reading}.")
        if pred.get("value") is not None and pred["interval_95"][0] is not None:
            overlap = not (pred["interval_95"][1] < lo or pred["interval_95"][0] > hi)
            lines.append("The calibration fit's predicted slope " + ("overlaps" if overlap else
                         "<span class='bad'>does not overlap</span>") + " the observed interval.")
    seen = {k: e for k, e in summary["observed_n_star"].items()}
    if len(seen) >= 2:
        keys = sorted(seen, key=float)
        ratio = float(keys[-1]) / float(keys[0])

        def say(e):
            head = words.observed_headline(e)
            return head.split(", 95%")[0]  # the point or the bracket, without its interval

        lines.append(f"In plain words: across a {ratio:g}-fold range of p0 ({keys[0]} to {keys[-1]}) the observed N* "
                     f"reads {', '.join(say(seen[k]) for k in keys)}; the post's slope −1 would have N* fall "
                     f"{ratio:g}-fold over that range.")
    for key, est in summary["observed_n_star"].items():
        p = summary["predicted_n_star"].get(key, {})
        head = words.observed_headline(est, _n_range(summary, float(key)))
        flag = _status_words(est)
        frozen_txt = ("not computed" if not p else
                      words.predicted_headline(p.get("n_star"), p.get("interval_95"), n_max=p.get("n_max"), level=95))
        lines.append(f"p0 = {key}: observed N* <b>{html.escape(head)}</b> ({html.escape(words.observed_basis(est))})"
                     f"{flag}; frozen prediction on continuous N <b>{html.escape(frozen_txt)}</b> (over parameter "
                     "draws, written before the sweep).")
    lines.append(score_sentence(summary["scores"]))
    lines.append("Two verdicts, two names: " + html.escape(words.agreement_pair(summary.get("agreement"))) + ".")
    reg = summary["preregistration"]
    ok = reg["sweep_logs_read_after"]
    lines.append(f"Predictions frozen at {html.escape(reg['written_at'])} (sha256 {reg['sha256'][:16]}…); "
                 + ("every sweep run started after that." if ok else
                    f"<span class='bad'>sweep runs started before the freeze: {', '.join(reg['late_runs'])}</span>"))
    drift = summary.get("fit_matches_frozen") or {}
    if drift.get("matches") is False:
        names = ", ".join(html.escape(n) for n in drift["differing"])
        lines.append("<span class='bad'>This rerun's calibration fit differs from the fit that made the frozen "
                     f"predictions</span> ({names}): the fitted parameters and in-sample plots below are the "
                     "new fit's, the forecasts scored above are the frozen ones (predictions.json).")
    if not summary.get("fit_converged_for_predictions", True):
        lines.append("<span class='bad'>The calibration fit behind the frozen predictions did not converge</span>; "
                     "its predictions are scored as frozen, but claim no law.")
    return lines


def frozen_vs_outcome_table(summary: dict, outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, p0, N): frozen forecast against what the seeds did."""
    rows = []
    for c in summary["cells"]:
        at = outcomes[(outcomes.budget == c["budget"]) & np.isclose(outcomes.p0, c["p0"])
                      & (outcomes.n_envs == c["n_envs"])].sort_values("seed")
        lo, hi = c["final_p_band_95"]
        rows.append({"budget": c["budget"], "p0": c["p0"], "N": c["n_envs"],
                     "predicted P(win)": c["p_win_predicted"],
                     "observed wins": f"{c['wins']}/{c['n']}",
                     "observed P(win) 95%": f"[{c['interval_95'][0]:.2f}, {c['interval_95'][1]:.2f}]",
                     "predicted final share [95% band]": f"{c['final_p_predicted']:.2f} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]",
                     "observed final shares (per seed)": " ".join(f"{v:.2f}" for v in at.final_p)})
    return pd.DataFrame(rows)


def score_sentence(s: dict) -> str:
    """The verdict's sentence on the frozen forecasts' scores, with bootstrap 95% intervals.

    "Beat" / "lost to" a baseline only when the 95% interval of the Brier
    difference excludes 0; otherwise "did not differ from" it. Every baseline
    is named with when it was available: the base rate in hindsight only, the
    others prospectively.
    """
    boot = s.get("bootstrap") or {}
    unit = (f"; 95% intervals: bootstrap over {boot['units']} {boot['unit']}{'s' if boot['units'] != 1 else ''}"
            f"{' within each p0' if boot.get('strata') else ''}" if boot else "")
    one = score_with_interval
    names = [b for b in words.BASELINE_NAMES if s.get(f"brier_{b}") is not None]
    text = (f"Frozen P(RS wins) forecasts over {s['n_events']} sweep run{'s' if s['n_events'] != 1 else ''}: "
            f"Brier <b>{one(s, 'brier')}</b> ("
            + ", ".join(f"{words.BASELINE_NAMES[b]} {one(s, f'brier_{b}')}" for b in names)
            + f"); log loss <b>{one(s, 'log_loss')}</b> ("
            + ", ".join(f"{words.BASELINE_NAMES[b]} {one(s, f'log_loss_{b}')}" for b in names)
            + f"){unit}. The base rate is the sweep's own win share, known only in hindsight; the prospective "
              "baselines were available before the sweep (the design; the calibration runs alone). ")
    for baseline in names:
        word = brier_verdict(s, baseline)
        shown = "<span class='bad'>lost to</span>" if word == "lost to" else word
        text += (f"Against the {words.BASELINE_NAMES[baseline]} the forecasts <b>{shown}</b> it (Brier difference "
                 f"{score_difference(s, 'brier', baseline)}). ")
    return text.strip()


def scores_table(summary: dict, kind: str = "brier", part: str = "scores") -> pd.DataFrame:
    """Per budget, one score (``kind``: "brier" or "log_loss"): with ``part="scores"`` the score with its
    bootstrap 95% interval for the frozen forecasts and every baseline (named hindsight or prospective); with
    ``part="differences"`` the frozen forecasts' difference to each baseline (negative: the forecasts did
    better). One table per score and part keeps each within the page's width (four baselines made one table
    of both 1.6x wider than the page)."""
    name = {"brier": "Brier", "log_loss": "log loss"}[kind]
    rows = []
    for b, s in summary["scores"]["by_budget"].items():
        row = {"budget": int(b), "runs": s["n_events"]}
        scored = [base for base in words.BASELINE_NAMES if s.get(f"{kind}_{base}") is not None]
        if part == "scores":
            row[f"{name}: frozen"] = score_with_interval(s, kind)
            row.update({words.BASELINE_NAMES[base]: score_with_interval(s, f"{kind}_{base}") for base in scored})
        else:
            row.update({f"frozen − {words.BASELINE_NAMES[base].split(' (')[0]}": score_difference(s, kind, base)
                        for base in scored})
        rows.append(row)
    return pd.DataFrame(rows)


def n_star_table(summary: dict, scaling: dict) -> pd.DataFrame:
    """Per budget and p0: the observed N* as quoted (bracket or logistic point), the logistic point
    itself, and the frozen prediction on continuous N, every interval end in words."""
    rows = []
    frozen = {(round(c["p0"], 12), c["budget"]): c for c in summary.get("_frozen_n_star", [])}
    for b, part in scaling["by_budget"].items():
        for est in part["estimates"]:
            f = frozen.get((round(est.p0, 12), b), {})
            n_max = f.get("n_max")
            entry = est.to_dict()
            quoted = words.observed_headline(entry).split(", 95%")[0]
            if entry["status"] == "separated" and est.n_star is not None:
                quoted += f" (logistic {_fmt(est.n_star)})"
            rows.append({"budget": b, "p0": est.p0, "observed N*": quoted,
                         "bootstrap 95%": words.observed_interval(est.interval_95, _n_range(summary, est.p0)),
                         "status": est.status, "seeds": est.n_seeds,
                         "frozen predicted N*": words.predicted_value(f.get("n_star"), n_max=n_max),
                         "its 95%": words.predicted_interval(f.get("interval_95"), n_max=n_max)})
    return pd.DataFrame(rows)


def _law_section(summary: dict, scaling: dict, frozen: dict, primary: int, figs: Path) -> Section:
    """N* against p0: the figure with two or more p0, a sentence with one (no line to draw)."""
    title = "The scaling law: N* against p0"
    p0s = summary["scaling"]["p0"]
    if len(p0s) >= 2:
        uri, caption = n_star_law_figure(summary, scaling, frozen, primary, figs / "n_star_law.png")
        return Section(title, paragraphs=[html.escape(caption)], figures=[(uri, "N* vs p0, log-log")])
    (figs / "n_star_law.png").unlink(missing_ok=True)  # a stale figure from a larger design would mislead
    key = f"{p0s[0]:g}" if p0s else next(iter(summary["observed_n_star"]), "")
    est = summary["observed_n_star"].get(key, {})
    p = summary["predicted_n_star"].get(key, {})
    obs = words.observed_headline(est, _n_range(summary, float(key))) if est else "not measured"
    pred = (words.predicted_headline(p.get("n_star"), p.get("interval_95"), n_max=p.get("n_max"), level=95)
            if p else "not computed")
    return Section(title, paragraphs=[
        f"One prior in this design (p0 = {html.escape(key)}): there is no line of N* against p0 to draw, so no "
        f"figure. At this prior the observed N* is {html.escape(obs)} and the frozen prediction "
        f"{html.escape(pred)} (the P(RS wins) figure and table above). A law needs two or more p0 "
        "(<code>physrl experiment scaling</code>)."])


def scaling_sections(config, summary: dict, scaling: dict, frozen: dict, outcomes: pd.DataFrame,
                     figs: Path) -> list[Section]:
    """The report's opening sections for the scaling law."""
    budgets = sorted(scaling["by_budget"])
    primary = scaling["primary"]
    summary = {**summary, "_frozen_n_star": frozen["n_star"]}
    p0s = summary["scaling"]["p0"]
    title = ("Verdict: does N* fall with p0 as the post's law says?" if len(p0s) >= 2 else
             f"Verdict: N* at p0 = {', '.join(f'{p:g}' for p in p0s)} against its frozen prediction")
    return [
        Section(title, paragraphs=verdict(summary), css_class="verdict"),
        Section("P(RS wins) against the diversity N, per prior p0",
                paragraphs=["Blue: the share of seeds whose RS share on the trained environments ended above the "
                            f"threshold {config.threshold:g} (Jeffreys 95% interval over seeds). Black curve: a "
                            "logistic regression of win/loss on log N (Firth's penalised likelihood, finite under "
                            "separation); the dotted line is its 50% point N*, the grey span its percentile "
                            "bootstrap 95% interval over stage-1 models. Where the seeds separate perfectly (every N up to "
                            "some N lost, every larger N won) the data say only that N* lies between the largest N "
                            "that lost and the smallest that won: that bracket is drawn as a black bar at 50% and "
                            "quoted as the observed N*. Red: the frozen prediction of the calibration fit, written "
                            "before any sweep run was trained. One row per step budget."],
                figures=[(win_probability_figure(scaling, frozen, budgets, figs / "p_win.png"),
                          "P(RS wins) vs N")],
                tables=[(n_star_table(summary, scaling),
                         "observed N* as quoted (the logistic 50% point; the bracket where the seeds separate "
                         "perfectly) with its bootstrap interval, and the frozen prediction on continuous N, per "
                         "budget")]),
        _law_section(summary, scaling, frozen, primary, figs),
        Section("Frozen predictions against outcomes",
                paragraphs=[f"predictions.json was written at {html.escape(summary['preregistration']['written_at'])} "
                            f"with sha256 <code>{summary['preregistration']['sha256']}</code>, after the calibration "
                            "runs and their fit and before any sweep run was trained; a rerun verifies this hash. "
                            "Scores: Brier score and log loss (forecasts clipped to "
                            f"[{summary['scores']['log_loss_floor']}, {1 - summary['scores']['log_loss_floor']}] for "
                            "the log loss), lower is better. The base rate has seen the outcomes (hindsight); the "
                            "median-N rule, the constant 0.5 and the logistic in log N fitted to the calibration runs "
                            "alone were available before the sweep (prospective). Intervals: bootstrap over stage-1 "
                            "models within each p0."],
                tables=[(scores_table(summary, "brier"), "Brier score per budget, bootstrap 95% intervals over "
                                                         "stage-1 models"),
                        (scores_table(summary, "brier", "differences"), "Brier score: the frozen forecasts minus "
                                                                        "each baseline (negative: better)"),
                        (scores_table(summary, "log_loss"), "log loss per budget, bootstrap 95% intervals over "
                                                            "stage-1 models"),
                        (scores_table(summary, "log_loss", "differences"), "log loss: the frozen forecasts minus "
                                                                           "each baseline (negative: better)"),
                        (frozen_vs_outcome_table(summary, outcomes), "every sweep cell")]),
    ]
