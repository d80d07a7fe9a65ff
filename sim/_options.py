"""The names of sim's choices: Euler engines and critical-diversity search methods.

A leaf module (it imports nothing), so a command-line parser can list the
choices without importing torch or numba (``physrl sim --help`` starts in a
fraction of a second). The engines are described in ``sim._integrate``, the
search methods in ``sim._critical`` (docs/model.md §3, "Numerics").
"""

#: forward-Euler engines of :func:`physrl.sim.euler` (``auto`` picks by device and problem size)
ENGINES = ("auto", "numpy", "numba", "torch")
#: critical-diversity search methods of :func:`physrl.sim.find_critical_diversity`
METHODS = ("bisection", "grid", "scan")
