"""The methods a sweep can run, by name: the one registry everything else reads.

``python orchestration/sweep.py <name>`` offers exactly these, ``search_spaces/<name>.yaml``
addresses ``METHODS[name].config``, and the Train workers run ``METHODS[name].trial``. Adding a
method is a module here ending in a :class:`~emgcore.methods.base.Method`, a line below, a
bundled preset and a search space (README, "Adding a method"); nothing in ``orchestration/``
names a method.
"""

from __future__ import annotations

from emgcore.methods import jepa, kinembed, posealign
from emgcore.methods.base import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        kinembed.METHOD,
        posealign.MAE_METHOD,
        posealign.CPEP_METHOD,
        posealign.EMBRIDGE_METHOD,
        jepa.METHOD,
    )
}

__all__ = ["METHODS", "Method"]
