"""The organisms' random streams: one seed per (run seed, step, phase, ...) tuple, stable across processes.

A leaf: imports nothing of physrl.
"""

from __future__ import annotations

import hashlib


def stream_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, step, phase, ...), stable across processes."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
