"""ComfyUI glue shared by the nodes: model folders, device / dtype choice, caching, progress.

No algorithm code here: everything numerical lives in ``fdd``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Callable

import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths

log = logging.getLogger("fdd")

#: model folders this pack reads besides ComfyUI's own (name -> extensions)
PACK_FOLDERS = {
    "animatediff_models": folder_paths.supported_pt_extensions,
    # EI² one-shot tuned weights (only the tuned tensors, safetensors)
    "fdd_ei2": {".safetensors"},
    # evaluation models: clip/<folder>, pickscore/<folder>, viclip/<folder> (nodes/metrics.py)
    "fdd_metrics": folder_paths.supported_pt_extensions | {".json", ".txt", ".gz"},
    # DINOv2 folders (FDD discriminator features) and FDD datasets (clips + manifest)
    "dinov2": {".json", ".safetensors"},
    "fdd_datasets": {".jsonl", ".csv"},
}


#: the toy-world models shipped inside the pack (python -m fdd.toy ship): one sub-folder per
#: ComfyUI model category, appended AFTER the user's own folders of that category
SHIPPED_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "toy")


def register_model_folders() -> None:
    """Register the pack's model folders under ComfyUI's models dir (``animatediff_models``, the
    AnimateDiff convention, and ``fdd_ei2``...), keeping any paths extra_model_paths.yaml gave
    them, and append the shipped toy models' category folders, so the loader nodes list their
    files with no download."""
    for name, exts in PACK_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, old_exts = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, set(old_exts) | set(exts))
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(exts))
    if os.path.isdir(SHIPPED_MODELS):
        for category in sorted(os.listdir(SHIPPED_MODELS)):
            path = os.path.join(SHIPPED_MODELS, category)
            if os.path.isdir(path) and category in folder_paths.folder_names_and_paths \
                    and path not in folder_paths.get_folder_paths(category):
                folder_paths.add_model_folder_path(category, path)


# once, when the pack is imported (before any schema lists a folder); idempotent, so ComfyUI's
# extension hook may call it again
register_model_folders()


def save_output_json(text: str, prefix: str) -> str:
    """Write ``text`` as ``prefix_NNNNN_.json`` in ComfyUI's output folder, atomically; returns
    the name relative to the output folder."""
    out_dir = folder_paths.get_output_directory()
    folder, fname, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir)
    name = f"{fname}_{counter:05}_.json"
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return os.path.join(subfolder, name)


def list_files(folder: str, hide_inside: Callable[[str], bool] | None = None) -> list[str]:
    """The files of a ComfyUI model folder (relative names). With ``hide_inside``, files that lie
    inside a sub-folder for which ``hide_inside(path)`` holds (a diffusers model folder, listed
    once as 'diffusers/NAME' instead) are left out: their inner weight files are not loadable on
    their own."""
    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    if hide_inside is None:
        return names
    roots = [r for r in folder_paths.get_folder_paths(folder) if os.path.isdir(r)]

    def inside_model_folder(name: str) -> bool:
        parts = name.replace("\\", "/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            rel = os.path.join(*parts[:i])
            if any(os.path.isdir(os.path.join(r, rel)) and hide_inside(os.path.join(r, rel)) for r in roots):
                return True
        return False

    return [n for n in names if not inside_model_folder(n)]


def list_subfolders(folder: str, marker: Callable[[str], bool]) -> list[str]:
    """Sub-folders (relative names) of a ComfyUI model folder for which ``marker(path)`` holds."""
    out = []
    try:
        roots = folder_paths.get_folder_paths(folder)
    except KeyError:
        return out
    for root in roots:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            p = os.path.join(root, name)
            if os.path.isdir(p) and marker(p):
                out.append(name)
    return out


def inside(root: str, name: str) -> str | None:
    """``root/name`` resolved with ``realpath`` (symlinks followed), or None when that lies
    outside ``root`` (an absolute name, ``..``, or a link pointing out)."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, name))
    return path if path != base and os.path.commonpath([path, base]) == base else None


def resolve_folder(folder: str, name: str, input_name: str) -> str:
    """A sub-folder of one of ComfyUI's ``folder`` model folders; nothing outside them."""
    roots = folder_paths.get_folder_paths(folder)
    for root in roots:
        p = inside(root, name)
        if p is not None and os.path.isdir(p):
            return p
    raise ValueError(f"{input_name}: no folder named {name!r} inside ComfyUI's '{folder}' model folders "
                     f"({', '.join(roots)}); paths outside them are refused")


def resolve_file(folder: str, name: str, input_name: str) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise ValueError(f"{input_name}: {name!r} is not in ComfyUI's '{folder}' model folders "
                         f"({', '.join(folder_paths.get_folder_paths(folder))})")
    return path


def comfy_sd1_tokenizer_dir() -> str:
    """ComfyUI's bundled SD 1.x CLIP tokenizer files (``comfy/sd1_tokenizer``)."""
    import comfy.sd1_clip

    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")


def compute_device() -> torch.device:
    return mm.get_torch_device()


def compute_dtype(device: torch.device) -> torch.dtype:
    """fp16 / bf16 where ComfyUI's model management says the device supports it, else fp32."""
    if device.type == "cpu":
        return torch.float32
    if mm.should_use_fp16(device):
        return torch.float16
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


def offload_device() -> torch.device:
    return mm.unet_offload_device()


class ModelCache:
    """Small LRU of loaded modules keyed by (kind, path, mtime, options), so re-queuing a
    graph does not reload files; entries are evicted beyond ``capacity``."""

    def __init__(self, capacity: int = 6):
        self.capacity = capacity
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(path: str) -> float:
        try:
            if os.path.isdir(path):
                return max((os.path.getmtime(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs),
                           default=os.path.getmtime(path))
            return os.path.getmtime(path)
        except OSError:
            return 0.0

    def get(self, kind: str, path: str, loader: Callable[[], Any], *options) -> Any:
        key = (kind, os.path.abspath(path), self._stamp(path)) + tuple(options)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        obj = loader()
        with self._lock:
            self._items[key] = obj
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return obj

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = ModelCache()


def _module_bytes(modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


@contextlib.contextmanager
def on_compute_device(modules):
    """Move ``modules`` to ComfyUI's compute device in its preferred dtype for the block, freeing
    ComfyUI-held models first if memory is short; move them back to the offload device after,
    so nothing of ours holds VRAM between runs."""
    device = compute_device()
    dtype = compute_dtype(device)
    if device.type != "cpu":
        mm.free_memory(int(_module_bytes(modules) * 1.3) + 512 * 1024 ** 2, device)
    for m in modules:
        current = next(m.parameters())
        if current.device != device or current.dtype != dtype:
            m.to(device=device, dtype=dtype)
    try:
        yield device, dtype
    finally:
        if device.type != "cpu":
            off = offload_device()
            for m in modules:
                m.to(off)
            mm.soft_empty_cache()


def progress_callback(total: int):
    """A ``fdd`` progress callback driving ComfyUI's ProgressBar; the bar's hook raises
    ComfyUI's interrupt exception when the user presses Cancel (POST /interrupt)."""
    bar = comfy.utils.ProgressBar(total)

    def cb(step: int, total_: int, latents=None) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(step, total_)

    return cb


# --------------------------------------------------------------------------------------------
# the video-edit stack shared by the sampling nodes

_STACKS: dict = {}
_STACKS_LOCK = threading.Lock()


def core_latent(latents: torch.Tensor, scaling_factor: float) -> dict:
    """A sampler's final video latent as ComfyUI's LATENT (``fdd.video.latent_batch``)."""
    from ..fdd.video import latent_batch

    return {"samples": latent_batch(latents, scaling_factor)}


LATENT_TOOLTIP = ("The edited frames' latents (raw VAE latents of the backbone, frames in the batch, at the "
                  "size the UNet ran at) for core nodes: VAEDecode, a hires / upscale pass, ...")


def get_stack(backbone, edit, video):
    """The ``VideoEditStack`` for a ``BackboneHandle`` and optional edit / video ``AdapterHandle``:
    one per (backbone, video adapter) so the motion UNet is built once; the edit adapter and the
    backbone's LoRAs are set per call."""
    from ..fdd.pipelines import VideoEditStack

    key = (id(backbone.backbone), id(video.module) if video else None)
    with _STACKS_LOCK:
        stack = _STACKS.get(key)
        if stack is None or stack.backbone is not backbone.backbone:
            stack = VideoEditStack(backbone.backbone, motion_adapter=video.module if video else None,
                                   motion_source=video.path if video else "")
            # keep only the latest few stacks: each holds a copy of the UNet weights
            while len(_STACKS) >= 2:
                _STACKS.pop(next(iter(_STACKS)))
            _STACKS[key] = stack
    stack.motion_scale = float(getattr(video, "motion_scale", 1.0)) if video else 1.0
    stack.controlnet = edit.module if edit else None
    stack.controlnet_source = edit.path if edit else ""
    stack.loras = backbone.lora_stack
    return stack
