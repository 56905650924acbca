"""EI² nodes: inflate the backbone's UNet (STAM / FFAM and the ablation switches), tune it
one-shot on a video, save / load the tuned weights, edit by DDIM inversion + a new prompt.

The model travels between nodes as an ``FDD_EI2_MODEL`` handle: the backbone, the inflation
settings and the tuned tensors (CPU); the inflated module is built on demand from those (the
cached backbone's UNet is never modified: each model owns a copy)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from comfy_api.v0_0_2 import io, ui

from ..fdd.ei2 import (
    EditConfig,
    InflationConfig,
    TuneConfig,
    build_model,
    ei2_edit,
    ei2_tune,
    read_tuned_weights,
    render_loss_curve,
    tuned_state_dict,
    write_tuned_weights,
)
from ..fdd.ei2 import base_fingerprint, check_tuned_base
from . import _runtime as rt
from ._inputs import ConfigInputs, PackNode
from .types import Backbone, BackboneHandle

CATEGORY = "video edit (fdd)/EI²"
FOLDER = "fdd_ei2"
EI2Model = io.Custom("FDD_EI2_MODEL")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
INFLATE = ConfigInputs(InflationConfig, ["attention", "ffam_ratio", "ffam_downsample", "temporal_module",
                                         "temporal_norm", "centering_axis", "spectral_norm", "identity_init",
                                         "temporal_position", "seed"])
# the node saves GPU memory and writes checkpoints (when a run_name is given) by default
TUNE = ConfigInputs(TuneConfig, ["steps", "learning_rate", "seed", "gate_lr_scale", "gradient_checkpointing",
                                 "mixed_precision", "checkpoint_every"],
                    gradient_checkpointing=True, checkpoint_every=100)
EDIT = ConfigInputs(EditConfig, ["steps", "cfg", "init", "seed"])


@dataclass(eq=False)
class EI2ModelHandle:
    """An EI² model between nodes: backbone (+ LoRAs), inflation settings, tuned tensors (None:
    freshly inflated), loss history, and the built module (cached, built on first use)."""

    backbone: BackboneHandle
    config: InflationConfig
    tuned: dict | None = None
    history: tuple = ()
    info: dict = field(default_factory=dict)
    name: str = ""
    module: Any = field(default=None, repr=False)

    @property
    def loras(self) -> list:
        return self.backbone.lora_stack

    def get_module(self):
        if self.module is None:
            self.module = build_model(self.backbone.backbone, self.config, loras=self.loras, tuned=self.tuned,
                                      source=self.name or None)
        return self.module


def ei2_folder() -> str:
    """The first ``fdd_ei2`` model folder (extra_model_paths.yaml entries come first)."""
    import folder_paths

    return folder_paths.get_folder_paths(FOLDER)[0]


def checkpoint_path(run_name: str) -> str:
    if not _RUN_NAME.match(run_name or ""):
        raise ValueError(f"run_name: {run_name!r} is not a usable file name (letters, digits, '_', '-', '.'; "
                         "it must start with a letter or digit)")
    return os.path.join(ei2_folder(), "checkpoints", f"{run_name}.safetensors")


class EI2Inflate(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_EI2Inflate",
            display_name="FDD EI² Inflate UNet (STAM / FFAM)",
            category=CATEGORY,
            description="Inflates the backbone's text-to-image UNet into EI²'s video UNet (EI² §4.1): frames "
                        "folded into the batch, the self-attention replaced by FFAM (fine-coarse frame "
                        "attention, Eq. 10) and a STAM temporal module (instance centering + spectral-"
                        "normalised temporal attention, Eq. 6-9) after every transformer block. At "
                        "initialisation the model gives the backbone's output frame by frame. Switches "
                        "give the paper's ablations; Tune-A-Video = sparse_causal + layer_norm + "
                        "spectral_norm off + zero_output.",
            inputs=[
                Backbone.Input("backbone", tooltip="From 'FDD Load SD1.x Backbone' (its LoRAs are merged into "
                                                   "the inflated model's own copy of the UNet)."),
                *INFLATE.inputs(),
            ],
            outputs=[EI2Model.Output(display_name="ei2_model")],
        )

    @classmethod
    def execute(cls, backbone, **params) -> io.NodeOutput:
        config = INFLATE.config(params).validate()
        return io.NodeOutput(EI2ModelHandle(backbone, config, name=f"{backbone.name} (inflated)"))


class EI2Tune(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_EI2Tune",
            display_name="FDD EI² One-shot Tune",
            category=CATEGORY,
            description="Tunes the inflated UNet on the input video and its caption (EI² §5): only W_Q of the "
                        "self- and cross-attention and the temporal modules train, with AdamW on the "
                        "diffusion loss. Progress every step; Cancel stops it and keeps a checkpoint "
                        "(when run_name is set and checkpoint_every > 0) that resume continues exactly. "
                        "Paper defaults: 500 steps, lr 3e-5, 8 frames at 512 px.",
            inputs=[
                EI2Model.Input("ei2_model", tooltip="From 'FDD EI² Inflate UNet' or 'FDD EI² Load Tuned "
                                                    "Weights' (tuning then continues from those weights)."),
                io.Image.Input("frames", tooltip="The input video as an IMAGE batch [frames, H, W, 3], e.g. "
                                                 "LoadVideo -> GetVideoComponents."),
                io.String.Input("caption", default="", multiline=True,
                                tooltip="A caption of the input video (the prompt P tuned with)."),
                *TUNE.inputs("steps", "learning_rate"),
                io.Int.Input("num_frames", default=8, min=0, max=1024,
                             tooltip="Frames tuned on (paper: 8); 0 = every frame the stride reaches."),
                io.Int.Input("frame_stride", default=1, min=1, max=1024,
                             tooltip="Take every k-th frame of the clip (from the first)."),
                io.Int.Input("size", default=512, min=0, max=4096, step=8,
                             tooltip="Longer side in pixels the frames are resized to (paper: 512); 0 keeps "
                                     "the input size. Sides are cut to multiples the UNet accepts."),
                *TUNE.inputs("seed", "gate_lr_scale", "gradient_checkpointing", "mixed_precision",
                             "checkpoint_every"),
                io.String.Input("run_name", default="",
                                tooltip="Name of this run's checkpoint file; empty = no checkpoints."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue from run_name's checkpoint if it exists (same inputs and "
                                         "settings required; steps may be raised)."),
            ],
            outputs=[EI2Model.Output(display_name="ei2_model"),
                     io.Image.Output(display_name="frames"),
                     io.Image.Output(display_name="loss_curve")],
        )

    @classmethod
    def execute(cls, ei2_model: EI2ModelHandle, frames, caption, num_frames=8, frame_stride=1, size=512,
                run_name="", resume=False, **params) -> io.NodeOutput:
        import comfy.model_management as mm

        config = TUNE.config(params).validate()
        ckpt = checkpoint_path(run_name.strip()) if run_name.strip() else None
        if resume and ckpt is None:
            raise ValueError("resume: needs a run_name naming the checkpoint to continue")
        bb = ei2_model.backbone.backbone
        device = rt.compute_device()
        if device.type != "cpu":
            mm.unload_all_models()
            mm.soft_empty_cache()
        with rt.on_compute_device([bb.vae, bb.text_encoder]):
            model, result, used = ei2_tune(
                bb, ei2_model.config, frames, caption, config, loras=ei2_model.loras, tuned=ei2_model.tuned,
                num_frames=int(num_frames), stride=int(frame_stride), size=int(size), device=device,
                checkpoint_path=ckpt, resume=bool(resume), callback=rt.progress_callback(config.steps))
        if device.type != "cpu":
            model.to(rt.offload_device())
            mm.soft_empty_cache()
        # a resumed run's history comes from its checkpoint; otherwise tuning continues the input's
        history = (() if result.resumed_from else tuple(ei2_model.history)) + tuple(result.history)
        info = {"steps": result.steps_done, "learning_rate": config.learning_rate, "seed": config.seed,
                "caption": caption, "frames": int(used.shape[0]), "size": list(used.shape[1:3]),
                "resumed_from": result.resumed_from}
        handle = EI2ModelHandle(ei2_model.backbone, ei2_model.config, tuned=tuned_state_dict(model),
                                history=history, info=info, name=f"{ei2_model.name} tuned", module=model)
        curve = render_loss_curve(list(history), resumed_from=result.resumed_from)
        return io.NodeOutput(handle, used, curve)


class EI2SaveTuned(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_EI2SaveTuned",
            display_name="FDD EI² Save Tuned Weights",
            category=CATEGORY,
            description="Saves only the tuned tensors of an EI² model (W_Q of self- and cross-attention, the "
                        "temporal modules) as .safetensors in models/fdd_ei2, with the inflation settings and "
                        "loss history in the metadata, for 'FDD EI² Load Tuned Weights'.",
            is_output_node=True,
            inputs=[
                EI2Model.Input("ei2_model", tooltip="A tuned model from 'FDD EI² One-shot Tune'."),
                io.String.Input("filename_prefix", default="ei2_tuned",
                                tooltip="File name prefix inside models/fdd_ei2 (may contain sub-folders); "
                                        "a counter is appended: PREFIX_00001.safetensors."),
            ],
            outputs=[io.String.Output(display_name="file")],
        )

    @classmethod
    def execute(cls, ei2_model: EI2ModelHandle, filename_prefix="ei2_tuned") -> io.NodeOutput:
        if ei2_model.tuned is None:
            raise ValueError("ei2_model: this model is not tuned yet; connect 'FDD EI² One-shot Tune' first")
        root = os.path.realpath(ei2_folder())
        os.makedirs(root, exist_ok=True)
        prefix = (filename_prefix or "ei2_tuned").strip().replace("\\", "/")
        sub = os.path.dirname(prefix)
        target_dir = rt.inside(root, sub) if sub else root  # realpath: a link inside cannot point out
        if target_dir is None:
            raise ValueError(f"filename_prefix: {filename_prefix!r} points outside models/{FOLDER}")
        base = os.path.basename(prefix) or "ei2_tuned"
        os.makedirs(target_dir, exist_ok=True)
        counter = 1
        taken = {f for f in os.listdir(target_dir)}
        while f"{base}_{counter:05d}.safetensors" in taken:
            counter += 1
        path = os.path.join(target_dir, f"{base}_{counter:05d}.safetensors")
        info = dict(ei2_model.info, backbone=ei2_model.backbone.name,
                    loras=ei2_model.backbone.lora_names)
        write_tuned_weights(path, ei2_model.tuned, ei2_model.config, base_fingerprint(ei2_model.backbone.backbone.unet),
                            list(ei2_model.history), info)
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        return io.NodeOutput(rel, ui=ui.PreviewText(f"saved models/{FOLDER}/{rel}"))


class EI2LoadTuned(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_EI2LoadTuned",
            display_name="FDD EI² Load Tuned Weights",
            category=CATEGORY,
            description="Loads EI² tuned weights (or a tuning checkpoint) from models/fdd_ei2 onto a backbone: "
                        "the backbone's UNet is inflated with the settings stored in the file and the tuned "
                        "tensors are loaded.",
            inputs=[
                Backbone.Input("backbone", tooltip="The SD 1.x backbone the weights were tuned on (with the "
                                                   "same LoRAs)."),
                io.Combo.Input("tuned_weights", options=rt.list_files(FOLDER),
                               tooltip="A .safetensors file in models/fdd_ei2 written by 'FDD EI² Save Tuned "
                                       "Weights', or a checkpoint in models/fdd_ei2/checkpoints."),
            ],
            outputs=[EI2Model.Output(display_name="ei2_model"), io.Image.Output(display_name="loss_curve")],
        )

    @classmethod
    def execute(cls, backbone: BackboneHandle, tuned_weights: str) -> io.NodeOutput:
        path = rt.resolve_file(FOLDER, tuned_weights, "tuned_weights")
        tw = rt.CACHE.get("ei2_tuned", path, lambda: read_tuned_weights(path))
        check_tuned_base(tw, backbone.backbone.unet, backbone.name)
        handle = EI2ModelHandle(backbone, tw.config, tuned=tw.tensors, history=tuple(tw.history),
                                info=dict(tw.train_info), name=tuned_weights)
        handle.get_module()  # check the weights fit the backbone now, with the file named in the error
        return io.NodeOutput(handle, render_loss_curve(tw.history, title=f"EI2 tuning loss: {tuned_weights}"))


class EI2Edit(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_EI2Edit",
            display_name="FDD EI² Edit Video",
            category=CATEGORY,
            description="Edits a video with a tuned EI² model (EI² §4.1 Fig. 2b): DDIM inversion of the frames "
                        "with the inversion prompt, then DDIM sampling with the edit prompt and classifier-free "
                        "guidance. Feed it the frames output of the tune node.",
            inputs=[
                EI2Model.Input("ei2_model", tooltip="A tuned model ('FDD EI² One-shot Tune' or 'Load Tuned "
                                                    "Weights'); an untuned inflated model edits frame by frame "
                                                    "plus FFAM."),
                io.Image.Input("frames", tooltip="The frames to edit, IMAGE [frames, H, W, 3]: ideally the "
                                                 "tune node's frames output (the frames the model learned)."),
                io.String.Input("edit_prompt", default="", multiline=True,
                                tooltip="The prompt describing the edited video (e.g. the caption with the "
                                        "subject or style changed)."),
                io.String.Input("inversion_prompt", default="", multiline=True,
                                tooltip="Prompt used for DDIM inversion (Tune-A-Video: empty)."),
                io.String.Input("negative_prompt", default="", multiline=True,
                                tooltip="Prompt of the unconditional branch of classifier-free guidance."),
                *EDIT.inputs(),
                io.Int.Input("size", default=0, min=0, max=4096, step=8,
                             tooltip="Longer side the frames are processed at; 0 = as given (the tune "
                                     "node's frames are already at the tuning size). The output has the "
                                     "input's size."),
            ],
            outputs=[io.Image.Output(display_name="frames"),
                     io.Latent.Output(display_name="latent", tooltip=rt.LATENT_TOOLTIP)],
        )

    @classmethod
    def execute(cls, ei2_model: EI2ModelHandle, frames, edit_prompt, inversion_prompt="", negative_prompt="",
                size=0, **params) -> io.NodeOutput:
        config = EDIT.config(params).validate()
        bb = ei2_model.backbone.backbone
        model = ei2_model.get_module()
        total = config.steps * (2 if config.init == "inversion" else 1)
        with rt.on_compute_device([bb.vae, bb.text_encoder, model]):
            out, latents = ei2_edit(bb, model, frames, edit_prompt, inversion_prompt=inversion_prompt,
                                    negative_prompt=negative_prompt, config=config, loras=ei2_model.loras,
                                    size=int(size), callback=rt.progress_callback(total), return_latents=True)
        return io.NodeOutput(out, rt.core_latent(latents, bb.scaling_factor))
