"""FDD alignment nodes (EVE §3.2): DINOv2 loader, dataset, and the trainer with progress, a
loss-curve image, interrupt -> checkpoint and resume."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..fdd.distill.config import DEFAULT_LORA_TARGETS, FDDConfig
from ..fdd.distill.dataset import FDDDataset
from ..fdd.distill.discriminators import load_dinov2
from ..fdd.distill.plot import render_loss_curve
from . import _runtime as rt
from ._inputs import ConfigInputs, PackNode
from .loaders import AdapterLoader, LoaderSpec
from .types import AdapterHandle, Backbone, BackboneHandle, EditAdapter, VideoAdapter

CATEGORY = "video edit (fdd)/training"
ALIGN = ConfigInputs(FDDConfig, ["iterations_sds", "global_batch", "micro_batch", "lr", "lora_rank", "k_steps",
                                 "timestep_sampling", "alpha", "beta", "lam", "sds_weighting", "generator_loss",
                                 "edit_teacher_cfg", "edit_teacher_image_cfg", "video_teacher_cfg",
                                 "teacher_sample_steps", "use_sds", "use_discriminators", "augment",
                                 "gradient_checkpointing", "dino_resolution", "seed", "checkpoint_every", "resume"])

Dino = io.Custom("FDD_DINO")
Dataset = io.Custom("FDD_DATASET")

def _is_dino(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg, encoding="utf-8") as fh:
        return '"dinov2' in fh.read()


def _is_dataset(path: str) -> bool:
    return any(f.endswith((".jsonl", ".csv")) for f in os.listdir(path))


@dataclass(frozen=True)
class DatasetHandle:
    dataset: Any
    name: str


class LoadDINOv2(AdapterLoader):
    SPEC = LoaderSpec(
        "FDD_LoadDINOv2", "FDD Load DINOv2 (discriminator features)",
        "Loads a DINOv2 ViT (e.g. facebook/dinov2-small) from a transformers folder in models/dinov2: the frozen "
        "feature network of FDD's discriminators (EVE §3.3.2).",
        "dino_name", "A folder in models/dinov2 with config.json and model.safetensors (the files of "
                     "facebook/dinov2-small; old and new key names load).",
        "dinov2", "dinov2", Dino, "dino", folders_only=_is_dino, category=CATEGORY)

    @staticmethod
    def load(path: str):
        return load_dinov2(path)


class FDDDatasetNode(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_Dataset",
            display_name="FDD Dataset (unsupervised edits)",
            category=CATEGORY,
            description="Opens and validates an unsupervised FDD dataset (EVE §4.0.2): clips plus a "
                        "JSON Lines / CSV manifest of (clip, instruction, output_caption, task). Missing "
                        "clips, empty captions, unknown tasks and too-short clips are reported with the "
                        "manifest line.",
            inputs=[
                io.Combo.Input("dataset_name", options=rt.list_subfolders("fdd_datasets", _is_dataset),
                               tooltip="A dataset folder in models/fdd_datasets (ComfyUI's registered "
                                       "dataset folders; paths elsewhere on the server are refused)."),
                io.String.Input("manifest", default="manifest.jsonl",
                                tooltip="Manifest file inside the folder: .jsonl (one JSON object per line) "
                                        "or .csv with header clip,instruction,output_caption,task."),
                io.Int.Input("num_frames", default=8, min=1, max=64,
                             tooltip="Frames per training clip (8 in the paper)."),
                io.Int.Input("width", default=512, min=16, max=2048, step=8,
                             tooltip="Training width in pixels (clips are scaled and centre-cropped)."),
                io.Int.Input("height", default=512, min=16, max=2048, step=8,
                             tooltip="Training height in pixels."),
                io.Int.Input("frame_stride", default=1, min=1, max=16,
                             tooltip="Take every n-th frame of a clip."),
            ],
            outputs=[Dataset.Output(display_name="dataset")],
        )

    @classmethod
    def execute(cls, dataset_name: str, manifest: str, num_frames: int, width: int, height: int,
                frame_stride: int) -> io.NodeOutput:
        folder = rt.resolve_folder("fdd_datasets", dataset_name, "dataset_name")
        ds = FDDDataset(folder, manifest.strip() or "manifest.jsonl", num_frames, height, width, frame_stride,
                        needs_clips=None)
        return io.NodeOutput(DatasetHandle(ds, dataset_name))


def _loras_dir(save_to: str) -> str:
    if save_to == "models/loras":
        return folder_paths.get_folder_paths("loras")[0]
    return os.path.join(folder_paths.get_output_directory(), "fdd", "loras")


class FDDAlign(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_Align",
            display_name="FDD Align Adapters (train LoRA)",
            category=CATEGORY,
            description="Factorized Diffusion Distillation (EVE §3.2): trains a LoRA on the backbone so the "
                        "stacked edit and video adapters edit videos, distilling the edit teacher (per frame) "
                        "and the video teacher with SDS and adversarial losses. Without a video adapter the "
                        "backbone's LoRAs are the second teacher (§4.4, personalised / stylised editing). "
                        "Progress every iteration; Cancel writes a checkpoint that 'resume' continues from.",
            inputs=[
                Backbone.Input("backbone", tooltip="The frozen backbone. For the edit+LoRA combination, stack the "
                                                   "subject / style LoRA on it with 'FDD Apply LoRA to Backbone'."),
                EditAdapter.Input("edit_adapter", tooltip="The image-edit adapter (ip2p ControlNet), the edit teacher."),
                Dino.Input("dino", tooltip="DINOv2 features for the discriminators (FDD Load DINOv2)."),
                Dataset.Input("dataset", tooltip="The unsupervised dataset (FDD Dataset)."),
                VideoAdapter.Input("video_adapter", optional=True,
                                   tooltip="The video adapter (AnimateDiff), the video teacher. Leave empty to align "
                                           "the edit adapter with the backbone's LoRAs instead (§4.4)."),
                io.Int.Input("iterations", default=1500, min=1, max=1000000,
                             tooltip="Total training iterations (1500 in the paper)."),
                *ALIGN.inputs("iterations_sds", "global_batch", "micro_batch", "lr", "lora_rank", "k_steps",
                              "timestep_sampling", "alpha", "beta", "lam", "sds_weighting", "generator_loss",
                              "edit_teacher_cfg", "edit_teacher_image_cfg", "video_teacher_cfg",
                              "teacher_sample_steps", "use_sds", "use_discriminators", "augment",
                              "gradient_checkpointing", "dino_resolution", "seed", "checkpoint_every"),
                io.String.Input("run_name", default="fdd_align",
                                tooltip="Checkpoints go to output/fdd/runs/<run_name>/checkpoint.pt."),
                *ALIGN.inputs("resume"),
                io.String.Input("lora_name", default="fdd_aligned_lora.safetensors",
                                tooltip="File name of the exported LoRA (kohya format, ComfyUI's LoraLoader reads it)."),
                io.Combo.Input("save_to", options=["output", "models/loras"], default="output",
                               tooltip="output: output/fdd/loras/; models/loras: the first loras folder, so "
                                       "LoRA loaders list it at once."),
            ],
            outputs=[Backbone.Output(display_name="backbone"),
                     io.Image.Output(display_name="loss_curve"),
                     io.String.Output(display_name="lora_path")],
        )

    @classmethod
    def execute(cls, backbone: BackboneHandle, edit_adapter: AdapterHandle, dino: AdapterHandle,
                dataset: DatasetHandle, video_adapter: AdapterHandle | None = None, iterations=1500,
                run_name="fdd_align", lora_name="fdd_aligned_lora.safetensors", save_to="output",
                **params) -> io.NodeOutput:
        from ..fdd.distill.trainer import make_trainer
        from ..fdd.models.lora import read_lora

        values = ALIGN.values(params)
        sds_iterations, use_sds = values["iterations_sds"], values["use_sds"]
        if sds_iterations > iterations:
            raise ValueError(f"sds_iterations: must be <= iterations ({iterations}), got {sds_iterations}")
        name = os.path.basename(run_name.strip()) or "fdd_align"
        lora_file = os.path.basename(lora_name.strip()) or "fdd_aligned_lora.safetensors"
        if not lora_file.endswith(".safetensors"):
            lora_file += ".safetensors"
        ds = dataset.dataset
        video = video_adapter is not None
        teacher_loras = backbone.lora_stack
        if not video and not teacher_loras:
            raise ValueError("video_adapter: connect a video adapter (edit+video), or stack a subject / style LoRA "
                             "on the backbone for the edit+LoRA combination (§4.4)")
        if video and teacher_loras:
            raise ValueError("backbone: LoRAs stacked on the backbone are the second teacher of the edit+LoRA "
                             "combination only; remove them, or disconnect the video adapter")
        if video and not ds.needs_clips:
            raise ValueError("dataset: the edit+video combination needs a dataset of clips")
        if not video and ds.needs_clips:
            raise ValueError("dataset: the edit+LoRA combination needs records with input_caption (no clips)")
        device = rt.compute_device()
        cfg = FDDConfig(
            backbone=backbone.backbone.source or backbone.name, controlnet=edit_adapter.path, dino=dino.path,
            motion_module=video_adapter.path if video else None, dataset=ds.folder, manifest=ds.manifest,
            motion_scale=float(getattr(video_adapter, "motion_scale", 1.0)) if video else 1.0,
            combination="edit+video" if video else "edit+lora",
            teacher_lora=None if video else ",".join(backbone.lora_names),
            num_frames=ds.num_frames, height=ds.height, width=ds.width, frame_stride=ds.frame_stride,
            **{**values, "iterations_sds": sds_iterations if use_sds else 0},
            iterations_adv=iterations - (sds_iterations if use_sds else 0), d_lr=values["lr"],
            lora_targets=DEFAULT_LORA_TARGETS,
            output_dir=os.path.join(folder_paths.get_output_directory(), "fdd", "runs", name),
            lora_name=lora_file, device=str(device)).validate()
        if device.type != "cpu":
            import comfy.model_management as mm

            mm.unload_all_models()
            mm.soft_empty_cache()
        loaded = (backbone.backbone, edit_adapter.module, video_adapter.module if video else None, dino.module,
                  None if video else teacher_loras)
        progress = rt.progress_callback(iterations)
        with torch.inference_mode(False), torch.enable_grad():
            trainer = make_trainer(cfg, loaded, device=device)  # private copies; shared modules untouched
            if trainer.step:
                progress(trainer.step, iterations, None)
            try:
                trainer.train(callback=progress)  # an interrupt writes the checkpoint, then propagates
                trainer.save_checkpoint()
                out_dir = _loras_dir(save_to)
                path = trainer.export_lora(os.path.join(out_dir, lora_file))
            finally:
                history = list(trainer.history)
                del trainer
                if device.type != "cpu":
                    import comfy.model_management as mm

                    mm.soft_empty_cache()
        lora = read_lora(path)
        aligned = BackboneHandle(backbone.backbone, backbone.name, backbone.loras).with_lora(lora, 1.0, lora_file)
        return io.NodeOutput(aligned, render_loss_curve(history), path)
