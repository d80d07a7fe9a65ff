"""Ray jobs' resource requests checked against the cluster before anything is submitted.

Ray queues a task whose ``num_cpus`` / ``num_gpus`` no node can give and waits
for it forever, with no error (ray issue #45909: a GPU asked of a CPU-only
cluster). :func:`check_ray_resources` compares a job's request with
``ray.cluster_resources()`` (Ray docs, "ray.cluster_resources": the cluster's
total resources, a dict such as ``{"CPU": 2.0, "GPU": 1.0, ...}``) and refuses
a request the cluster cannot meet, naming the resource.
"""

from __future__ import annotations

from typing import Mapping

#: ExecutorConfig field -> Ray's resource name
_RESOURCES = (("cpus_per_job", "CPU"), ("gpus_per_job", "GPU"))


def check_ray_resources(requested: Mapping[str, float], cluster: Mapping[str, float],
                        address: str | None = None) -> None:
    """Refuse a per-job request the Ray cluster cannot meet.

    Parameters
    ----------
    requested : mapping
        ``{"cpus_per_job": int, "gpus_per_job": int}`` (fields of ``ExecutorConfig``); a missing or 0 entry asks
        for nothing.
    cluster : mapping
        ``ray.cluster_resources()``: total resources of the cluster, by Ray's names (``CPU``, ``GPU``).
    address : str or None
        The cluster's address as configured (``executor.ray_address``), for the message; None for a local cluster.

    Raises
    ------
    ValueError
        ``executor.gpus_per_job = 1 asks each job for 1 GPU, but the Ray cluster (...) has 0 GPU ...``: the
        first field whose request exceeds the cluster's total (a job must fit on the cluster to be scheduled).
    """
    where = f"at {address}" if address else "(local)"
    have_all = ", ".join(f"{name} {cluster.get(name, 0):g}" for _, name in _RESOURCES)
    for field, name in _RESOURCES:
        want = float(requested.get(field) or 0)
        have = float(cluster.get(name, 0.0))
        if want > have:
            raise ValueError(
                f"executor.{field} = {want:g} asks each job for {want:g} {name}, but the Ray cluster {where} has "
                f"{have:g} {name} in all ({have_all}); Ray would queue the jobs forever. Set executor.{field} <= "
                f"{have:g} or connect to a cluster with {name}s (executor.ray_address)")
