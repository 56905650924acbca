"""ComfyUI nodes of the pack (V3 schema). One small file per feature; no math here."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from . import _runtime


def all_nodes() -> list[type[io.ComfyNode]]:
    from . import loaders, plug_and_play

    return [*loaders.NODES, *plug_and_play.NODES]


class FDDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        _runtime.register_model_folders()
        return all_nodes()
