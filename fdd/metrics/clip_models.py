"""CLIP and PickScore scorers loaded from local transformers folders (never from a hub).

A folder holds a ``CLIPModel`` (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``), its image processor (``preprocessor_config.json``) and its tokenizer
(``vocab.json`` + ``merges.txt``, or ``tokenizer.json``), in the folder itself or in
``processor/`` / ``tokenizer/`` sub-folders. This is the layout of ``openai/clip-vit-*``; for
PickScore put ``yuvalkirstain/PickScore_v1``'s model files together with the processor files of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the processor PickScore was trained with).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..memory import Placed
from ..models.errors import ModelLoadError

EXPECTED_FILES = ("config.json (a CLIPModel config)", "model.safetensors or pytorch_model.bin",
                  "preprocessor_config.json", "vocab.json + merges.txt or tokenizer.json")


def _expected(kind: str) -> str:
    return f"a transformers {kind} folder holding " + ", ".join(EXPECTED_FILES)


def _first_with(folder: str, names: tuple[str, ...], subdirs=("", "processor", "tokenizer")) -> str | None:
    for sub in subdirs:
        d = os.path.join(folder, sub) if sub else folder
        if all(os.path.isfile(os.path.join(d, n)) for n in names):
            return d
    return None


def check_clip_folder(folder: str, kind: str = "CLIP") -> None:
    """Raise :class:`ModelLoadError` naming ``folder`` and the expected files when something is missing."""
    exp = _expected(kind)
    if not os.path.isdir(folder):
        raise ModelLoadError(folder, "no such folder.", exp)
    missing = []
    if not os.path.isfile(os.path.join(folder, "config.json")):
        missing.append("config.json")
    if not any(os.path.isfile(os.path.join(folder, n)) for n in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors / pytorch_model.bin")
    if _first_with(folder, ("preprocessor_config.json",)) is None:
        missing.append("preprocessor_config.json")
    if _first_with(folder, ("vocab.json", "merges.txt")) is None and _first_with(folder, ("tokenizer.json",)) is None:
        missing.append("vocab.json + merges.txt (or tokenizer.json)")
    if missing:
        raise ModelLoadError(folder, f"missing {', '.join(missing)}.", exp)


class CLIPScorer(Placed):
    placed_on = "model"

    """A transformers ``CLIPModel`` with its image processor and tokenizer.

    ``embed_images`` / ``embed_text`` return the raw projected embeddings (not normalised); the
    metrics normalise. ``logit_scale`` is ``exp(model.logit_scale)`` (PickScore's multiplier).
    """

    def __init__(self, model, processor, tokenizer, source: str = "", kind: str = "CLIP"):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = tokenizer
        self.source = source
        self.kind = kind

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @torch.no_grad()
    def embed_images(self, frames: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """``frames`` ``[F, H, W, 3]`` in 0..1 -> ``[F, D]`` with the folder's image processor."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected [frames, H, W, 3], got {tuple(frames.shape)}")
        arr = (frames.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        out = []
        p = next(self.model.parameters())
        for s in range(0, len(arr), batch):
            px = self.processor(images=list(arr[s:s + batch]), return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=px.to(p.device, p.dtype))
            out.append(_pooled(feats).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """``[N, D]`` projected text embeddings (padded / truncated to the model's context)."""
        n = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=n,
                             return_tensors="pt")
        feats = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                             attention_mask=tok["attention_mask"].to(self.device))
        return _pooled(feats).float().cpu()


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projection; 4.x a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def load_clip(folder: str | os.PathLike, kind: str = "CLIP", device: str | torch.device = "cpu") -> CLIPScorer:
    """Load a CLIP (or PickScore: same format) folder; clear :class:`ModelLoadError` on problems."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = os.fspath(folder)
    check_clip_folder(folder, kind)
    exp = _expected(kind)
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(folder, f"transformers could not load a CLIPModel from it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).", exp) from exc
    try:
        processor = CLIPImageProcessor.from_pretrained(_first_with(folder, ("preprocessor_config.json",)),
                                                       local_files_only=True)
        tdir = _first_with(folder, ("vocab.json", "merges.txt")) or _first_with(folder, ("tokenizer.json",))
        tokenizer = CLIPTokenizer.from_pretrained(tdir, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(folder, f"the processor / tokenizer files could not be read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}).", exp) from exc
    return CLIPScorer(model.to(device), processor, tokenizer, source=folder, kind=kind)


def load_pickscore(folder: str | os.PathLike, device: str | torch.device = "cpu") -> CLIPScorer:
    """PickScore (Kirstain et al. 2023) is a fine-tuned CLIP-H: the same folder format."""
    return load_clip(folder, kind="PickScore", device=device)
