"""Measuring one edit: embeddings computed once per clip / caption and shared by the metrics."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from . import definitions as D
from .clip_models import CLIPScorer, load_clip, load_pickscore
from .viclip import ViCLIPScorer, load_viclip

#: every metric key :func:`evaluate_edit` can report, with the model it needs (None: model-free)
METRIC_KEYS = {
    "clip_frame_consistency": "clip", "clip_frame_consistency_x100": "clip",
    "clip_text_alignment": "clip", "clip_text_alignment_x100": "clip", "clip_dir": "clip",
    "pickscore": "pickscore", "viclip_dir": "viclip", "viclip_out": "viclip",
    "structure_ssim": None, "edge_agreement": None, "temporal_flicker": None,
    "temporal_flicker_input": None,
}
#: metrics that need the input caption
DIRECTION_KEYS = ("clip_dir", "viclip_dir")


@dataclass
class MetricModels:
    """The evaluation models; any may be None (its metrics are then skipped)."""

    clip: CLIPScorer | None = None
    pickscore: CLIPScorer | None = None
    viclip: ViCLIPScorer | None = None

    def describe(self) -> dict:
        return {k: (getattr(self, k).source if getattr(self, k) is not None else None)
                for k in ("clip", "pickscore", "viclip")}


def load_metric_models(clip: str | os.PathLike | None = None, pickscore: str | os.PathLike | None = None,
                       viclip: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> MetricModels:
    """Load the given local folders (see :func:`fdd.metrics.clip_models.load_clip` and
    :func:`fdd.metrics.viclip.load_viclip` for the expected files)."""
    return MetricModels(clip=load_clip(clip, device=device) if clip else None,
                        pickscore=load_pickscore(pickscore, device=device) if pickscore else None,
                        viclip=load_viclip(viclip, device=device) if viclip else None)


def clip_fingerprint(frames: torch.Tensor) -> str:
    """A content hash of a clip (shape + bytes), the cache key of its embeddings."""
    t = frames.detach().float().cpu().contiguous()
    h = hashlib.sha1(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class EmbeddingCache:
    """Embeddings by (model, clip content or caption): each clip / caption is embedded once per
    model, however many metrics or benchmark items use it. ``computed`` counts model calls."""

    store: dict = field(default_factory=dict)
    computed: int = 0

    def get(self, key: tuple, fn) -> Any:
        if key not in self.store:
            self.store[key] = fn()
            self.computed += 1
        return self.store[key]

    def images(self, scorer: CLIPScorer, frames: torch.Tensor, fp: str | None = None) -> torch.Tensor:
        return self.get(("img", id(scorer), fp or clip_fingerprint(frames)), lambda: scorer.embed_images(frames))

    def video(self, scorer: ViCLIPScorer, frames: torch.Tensor, fp: str | None = None) -> torch.Tensor:
        return self.get(("vid", id(scorer), fp or clip_fingerprint(frames)), lambda: scorer.embed_video(frames))

    def text(self, scorer, caption: str) -> torch.Tensor:
        return self.get(("txt", id(scorer), caption), lambda: scorer.embed_text([caption])[0])


def evaluate_edit(models: MetricModels, input_frames: torch.Tensor, output_frames: torch.Tensor,
                  output_caption: str, input_caption: str = "", cache: EmbeddingCache | None = None,
                  ) -> dict[str, Any]:
    """All metrics the given models allow for one edit.

    ``input_frames`` / ``output_frames`` ``[F, H, W, 3]`` in 0..1 (ComfyUI IMAGE). Returns
    ``{"metrics": {key: float}, "skipped": {key: reason}}`` with the keys of :data:`METRIC_KEYS`.
    The direction metrics need ``input_caption``. Each clip and caption is embedded once per
    model (``cache`` shares them across calls, e.g. one input clip edited with several prompts).
    """
    for name, fr in (("input_frames", input_frames), ("output_frames", output_frames)):
        if fr.ndim != 4 or fr.shape[-1] != 3 or fr.shape[0] < 1:
            raise ValueError(f"{name}: expected an IMAGE batch [frames, H, W, 3], got {tuple(fr.shape)}")
    if not output_caption.strip():
        raise ValueError("output_caption: the metrics need a caption of the desired output video")
    cache = cache if cache is not None else EmbeddingCache()
    fp_in, fp_out = clip_fingerprint(input_frames), clip_fingerprint(output_frames)
    m: dict[str, float] = {}
    skipped: dict[str, str] = {}
    have_in_cap = bool(input_caption.strip())
    if models.clip is not None:
        e_out = cache.images(models.clip, output_frames, fp_out)
        t_out = cache.text(models.clip, output_caption)
        m["clip_frame_consistency"] = D.clip_frame_consistency(e_out)
        m["clip_frame_consistency_x100"] = D.x100(m["clip_frame_consistency"])
        m["clip_text_alignment"] = D.clip_text_alignment(e_out, t_out)
        m["clip_text_alignment_x100"] = D.x100(m["clip_text_alignment"])
        if have_in_cap:
            e_in = cache.images(models.clip, input_frames, fp_in)
            a, b = D.align_frames(e_in, e_out)
            m["clip_dir"] = D.direction_similarity(a, b, cache.text(models.clip, input_caption), t_out)
    if models.pickscore is not None:
        p_out = cache.images(models.pickscore, output_frames, fp_out)
        m["pickscore"] = D.pick_score(p_out, cache.text(models.pickscore, output_caption),
                                      models.pickscore.logit_scale)
    if models.viclip is not None:
        v_out = cache.video(models.viclip, output_frames, fp_out)
        vt_out = cache.text(models.viclip, output_caption)
        m["viclip_out"] = D.viclip_output_similarity(v_out, vt_out)
        if have_in_cap:
            v_in = cache.video(models.viclip, input_frames, fp_in)
            m["viclip_dir"] = D.direction_similarity(v_in, v_out, cache.text(models.viclip, input_caption), vt_out)
    m["structure_ssim"] = D.structure_ssim(input_frames, output_frames)
    m["edge_agreement"] = D.edge_agreement(input_frames, output_frames)
    m["temporal_flicker"] = D.temporal_flicker(output_frames)
    m["temporal_flicker_input"] = D.temporal_flicker(input_frames)
    for key, need in METRIC_KEYS.items():
        if key in m:
            continue
        if need is not None and getattr(models, need) is None:
            skipped[key] = f"no {need} model given"
        elif key in DIRECTION_KEYS and not have_in_cap:
            skipped[key] = "no input caption given"
    ordered = {k: m[k] for k in METRIC_KEYS if k in m}
    return {"metrics": ordered, "skipped": skipped}
