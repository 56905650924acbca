"""ComfyUI nodes of the pack (V3 schema). One small file per feature; no math here.

Every module in this folder whose name does not start with ``_`` (and is not ``types``) may
define ``NODES``, a list of ``io.ComfyNode`` classes; they are collected in module-name order.
"""

from __future__ import annotations

import importlib
import os

from comfy_api.v0_0_2 import ComfyExtension, io

from . import _runtime

_SKIP = {"types"}


def node_modules() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(f[:-3] for f in os.listdir(here)
                  if f.endswith(".py") and not f.startswith("_") and f[:-3] not in _SKIP)


def all_nodes() -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    for name in node_modules():
        mod = importlib.import_module(f".{name}", __name__)
        nodes.extend(getattr(mod, "NODES", []))
    return nodes


class FDDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        _runtime.register_model_folders()
        return all_nodes()
