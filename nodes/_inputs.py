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
        # ComfyUI runs a locked copy of the class (whose schema cache cannot be written), made by
        # copying the class's namespace: the copy inherits the name of the class it stands for
        if "_pack_node_class" not in cls.__dict__:
            cls._pack_node_class = cls
        fn = cls.__dict__.get("execute")
        raw = getattr(fn, "__func__", fn)
        if fn is None or getattr(raw, "_inputs_checked", False):
            return  # nothing of its own, or already wrapped (ComfyUI's locked copies of a class)

        @functools.wraps(raw)
        def execute(klass, *args, **kwargs):
            check_inputs(klass._pack_node_class, kwargs)  # the node called, also through an inherited execute
            return raw(klass, *args, **kwargs)

        execute._inputs_checked = True
        cls.execute = classmethod(execute)


class ConfigInputs:
    """A node's widget inputs built from a config class's declared fields (:mod:`fdd.params`),
    so each default, range and tooltip is written once, next to the field it sets.

    ``fields`` lists the config fields the node shows, in widget order; ``node_defaults``
    (by field name) are the few places a node deliberately defaults otherwise (each listed with
    its reason in ``tests/test_node_defaults.py``). :meth:`config` turns the node's values back
    into the config, a missing value taking the node's default.
    """

    def __init__(self, config_cls: type, fields: list[str], **node_defaults: Any):
        from ..fdd.params import declared

        every = declared(config_cls)
        missing = [f for f in list(fields) + list(node_defaults) if f not in every]
        if missing:
            raise TypeError(f"{config_cls.__name__}: {missing} are not declared with fdd.params.param")
        self.config_cls = config_cls
        self.fields = [every[f] for f in fields]
        self.defaults = {d.field: node_defaults.get(d.field, d.default) for d in self.fields}

    def inputs(self, *only: str) -> list:
        """The widget inputs, all or those of the fields named in ``only`` (for a node that puts
        inputs of its own between them), in widget order."""
        unknown = [f for f in only if f not in self.defaults]
        if unknown:
            raise TypeError(f"{self.config_cls.__name__}: {unknown} are not among this node's fields")
        out = []
        for d in self.fields:
            if only and d.field not in only:
                continue
            p, default = d.param, self.defaults[d.field]
            common = dict(default=default, tooltip=p.tooltip)
            bounds = {k: v for k, v in (("min", p.min), ("max", p.max), ("step", p.step)) if v is not None}
            if d.kind == "INT":
                out.append(io.Int.Input(d.input_name, **common, **bounds,
                                        **({"control_after_generate": True} if p.seed else {})))
            elif d.kind == "FLOAT":
                out.append(io.Float.Input(d.input_name, **common, **bounds))
            elif d.kind == "BOOLEAN":
                out.append(io.Boolean.Input(d.input_name, **common))
            elif d.kind == "COMBO":
                out.append(io.Combo.Input(d.input_name, options=list(p.options), **common))
            else:
                out.append(io.String.Input(d.input_name, multiline=p.multiline, **common))
        return out

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Field name -> value from the node's input values (by input name), defaults filled in."""
        return {d.field: given.get(d.input_name, self.defaults[d.field]) for d in self.fields}

    def config(self, given: Mapping[str, Any], **extra: Any):
        """The config from the node's input values plus ``extra`` fields the node sets itself."""
        return self.config_cls(**self.values(given), **extra)
