"""ComfyUI nodes of the pack (V3 schema). One small file per feature; no math here.

The node list is explicit (as ComfyUI's ``comfy_extras`` modules keep theirs): a reader, a tool
and the Registry see what is registered without importing anything. Every class derives from
:class:`nodes._inputs.PackNode`, which checks each call's inputs against the schema first.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from . import _runtime
from .assd import ASSDOptimize
from .ei2 import EI2Edit, EI2Inflate, EI2LoadTuned, EI2SaveTuned, EI2Tune
from .eve import EVEVideoEdit
from .fdd_train import FDDAlign, FDDDatasetNode, LoadDINOv2
from .loaders import LoadBackbone, LoadEditAdapter, LoadLora, LoadT2VUNet, LoadVideoAdapter
from .metrics import VideoEditMetrics
from .plug_and_play import PlugAndPlayVideoEdit
from .toy import ToyClip, ToyScore

NODES: list[type[io.ComfyNode]] = [
    # loaders
    LoadBackbone, LoadEditAdapter, LoadVideoAdapter, LoadLora, LoadT2VUNet,
    # EVE stack: plug-and-play, FDD alignment, the aligned sampler
    PlugAndPlayVideoEdit, LoadDINOv2, FDDDatasetNode, FDDAlign, EVEVideoEdit,
    # ASSD
    ASSDOptimize,
    # EI²
    EI2Inflate, EI2Tune, EI2SaveTuned, EI2LoadTuned, EI2Edit,
    # metrics and the toy world
    VideoEditMetrics, ToyClip, ToyScore,
]


def all_nodes() -> list[type[io.ComfyNode]]:
    return list(NODES)


class FDDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        _runtime.register_model_folders()
        return all_nodes()
