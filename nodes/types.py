"""Custom ComfyUI socket types of the pack and the handles they carry between nodes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from comfy_api.v0_0_2 import io

from ..fdd.models.lora import LoraStack

Backbone = io.Custom("FDD_BACKBONE")
EditAdapter = io.Custom("FDD_EDIT_ADAPTER")
VideoAdapter = io.Custom("FDD_VIDEO_ADAPTER")
T2VUNet = io.Custom("FDD_T2V_UNET")


@dataclass(frozen=True)
class BackboneHandle:
    """An SD 1.x backbone plus the LoRAs stacked on it by LoRA loader nodes.

    Frozen: a LoRA node returns a new handle, so one loaded backbone can feed several branches
    of a graph with different LoRAs. ``loras`` holds ``(LoraWeights, strength, name)``.
    """

    backbone: Any
    name: str
    loras: tuple = field(default_factory=tuple)

    def with_lora(self, lora, strength: float, name: str) -> "BackboneHandle":
        return replace(self, loras=self.loras + ((lora, float(strength), name),))

    @property
    def lora_stack(self) -> LoraStack:
        """The engine's ordered stack of ``(LoraWeights, strength)`` (:class:`fdd.models.lora.LoraStack`)."""
        return LoraStack(tuple((lora, strength) for lora, strength, _ in self.loras))

    @property
    def lora_names(self) -> list[str]:
        return [name for _, _, name in self.loras]


@dataclass(frozen=True)
class AdapterHandle:
    module: Any
    name: str
    path: str


@dataclass(frozen=True)
class VideoAdapterHandle(AdapterHandle):
    """A video adapter with the strength its motion modules run at (``fdd.models.motion.blend_motion``)."""

    motion_scale: float = 1.0
