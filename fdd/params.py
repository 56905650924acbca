"""Tunable parameters declared once, on the config field they set.

A method's config dataclass (``PlugAndPlayConfig``, ``ASSDConfig``, ``TuneConfig``, ...) declares
each user-facing field with :func:`param`: its default, its range, its step and the tooltip that
documents it. Everything else reads them from there: the ComfyUI nodes build their widget inputs
from the declarations (``nodes/_inputs.ConfigInputs``), so a node and a script calling the engine
share one default, one range and one text. No ComfyUI import here: the declarations are plain data.

Kinds come from the field's annotation: ``int`` -> INT, ``float`` -> FLOAT, ``bool`` -> BOOLEAN,
``str`` -> STRING, or a choice (COMBO) when ``options`` is given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_KEY = "fdd_param"
KINDS = {"int": "INT", "float": "FLOAT", "bool": "BOOLEAN", "str": "STRING"}


@dataclass(frozen=True)
class Param:
    """How one config field is shown and bounded (see :func:`param`)."""

    tooltip: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] | None = None
    multiline: bool = False
    #: a random seed (the ComfyUI page adds its "control after generate" widget)
    seed: bool = False
    #: the node input's name when it differs from the field's (e.g. ``cfg`` for ``text_cfg``)
    input_name: str | None = None


def param(default: Any, tooltip: str, **how: Any) -> Any:
    """A dataclass field with ``default``, documented by ``tooltip`` and bounded by ``how``
    (:class:`Param`'s ``min``, ``max``, ``step``, ``options``, ``multiline``, ``seed``,
    ``input_name``)."""
    if "options" in how:
        how["options"] = tuple(how["options"])
        if default not in how["options"]:
            raise ValueError(f"param: default {default!r} is not among the options {how['options']}")
    return dataclasses.field(default=default, metadata={_KEY: Param(tooltip, **how)})


@dataclass(frozen=True)
class Declared:
    """One declared field of a config class: its name, kind, default and :class:`Param`."""

    field: str
    kind: str
    default: Any
    param: Param

    @property
    def input_name(self) -> str:
        return self.param.input_name or self.field


def declared(config_cls: type) -> dict[str, Declared]:
    """The fields of ``config_cls`` declared with :func:`param`, by field name, in field order."""
    out: dict[str, Declared] = {}
    for f in dataclasses.fields(config_cls):
        p = f.metadata.get(_KEY)
        if p is None:
            continue
        kind = "COMBO" if p.options is not None else KINDS.get(str(f.type).split("|")[0].strip())
        if kind is None:
            raise TypeError(f"{config_cls.__name__}.{f.name}: a param needs an int / float / bool / str "
                            f"annotation, got {f.type!r}")
        out[f.name] = Declared(f.name, kind, f.default, p)
    return out
