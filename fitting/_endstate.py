"""A run's RS share over its trained environments, its end state at a budget, its prefix (issue 23).

The end state is the scaling experiment's (physrl's ``share_at_budget``): the RS share over the trained
environments' eval rollouts at the last eval step at or before the budget; RS wins when it exceeds the threshold.
Read from the log contract only (:class:`physrl.contract.Run`).
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from physrl.contract import Run


def _trained(run: Run) -> list[str]:
    return [e.env_id for e in run.environments if e.w > 0] or list(run.env_ids)


def share_curve(run: Run, phases=("eval",)) -> pd.DataFrame:
    """RS share over the trained environments per eval step.

    Returns
    -------
    DataFrame with columns ``step`` (optimizer steps), ``k`` (RS rollouts), ``n`` (rollouts), ``share`` (k/n);
    eval rollouts (all phases when the run has none).
    """
    df = run.rollouts
    rows = df[df["env_id"].isin(_trained(run)) & df["phase"].isin(phases)]
    if rows.empty:
        rows = df[df["env_id"].isin(_trained(run))]
    g = rows.groupby("step")["rs"].agg(["sum", "size"]).reset_index()
    out = pd.DataFrame({"step": g["step"].astype(int), "k": g["sum"].astype(int), "n": g["size"].astype(int)})
    out["share"] = out["k"] / out["n"]
    return out


def end_share(run: Run, budget: int) -> tuple[int, float] | None:
    """(eval step, RS share over the trained envs) at the last eval step ≤ ``budget``; None without one.

    The scaling experiment's end state (physrl's ``share_at_budget``): RS wins when this share > threshold.
    """
    curve = share_curve(run)
    curve = curve[curve["step"] <= budget]
    if curve.empty:
        return None
    last = curve.iloc[-1]
    return int(last["step"]), float(last["share"])


def budget_of(run: Run) -> int | None:
    """The run's budget in optimizer steps: the manifest's ``steps`` (None when it does not say)."""
    return None if run.manifest is None or run.manifest.steps is None else int(run.manifest.steps)


def nominal_prior(run: Run) -> float:
    """The prior p0 the run was set up with (manifest ``p0``, else the producer's config ``p0``), else measured."""
    m = run.manifest
    if m is not None and m.p0 is not None:
        return float(m.p0)
    cfg = ((m.organisms or {}).get("config") or {}) if m is not None else {}
    if isinstance(cfg.get("p0"), (int, float)):
        return float(cfg["p0"])
    return float(run.measured_prior(env_ids=_trained(run)).pooled.value)


def stage1_model(run: Run) -> str:
    """The run's stage-1 model (the unit of replication): the producer's stage-1 key, else the run id."""
    m = run.manifest
    key = (((m.organisms or {}).get("stage1") or {}).get("key")) if m is not None else None
    return str(key) if key else run.run_id


def prefix(run: Run, at: int) -> Run:
    """The run as it was logged up to step ``at`` (rows with step ≤ at), untrained environments without rows dropped.

    Raises
    ------
    ValueError
        If no rollout was logged by step ``at``.
    """
    rows = run.rollouts[run.rollouts["step"] <= at]
    if rows.empty:
        raise ValueError(f"run {run.run_id} ({run.source}): no rollouts logged by step {at} "
                         f"(first logged step {int(run.rollouts['step'].min())})")
    seen = set(rows["env_id"].unique())
    envs = [e for e in run.environments if e.w > 0 or e.env_id in seen]
    return dataclasses.replace(run, rollouts=rows.reset_index(drop=True), environments=envs)


def _trim(run: Run) -> Run:
    seen = set(run.rollouts["env_id"].unique())
    return dataclasses.replace(run, environments=[e for e in run.environments if e.w > 0 or e.env_id in seen])


