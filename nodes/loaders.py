"""Loader nodes: SD 1.x backbone, edit adapter (ControlNet), video adapter (AnimateDiff motion
module), LoRA (stackable) and text-to-video UNet3D. Files come from ComfyUI's model folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from comfy_api.v0_0_2 import io

from ..fdd.models.controlnet import load_controlnet
from ..fdd.models.lora import read_lora
from ..fdd.models.motion import load_motion_adapter
from ..fdd.models.sd1 import companion_tokenizer, load_sd1
from ..fdd.models.t2v import load_t2v_unet
from . import _runtime as rt
from ._inputs import PackNode
from .types import (AdapterHandle, Backbone, BackboneHandle, EditAdapter, T2VUNet, VideoAdapter,
                    VideoAdapterHandle)

CATEGORY = "video edit (fdd)/loaders"
DIFFUSERS_PREFIX = "diffusers/"


def _is_sd_pipeline(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, d)) for d in ("unet", "vae", "text_encoder"))


def _is_t2v_folder(path: str) -> bool:
    for cfg in (os.path.join(path, "unet", "config.json"), os.path.join(path, "config.json")):
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as fh:
                if "UNet3DConditionModel" in fh.read():
                    return True
    return False


def _has_config(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _file_and_folder_options(folder: str, folder_marker) -> list[str]:
    """A loader's choices: the files of a ComfyUI model folder, then its model sub-folders
    listed as 'diffusers/NAME'."""
    return rt.list_files(folder, hide_inside=folder_marker) + [
        DIFFUSERS_PREFIX + n for n in rt.list_subfolders(folder, folder_marker)]


def _resolve_choice(folder: str, choice: str, input_name: str) -> str:
    """Path of a choice made from :func:`_file_and_folder_options`."""
    if choice.startswith(DIFFUSERS_PREFIX):
        return rt.resolve_folder(folder, choice[len(DIFFUSERS_PREFIX):], input_name)
    return rt.resolve_file(folder, choice, input_name)


class LoadBackbone(PackNode):
    @classmethod
    def define_schema(cls):
        options = rt.list_files("checkpoints", hide_inside=lambda p: _is_sd_pipeline(p) or _has_config(p)) + [
            DIFFUSERS_PREFIX + n for n in rt.list_subfolders("diffusers", _is_sd_pipeline)]  # two folders
        return io.Schema(
            node_id="FDD_LoadBackbone",
            display_name="FDD Load SD1.x Backbone",
            category=CATEGORY,
            description="Loads a Stable Diffusion 1.x checkpoint (UNet, VAE, CLIP text encoder) as the "
                        "frozen text-to-image backbone the edit and video adapters stack on. The "
                        "architecture is read from the weights; SDXL / SD2 files are refused.",
            inputs=[
                io.Combo.Input("ckpt_name", options=options,
                               tooltip="An SD 1.x single-file checkpoint from models/checkpoints "
                                       "(.safetensors, or a weights-only .ckpt), or a diffusers "
                                       "pipeline folder from models/diffusers (listed as 'diffusers/NAME'). "
                                       "Single files use ComfyUI's SD 1.x tokenizer unless a folder "
                                       "NAME_tokenizer/ sits beside NAME.safetensors (the toy backbone ships one)."),
            ],
            outputs=[Backbone.Output(display_name="backbone")],
        )

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        if ckpt_name.startswith(DIFFUSERS_PREFIX):
            path = rt.resolve_folder("diffusers", ckpt_name[len(DIFFUSERS_PREFIX):], "ckpt_name")
        else:
            path = rt.resolve_file("checkpoints", ckpt_name, "ckpt_name")
        tok = rt.comfy_sd1_tokenizer_dir()
        own_tokenizer = os.path.isdir(path) or companion_tokenizer(path) is not None

        def load():
            bb = load_sd1(path, tokenizer=None if own_tokenizer else tok)
            if bb.tokenizer is None:
                from transformers import CLIPTokenizer

                bb.tokenizer = CLIPTokenizer.from_pretrained(tok, local_files_only=True)
            for m in (bb.unet, bb.vae, bb.text_encoder):
                m.requires_grad_(False)
            return bb

        bb = rt.CACHE.get("backbone", path, load)
        return io.NodeOutput(BackboneHandle(bb, ckpt_name))


@dataclass(frozen=True)
class LoaderSpec:
    """What an :class:`AdapterLoader` node shows and where its choice comes from."""

    node_id: str
    display_name: str
    description: str
    input: str  # the choice's input name
    tooltip: str
    folder: str  # the ComfyUI model folder
    cache_kind: str
    output: Any  # the output socket type
    output_name: str
    #: None: the folder's files and its model sub-folders (listed as 'diffusers/NAME'); a test
    #: ``f(path) -> bool``: only the sub-folders it accepts (a diffusers / transformers folder kind)
    folders_only: Callable[[str], bool] | None = None
    category: str = CATEGORY

    def options(self) -> list[str]:
        if self.folders_only is not None:
            return rt.list_subfolders(self.folder, self.folders_only)
        return _file_and_folder_options(self.folder, _has_config)

    def resolve(self, choice: str) -> str:
        if self.folders_only is not None:
            return rt.resolve_folder(self.folder, choice, self.input)
        return _resolve_choice(self.folder, choice, self.input)


class AdapterLoader(PackNode):
    """A node that loads one model chosen from a ComfyUI model folder into an
    :class:`AdapterHandle`: subclasses give a :class:`LoaderSpec` and ``load(path)``."""

    SPEC: LoaderSpec

    @staticmethod
    def load(path: str):
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        spec = cls.SPEC
        return io.Schema(node_id=spec.node_id, display_name=spec.display_name, category=spec.category,
                         description=spec.description,
                         inputs=[io.Combo.Input(spec.input, options=spec.options(), tooltip=spec.tooltip)],
                         outputs=[spec.output.Output(display_name=spec.output_name)])

    @classmethod
    def execute(cls, **choice) -> io.NodeOutput:
        name = choice[cls.SPEC.input]
        path = cls.SPEC.resolve(name)
        module = rt.CACHE.get(cls.SPEC.cache_kind, path, lambda: cls.load(path))
        return io.NodeOutput(AdapterHandle(module, name, path))


class LoadEditAdapter(AdapterLoader):
    SPEC = LoaderSpec(
        "FDD_LoadEditAdapter", "FDD Load Edit Adapter (ControlNet)",
        "Loads the image-editing adapter: an instruction ControlNet such as control_v11e_sd15_ip2p, which gets "
        "the input frame and the edit instruction.",
        "controlnet_name", "A ControlNet from models/controlnet: an LDM single file (control_model.* keys) or a "
                           "diffusers folder ('diffusers/NAME').",
        "controlnet", "controlnet", EditAdapter, "edit_adapter")

    @staticmethod
    def load(path: str):
        return load_controlnet(path).requires_grad_(False)


class LoadVideoAdapter(AdapterLoader):
    SPEC = LoaderSpec(
        "FDD_LoadVideoAdapter", "FDD Load Video Adapter (AnimateDiff)",
        "Loads the video-generation adapter: AnimateDiff motion modules (v1, v2, v3 original files, or a "
        "diffusers MotionAdapter folder).",
        "motion_module", "A motion module from models/animatediff_models, e.g. mm_sd_v15_v2.ckpt.",
        "animatediff_models", "motion", VideoAdapter, "video_adapter")

    @staticmethod
    def load(path: str):
        return load_motion_adapter(path).requires_grad_(False)

    @classmethod
    def define_schema(cls):
        schema = super().define_schema()
        schema.inputs.append(io.Float.Input(
            "motion_scale", default=1.0, min=0.0, max=2.0, step=0.05, optional=True,
            tooltip="Strength of the motion modules: each module's output is x + scale x (module(x) - x). "
                    "1 = as trained, 0 = frames independent (no temporal layers), between: weaker motion "
                    "(AnimateDiff-Evolved's 'effect'). Every method that runs this adapter uses it."))
        return schema

    @classmethod
    def execute(cls, motion_module: str, motion_scale: float = 1.0) -> io.NodeOutput:
        handle = super().execute(motion_module=motion_module).result[0]
        return io.NodeOutput(VideoAdapterHandle(handle.module, handle.name, handle.path, float(motion_scale)))


class LoadLora(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_LoraLoader",
            display_name="FDD Apply LoRA to Backbone",
            category=CATEGORY,
            description="Stacks a LoRA (kohya or peft/diffusers format) on the backbone's UNet and "
                        "text encoder at a strength. Chain several to stack them; motion modules and "
                        "the edit adapter are never touched.",
            inputs=[
                Backbone.Input("backbone", tooltip="The backbone to stack the LoRA on (from the "
                                                   "backbone loader or another LoRA node)."),
                io.Combo.Input("lora_name", options=rt.list_files("loras"),
                               tooltip="A LoRA from models/loras (e.g. an FDD-aligned LoRA)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplier of the LoRA update; 0 disables it."),
            ],
            outputs=[Backbone.Output(display_name="backbone")],
        )

    @classmethod
    def execute(cls, backbone: BackboneHandle, lora_name: str, strength: float) -> io.NodeOutput:
        path = rt.resolve_file("loras", lora_name, "lora_name")
        lora = rt.CACHE.get("lora", path, lambda: read_lora(path))
        return io.NodeOutput(backbone.with_lora(lora, strength, lora_name))


class LoadT2VUNet(AdapterLoader):
    SPEC = LoaderSpec(
        "FDD_LoadT2VUNet", "FDD Load Text-to-Video UNet3D",
        "Loads a ModelScope / Zeroscope text-to-video UNet3D from a diffusers folder (used as the video prior "
        "of ASSD).",
        "model_folder", "A folder in models/diffusers holding a UNet3DConditionModel (the pipeline folder with "
                        "unet/, or the unet folder itself).",
        "diffusers", "t2v", T2VUNet, "t2v_unet", folders_only=_is_t2v_folder)

    @staticmethod
    def load(path: str):
        return load_t2v_unet(path).requires_grad_(False)
