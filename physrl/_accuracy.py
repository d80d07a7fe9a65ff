"""The RS classifiers' accuracy over an experiment: their confusion matrices against the environments' ground truth.

Each organism run records, in its manifest's ``organisms.classifier_accuracy``,
the confusion matrix of its labelling classifier and of every other
registered one against the path the environment knows a rollout took
(docs/environments.md, "ground truth"). Here they are pooled over the
experiment's runs, for ``summary.json`` and one small table in the report.
"""

from __future__ import annotations

import pandas as pd

from physrl.report import Section

_COUNTS = ("tp", "fp", "fn", "tn", "unknown")


def pooled_accuracy(runs) -> dict[str, dict]:
    """Per classifier, the confusion counts summed over ``runs`` (all phases), with rates.

    Parameters
    ----------
    runs : iterable of physrl.contract.Run
        Runs whose manifests may carry ``organisms.classifier_accuracy``
        (runs without it are skipped).

    Returns
    -------
    dict name -> dict
        ``tp``, ``fp``, ``fn``, ``tn`` (positive = RS), ``unknown`` (rollouts
        whose path the environment does not know), ``n`` (known), ``runs``,
        ``labels_runs`` (runs it labelled), ``accuracy``, ``precision``,
        ``recall``, ``false_positive_rate`` (None when undefined).
    """
    out: dict[str, dict] = {}
    for run in runs:
        record = ((run.manifest.organisms or {}) if run.manifest is not None else {}).get("classifier_accuracy") or {}
        for name, entry in (record.get("classifiers") or {}).items():
            acc = out.setdefault(name, {**{k: 0 for k in _COUNTS}, "runs": 0, "labels_runs": 0})
            for k in _COUNTS:
                acc[k] += int(entry["all"].get(k, 0))
            acc["runs"] += 1
            acc["labels_runs"] += int(record.get("labelling") == name)
    for acc in out.values():
        tp, fp, fn, tn = (acc[k] for k in ("tp", "fp", "fn", "tn"))
        acc["n"] = tp + fp + fn + tn
        acc["accuracy"] = (tp + tn) / acc["n"] if acc["n"] else None
        acc["precision"] = tp / (tp + fp) if tp + fp else None
        acc["recall"] = tp / (tp + fn) if tp + fn else None
        acc["false_positive_rate"] = fp / (fp + tn) if fp + tn else None
    return out


def accuracy_section(pooled: dict[str, dict]) -> list[Section]:
    """The report's table (empty list when no run recorded a ground truth)."""
    if not any(acc["n"] for acc in pooled.values()):
        return []
    table = pd.DataFrame([{"classifier": name, "labelled runs": acc["labels_runs"], "runs": acc["runs"],
                           "RS labelled RS (TP)": acc["tp"], "local labelled RS (FP)": acc["fp"],
                           "RS labelled local (FN)": acc["fn"], "local labelled local (TN)": acc["tn"],
                           "path unknown": acc["unknown"], "accuracy": acc["accuracy"], "recall": acc["recall"],
                           "false-positive rate": acc["false_positive_rate"]} for name, acc in pooled.items()])
    return [Section("RS classifier against the environments' ground truth", paragraphs=[
        "The environments know which path a rollout took (e.g. the grader note was inserted only on the RS path). "
        "Each classifier's labels against that path, pooled over every rollout (train and eval) of every run; "
        "'labelled runs' counts the runs whose rs column it wrote. A classifier that mislabels shifts every "
        "measured RS share, the fit's data."], tables=[(table, "confusion counts, positive = RS path")])]
