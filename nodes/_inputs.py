"""Every node input checked against its own schema before any work: numbers finite and within
the declared range, combo values among the listed choices. ComfyUI checks ranges when a prompt
is queued, but a NaN passes its comparisons and a combo value is not always re-checked; a direct
call of ``execute`` (scripts, tests) is checked the same way.

The pack's nodes derive from :class:`PackNode`, which wraps each subclass's ``execute``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

from comfy_api.v0_0_2 import io


def _spec_options(spec) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return None


def _range_text(lo, hi) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def check_value(node_id: str, name: str, spec, value: Any) -> None:
    """Raise ``ValueError`` naming ``node_id.name`` when ``value`` breaks its schema ``spec``."""
    kind = spec[0] if isinstance(spec[0], str) else "COMBO"
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind in ("INT", "FLOAT"):
        lo, hi = opts.get("min"), opts.get("max")
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "INT" and ok_type and isinstance(value, float) and not value.is_integer():
            ok_type = False
        if not ok_type or not math.isfinite(value):
            raise ValueError(f"{node_id}: input '{name}' must be a finite {'integer' if kind == 'INT' else 'number'} "
                             f"in {_range_text(lo, hi)}, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{node_id}: input '{name}' must lie in {_range_text(lo, hi)}, got {value!r}")
    elif kind == "COMBO":
        options = _spec_options(spec)
        if options is not None and value not in options:
            shown = options if len(options) <= 12 else options[:12] + ["..."]
            raise ValueError(f"{node_id}: input '{name}' must be one of {shown}, got {value!r}")


def check_inputs(node_cls, kwargs: Mapping[str, Any]) -> None:
    """Check every widget value of a call against the node's schema (links arrive resolved)."""
    info = node_cls.GET_NODE_INFO_V1()
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    for name, value in kwargs.items():
        spec = specs.get(name)
        if spec is None or value is None:
            continue
        check_value(info["name"], name, spec, value)


class PackNode(io.ComfyNode):
    """Base of the pack's nodes: ``execute`` checks its inputs (:func:`check_inputs`) first."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        fn = cls.__dict__.get("execute")
        raw = getattr(fn, "__func__", fn)
        if fn is None or getattr(raw, "_inputs_checked", False):
            return  # nothing of its own, or already wrapped (ComfyUI's locked copies of a class)

        owner = cls  # ComfyUI runs a locked copy of the class, whose schema cache cannot be written

        @functools.wraps(raw)
        def execute(klass, *args, **kwargs):
            check_inputs(owner, kwargs)
            return raw(klass, *args, **kwargs)

        execute._inputs_checked = True
        cls.execute = classmethod(execute)
