"""Engines run one recurrent layer in one direction over a whole sequence, forward and BPTT.

All engines share the signature of `reference.run_layer`. `select` is the one place that
chooses between them: an engine asked for by name runs or raises, never a silent substitute.
"""

from __future__ import annotations

from . import reference

ENGINES = {"reference": reference.run_layer}
ENGINE_NAMES = ("auto", *ENGINES)


def select(name: str):
    """The run_layer function of engine `name`; "auto" picks the best engine that applies."""
    if name == "auto":
        return ENGINES["reference"]  # the only engine so far
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(map(repr, ENGINE_NAMES))}")
    return ENGINES[name]
