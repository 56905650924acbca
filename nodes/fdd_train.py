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
from ._inputs import PackNode
from .types import AdapterHandle, Backbone, BackboneHandle, EditAdapter, VideoAdapter

CATEGORY = "video edit (fdd)/training"

Dino = io.Custom("FDD_DINO")
Dataset = io.Custom("FDD_DATASET")

#: model folders these nodes read (also listed in the report for nodes/_runtime.PACK_FOLDERS)
FOLDERS = {"dinov2": {".json", ".safetensors"}, "fdd_datasets": {".jsonl", ".csv"}}


def _register_folders() -> None:
    """Make sure ComfyUI knows ``models/dinov2`` and ``models/fdd_datasets`` (kept if already
    registered, e.g. by extra_model_paths.yaml or the pack's folder list)."""
    for name, exts in FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, old = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, set(old) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(exts))


_register_folders()


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


class LoadDINOv2(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_LoadDINOv2",
            display_name="FDD Load DINOv2 (discriminator features)",
            category=CATEGORY,
            description="Loads a DINOv2 ViT (e.g. facebook/dinov2-small) from a transformers folder in "
                        "models/dinov2: the frozen feature network of FDD's discriminators (EVE §3.3.2).",
            inputs=[
                io.Combo.Input("dino_name", options=rt.list_subfolders("dinov2", _is_dino),
                               tooltip="A folder in models/dinov2 with config.json and model.safetensors "
                                       "(the files of facebook/dinov2-small; old and new key names load)."),
            ],
            outputs=[Dino.Output(display_name="dino")],
        )

    @classmethod
    def execute(cls, dino_name: str) -> io.NodeOutput:
        path = rt.resolve_folder("dinov2", dino_name, "dino_name")
        model = rt.CACHE.get("dinov2", path, lambda: load_dinov2(path))
        return io.NodeOutput(AdapterHandle(model, dino_name, path))


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
                io.Int.Input("sds_iterations", default=1000, min=0, max=1000000,
                             tooltip="Phase 1 length: iterations with SDS only; the adversarial terms join "
                                     "after it (1000 in the paper)."),
                io.Int.Input("global_batch", default=64, min=1, max=4096,
                             tooltip="Samples per optimiser step, reached by gradient accumulation (64)."),
                io.Int.Input("micro_batch", default=1, min=1, max=64,
                             tooltip="Samples per forward / backward pass (memory vs speed)."),
                io.Float.Input("learning_rate", default=1e-5, min=0.0, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate of the LoRA and the discriminator heads (1e-5, no warm-up)."),
                io.Int.Input("lora_rank", default=16, min=1, max=256, tooltip="Rank of the aligned LoRA."),
                io.Int.Input("k_steps", default=3, min=1, max=50,
                             tooltip="Student DDIM steps per generation, back-propagated through (3 in the paper)."),
                io.Combo.Input("timestep_sampling", options=["kbin", "uniform", "random"], default="kbin",
                               tooltip="kbin: one step drawn in each of k equal bins (§3.3.1); uniform: the same "
                                       "k DDIM steps every time (the paper's ablation)."),
                io.Float.Input("alpha", default=0.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight α of the edit-teacher terms."),
                io.Float.Input("beta", default=0.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight β of the video-teacher terms."),
                io.Float.Input("sds_lambda", default=2.5, min=0.0, max=100.0, step=0.1,
                               tooltip="λ, the weight of SDS against the adversarial loss (2.5, as ADD)."),
                io.Combo.Input("sds_weighting", options=["alpha", "sigma2", "constant"], default="alpha",
                               tooltip="c(t) of SDS: alpha = sqrt(alpha_bar_t) (ADD), sigma2 = 1 - alpha_bar_t "
                                       "(DreamFusion), constant = 1."),
                io.Combo.Input("generator_loss", options=["add", "paper"], default="add",
                               tooltip="Student hinge loss: add = -E[D] (ADD / Geometric GAN); paper = "
                                       "-E[max(0, 1 + D)] as printed (no gradient once D < -1)."),
                io.Float.Input("edit_teacher_cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Text guidance of the edit teacher (SDS and its samples)."),
                io.Float.Input("edit_teacher_image_cfg", default=1.5, min=0.0, max=30.0, step=0.05,
                               tooltip="Image guidance of the edit teacher (InstructPix2Pix)."),
                io.Float.Input("video_teacher_cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the video (or LoRA) teacher."),
                io.Int.Input("teacher_sample_steps", default=20, min=1, max=200,
                             tooltip="DDIM steps of the teachers' samples the discriminators see as real."),
                io.Boolean.Input("use_sds", default=True,
                                 tooltip="Off: the 'w/o SDS' ablation; the SDS-only phase is then skipped "
                                         "(sds_iterations ignored) and every iteration is adversarial."),
                io.Boolean.Input("use_discriminators", default=True,
                                 tooltip="Off: the 'w/o discriminators' ablation (SDS only)."),
                io.Boolean.Input("augment", default=True,
                                 tooltip="DiffAugment (colour, translation, cutout) before the discriminators."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute each student step in the backward: far less memory, ~1.3x time."),
                io.Int.Input("dino_resolution", default=224, min=14, max=1024,
                             tooltip="Image size fed to DINOv2 (rounded to its patch size)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of every random draw; the same seed reproduces the run."),
                io.Int.Input("checkpoint_every", default=100, min=0, max=100000,
                             tooltip="Write a checkpoint every N iterations (0: only at the end and on Cancel)."),
                io.String.Input("run_name", default="fdd_align",
                                tooltip="Checkpoints go to output/fdd/runs/<run_name>/checkpoint.pt."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from the run's checkpoint when one exists."),
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
                sds_iterations=1000, global_batch=64, micro_batch=1, learning_rate=1e-5, lora_rank=16, k_steps=3,
                timestep_sampling="kbin", alpha=0.5, beta=0.5, sds_lambda=2.5, sds_weighting="alpha",
                generator_loss="add", edit_teacher_cfg=7.5, edit_teacher_image_cfg=1.5, video_teacher_cfg=7.5,
                teacher_sample_steps=20, use_sds=True, use_discriminators=True, augment=True,
                gradient_checkpointing=True, dino_resolution=224, seed=0, checkpoint_every=100,
                run_name="fdd_align", resume=True, lora_name="fdd_aligned_lora.safetensors",
                save_to="output") -> io.NodeOutput:
        from ..fdd.distill.trainer import make_trainer
        from ..fdd.models.lora import read_lora

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
            combination="edit+video" if video else "edit+lora",
            teacher_lora=None if video else ",".join(backbone.lora_names),
            num_frames=ds.num_frames, height=ds.height, width=ds.width, frame_stride=ds.frame_stride,
            iterations_sds=sds_iterations if use_sds else 0,
            iterations_adv=iterations - (sds_iterations if use_sds else 0), global_batch=global_batch,
            micro_batch=micro_batch, lr=learning_rate, d_lr=learning_rate, lora_rank=lora_rank,
            lora_targets=DEFAULT_LORA_TARGETS, k_steps=k_steps, timestep_sampling=timestep_sampling,
            alpha=alpha, beta=beta, lam=sds_lambda, sds_weighting=sds_weighting, generator_loss=generator_loss,
            edit_teacher_cfg=edit_teacher_cfg, edit_teacher_image_cfg=edit_teacher_image_cfg,
            video_teacher_cfg=video_teacher_cfg, teacher_sample_steps=teacher_sample_steps, use_sds=use_sds,
            use_discriminators=use_discriminators, augment=augment, gradient_checkpointing=gradient_checkpointing,
            dino_resolution=dino_resolution, seed=seed, checkpoint_every=checkpoint_every, resume=resume,
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
