"""The report's first screen (issue 21 §3.8): three plain answers, one line each, then one figure; the
statistics follow below. Sentences checked on the committed demo and scaling summaries, and their place
in a report written by the pipeline."""

import copy
import json
from pathlib import Path

from conftest import visible_text

from physrl.experiment import headline

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"
STATISTICS = ("Brier", "Firth", "bootstrap", "sha256", "log loss", "Jeffreys", "logistic", "AIC")


def _summary(name: str) -> dict:
    return json.loads((REFERENCE / name / "summary.json").read_text())


def test_the_demo_in_three_plain_lines():
    """One prior, one run per N; the frozen forecast's Brier differences have intervals holding 0."""
    summary = _summary("demo")
    summary["scores"]["interval_95"] = {"brier_minus_base_rate": [-0.088, 0.106],
                                        "brier_minus_median_n": [-0.734, 0.293]}
    assert headline.plain_lines(summary) == [
        ("Did RS spread more with more environments?",
         "Yes, at p0 = 0.1: RS died out at N = 1, 2 and 4 and took over at N = 8 (one run per N, so a hint only)."),
        ("Where did it take over?", "Between N = 4 and N = 8, at p0 = 0.1."),
        ("Did the frozen prediction hold?",
         "Not measurably: it called the winner at 3 of 4 values of N and put N* at 12.1 (observed: between N = 4 "
         "and N = 8), no better than simple guesses over 4 runs.")]
    lost = copy.deepcopy(summary)
    lost["scores"]["interval_95"]["brier_minus_base_rate"] = [0.01, 0.2]
    assert headline.forecast_line(lost).startswith("No: ") and "scored worse than guessing the base rate" in \
        headline.forecast_line(lost)
    unconverged = {**summary, "fit_converged_for_predictions": False}
    assert headline.forecast_line(unconverged).startswith("No claim: ")


def test_the_scaling_reference_in_three_plain_lines():
    """Three priors, six seeds per cell (data/reference/scaling, README's numbers)."""
    lines = dict(headline.plain_lines(_summary("scaling")))
    assert lines["Did RS spread more with more environments?"] == (
        "Yes: RS took over in 1/6 runs at N = 2 but 4/6 at N = 16 (p0 = 0.05), 1/6 at N = 1 but 6/6 at N = 12 "
        "(p0 = 0.1), 0/6 at N = 1 but 6/6 at N = 8 (p0 = 0.2).")
    assert lines["Where did it take over?"] == (
        "At p0 = 0.05, near N = 7 (95% interval below 2 to above 16); at p0 = 0.1, near N = 4.1 (95% interval "
        "2.3 to 5.6); at p0 = 0.2, near N = 4.1 (95% interval 3.1 to 5.5).")
    assert lines["Did the frozen prediction hold?"] == (
        "Not measurably: it called the winner at 14 of 20 (p0, N) points, beat a logistic in log N fitted to the "
        "calibration runs but was no better than the other simple guesses over 120 runs.")  # issue 18.3
    no_intervals = copy.deepcopy(_summary("scaling"))
    del no_intervals["scores"]["interval_95"]
    assert headline.forecast_line(no_intervals).endswith("no better than simple guesses over 120 runs.")


def test_report_opens_with_the_three_answers_then_one_figure(synthetic_scaling):
    out, summary, _ = synthetic_scaling
    doc = (out / "report.html").read_text(encoding="utf-8")
    text = visible_text(doc[doc.index("<body>"):])  # the page, not its <title>
    title = "physrl diversity experiment: scaling-synthetic"
    assert text.strip().startswith(title)
    answers = headline.plain_lines(summary)
    first = " ".join(f"{q} {a}" for q, a in answers)
    assert text.strip()[len(title):].strip().startswith(first), text[:600]
    before = text[:text.index(answers[-1][1]) + len(answers[-1][1])]
    assert not [w for w in STATISTICS if w in before], before
    # then one figure, before the first section heading (the statistics)
    body = doc[doc.index("</h1>"):]
    assert body.index("<img") < body.index("<h2>") and body[:body.index("<h2>")].count("<img") == 1
    assert "Each dot is one sweep run: its RS share" in body[:body.index("<h2>")]
    assert (out / "figures" / "final_share.png").exists()
