"""The names of sim's choices: Euler engines, critical-diversity search methods, selection laws.

A leaf module (it imports nothing), so a command-line parser can list the
choices without importing torch or numba (``physrl sim --help`` starts in a
fraction of a second). The engines are described in ``sim._integrate``, the
search methods in ``sim._critical`` (docs/model.md §3, "Numerics").
"""

#: forward-Euler engines of :func:`physrl.sim.euler` (``auto`` picks by device and problem size)
ENGINES = ("auto", "numpy", "numba", "torch")
#: critical-diversity search methods of :func:`physrl.sim.find_critical_diversity`
METHODS = ("bisection", "grid", "scan")
#: selection laws of the RS log-odds (docs/model.md §9): the post's replicator p (1 − p) (a − b), the
#: power law [p (1 − p)]^γ (a − b), or the power law on the skill terms too (:class:`physrl.sim.SelectionLaw`)
SELECTIONS = ("replicator", "power", "power+skills")
