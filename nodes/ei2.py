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
from ..fdd.ei2.config import (
    ATTENTION_MODES,
    CENTERING_AXES,
    DOWNSAMPLE_MODES,
    IDENTITY_INITS,
    TEMPORAL_NORMS,
    TEMPORAL_POSITIONS,
)
from ..fdd.ei2 import MIXED_PRECISION, base_fingerprint, check_tuned_base
from . import _runtime as rt
from ._inputs import PackNode
from .types import Backbone, BackboneHandle

CATEGORY = "video edit (fdd)/EI²"
FOLDER = "fdd_ei2"
EI2Model = io.Custom("FDD_EI2_MODEL")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


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

    paths = folder_paths.get_folder_paths(FOLDER)
    if not paths:
        rt.register_model_folders()
        paths = folder_paths.get_folder_paths(FOLDER)
    return paths[0]


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
                io.Combo.Input("spatial_attention", options=list(ATTENTION_MODES), default="ffam",
                               tooltip="Self-attention of every block: ffam = EI²'s fine-coarse frame "
                                       "attention (own frame at full resolution + other frames downsampled "
                                       "by ffam_ratio); sparse_causal = Tune-A-Video (first + previous "
                                       "frame); full = every token of every frame (memory grows with "
                                       "frames²); frame = per-frame, no inflation."),
                io.Int.Input("ffam_ratio", default=2, min=1, max=64,
                             tooltip="r of FFAM (Eq. 10): other frames are downsampled r x r at each layer's "
                                     "own size, so a query sees l + (n-1)·l/r² keys. The paper uses 2 or 4; "
                                     "1 = full resolution."),
                io.Combo.Input("ffam_downsample", options=list(DOWNSAMPLE_MODES), default="avg",
                               tooltip="How FFAM downsamples other frames: avg = r x r average pooling; "
                                       "nearest = every r-th token."),
                io.Boolean.Input("temporal_module", default=True,
                                 tooltip="Add the temporal module (STAM or its baselines) to every block; "
                                         "off = spatial attention only."),
                io.Combo.Input("temporal_norm", options=list(TEMPORAL_NORMS), default="instance_centering",
                               tooltip="Normalisation before the temporal attention: instance_centering = "
                                       "STAM (Eq. 6, subtract the mean, no scaling); layer_norm = Tune-A-"
                                       "Video's TA module; layer_norm_no_affine = LN*; instance_norm = IN; "
                                       "none = no normalisation (EI² Fig. 4 ablation)."),
                io.Combo.Input("centering_axis", options=list(CENTERING_AXES), default="frames",
                               tooltip="What instance centering averages over: frames = Eq. 6 (per channel "
                                       "and location, over time: keeps the temporal variance); channels = "
                                       "per token over features (LayerNorm's centring); frames_channels = "
                                       "over both."),
                io.Boolean.Input("spectral_norm", default=True,
                                 tooltip="Spectral-normalise the temporal attention's value and output "
                                         "projections (Eq. 8). Off = 'IC w/o SN' / Tune-A-Video."),
                io.Combo.Input("identity_init", options=list(IDENTITY_INITS), default="gate",
                               tooltip="How the temporal module starts as the identity: gate = output x "
                                       "tanh(zero-initialised gate) (works with spectral norm); zero_output = "
                                       "zero output projection as Tune-A-Video (spectral_norm must be off); "
                                       "none = the paper as written (not the identity at start)."),
                io.Combo.Input("temporal_position", options=list(TEMPORAL_POSITIONS), default="after_ff",
                               tooltip="Where the temporal module sits: after_ff = end of each transformer "
                                       "block (Tune-A-Video's code); after_cross_attention = before the "
                                       "feed-forward."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the new temporal-module weights (same seed, same model)."),
            ],
            outputs=[EI2Model.Output(display_name="ei2_model")],
        )

    @classmethod
    def execute(cls, backbone, spatial_attention="ffam", ffam_ratio=2, ffam_downsample="avg",
                temporal_module=True, temporal_norm="instance_centering", centering_axis="frames",
                spectral_norm=True, identity_init="gate", temporal_position="after_ff", seed=0) -> io.NodeOutput:
        config = InflationConfig(attention=spatial_attention, ffam_ratio=int(ffam_ratio),
                                 ffam_downsample=ffam_downsample, temporal_module=bool(temporal_module),
                                 temporal_norm=temporal_norm, centering_axis=centering_axis,
                                 spectral_norm=bool(spectral_norm), identity_init=identity_init,
                                 temporal_position=temporal_position, seed=int(seed)).validate()
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
                io.Int.Input("steps", default=500, min=1, max=100000,
                             tooltip="Optimisation steps (paper: 500)."),
                io.Float.Input("learning_rate", default=3e-5, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate (paper: 3e-5)."),
                io.Int.Input("num_frames", default=8, min=0, max=1024,
                             tooltip="Frames tuned on (paper: 8); 0 = every frame the stride reaches."),
                io.Int.Input("frame_stride", default=1, min=1, max=1024,
                             tooltip="Take every k-th frame of the clip (from the first)."),
                io.Int.Input("size", default=512, min=0, max=4096, step=8,
                             tooltip="Longer side in pixels the frames are resized to (paper: 512); 0 keeps "
                                     "the input size. Sides are cut to multiples the UNet accepts."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the timesteps and noise drawn each step."),
                io.Float.Input("gate_lr_scale", default=100.0, min=0.001, max=100000.0, step=0.1,
                               tooltip="Learning-rate multiplier of the temporal modules' zero-initialised "
                                       "gates (identity_init 'gate'): at lr 3e-5 a gate could only reach "
                                       "~0.015 in 500 steps; 1 = plain lr."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute activations in the backward pass: much less memory, "
                                         "about a third slower (Tune-A-Video uses it)."),
                io.Combo.Input("mixed_precision", options=list(MIXED_PRECISION), default="auto",
                               tooltip="Autocast on GPU: auto = bf16 where supported, else fp16 with loss "
                                       "scaling; no = fp32. CPU always runs fp32."),
                io.Int.Input("checkpoint_every", default=100, min=0, max=100000,
                             tooltip="Write a resumable checkpoint every N steps to models/fdd_ei2/"
                                     "checkpoints/<run_name>.safetensors (0 = never; with a run_name a "
                                     "Cancel still writes one)."),
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
    def execute(cls, ei2_model: EI2ModelHandle, frames, caption, steps=500, learning_rate=3e-5, num_frames=8,
                frame_stride=1, size=512, seed=0, gate_lr_scale=100.0, gradient_checkpointing=True,
                mixed_precision="auto", checkpoint_every=100, run_name="", resume=False) -> io.NodeOutput:
        import comfy.model_management as mm

        config = TuneConfig(steps=int(steps), learning_rate=float(learning_rate), seed=int(seed),
                            gate_lr_scale=float(gate_lr_scale), gradient_checkpointing=bool(gradient_checkpointing),
                            mixed_precision=mixed_precision, checkpoint_every=int(checkpoint_every)).validate()
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
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps, used for the inversion and again for sampling "
                                     "(Tune-A-Video: 50). Progress counts both."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale (paper: 7.5)."),
                io.Combo.Input("init", options=["inversion", "noise"], default="inversion",
                               tooltip="Start from the DDIM-inverted input (EI²) or from seeded noise."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise when init is 'noise' (unused with inversion)."),
                io.Int.Input("size", default=0, min=0, max=4096, step=8,
                             tooltip="Longer side the frames are processed at; 0 = as given (the tune "
                                     "node's frames are already at the tuning size). The output has the "
                                     "input's size."),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, ei2_model: EI2ModelHandle, frames, edit_prompt, inversion_prompt="", negative_prompt="",
                steps=50, cfg=7.5, init="inversion", seed=0, size=0) -> io.NodeOutput:
        config = EditConfig(steps=int(steps), cfg=float(cfg), init=init, seed=int(seed)).validate()
        bb = ei2_model.backbone.backbone
        model = ei2_model.get_module()
        total = config.steps * (2 if config.init == "inversion" else 1)
        with rt.on_compute_device([bb.vae, bb.text_encoder, model]):
            out = ei2_edit(bb, model, frames, edit_prompt, inversion_prompt=inversion_prompt,
                           negative_prompt=negative_prompt, config=config, loras=ei2_model.loras, size=int(size),
                           callback=rt.progress_callback(total))
        return io.NodeOutput(out)
