"""ViCLIP (InternVid's video CLIP, Wang et al. 2023), written from its published architecture so
the released ``ViClip-InternVid-10M-FLT.pth`` loads with a strict ``load_state_dict``.

Architecture (the reference's ``viclip.py`` / ``viclip_vision.py`` / ``viclip_text.py``):

- vision tower (``vision_encoder.*``): a CLIP ViT whose patch embedding ``conv1`` is a
  ``Conv3d`` with a temporal kernel (1 in the release), a spatial positional embedding shared by
  all frames, a learnt ``temporal_positional_embedding`` ``[1, T, width]`` (T = 8) added to each
  frame's patch tokens, then ONE joint transformer over the class token plus the patch tokens of
  all T frames (spatio-temporal attention), ``ln_post`` and the projection ``proj`` applied to
  the class token: one embedding per video;
- text tower (``text_encoder.*``): the CLIP text transformer (causal mask, context 32 in the
  release), features at the end-of-text token (the highest id) times ``text_projection``;
- ``temp``: the contrastive temperature (unused for scoring).

Sizes are inferred from the weights (width from ``conv1``, patch and temporal kernel from its
shape, resolution from the positional embedding, frames from the temporal embedding, layers by
counting ``resblocks``); head counts follow CLIP's 64-dim heads (ViT-L/14: 16, text: 12) unless
a ``config.json`` next to the weights gives ``vision_heads`` / ``text_heads``.

Not reproduced (training only): token masking (``masking_prob``), drop-path, gradient
checkpointing; the reference's own BPE tokenizer is replaced by a CLIP BPE tokenizer folder
(same vocabulary; ``bpe_simple_vocab_16e6.txt.gz`` is converted on load when given instead).

Preprocessing (the reference's ``frames2tensor``): 8 frames at a uniform stride
``len // 8`` starting at frame 0, resized to the tower's resolution (224² for the release;
bilinear, no aspect preservation, as ``cv2.resize``), ImageNet mean / std normalisation.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..memory import Placed
from ..models.errors import ModelLoadError
from ..video import as_video

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_EXT = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
EXPECTED_FILES = ("one ViCLIP weights file (e.g. ViClip-InternVid-10M-FLT.pth: a state dict with "
                  "vision_encoder.* and text_encoder.* keys, optionally under 'model')",
                  "a CLIP BPE tokenizer: vocab.json + merges.txt (in the folder or in tokenizer/), "
                  "or bpe_simple_vocab_16e6.txt.gz")


@dataclass
class ViCLIPConfig:
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    num_frames: int = 8
    kernel_size: int = 1
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 32
    vocab_size: int = 49408
    temporal_embedding: bool = True


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _MLP(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, attn_mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x, attn_mask=None):
        for blk in self.resblocks:
            x = blk(x, attn_mask)
        return x


class ViCLIPVision(nn.Module):
    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        w, p = cfg.vision_width, cfg.patch_size
        self.conv1 = nn.Conv3d(3, w, (cfg.kernel_size, p, p), (cfg.kernel_size, p, p), bias=False)
        self.class_embedding = nn.Parameter(w ** -0.5 * torch.randn(w))
        self.positional_embedding = nn.Parameter(w ** -0.5 * torch.randn((cfg.image_size // p) ** 2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        if cfg.temporal_embedding:
            self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, w))
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(w ** -0.5 * torch.randn(w, cfg.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` ``[B, C, T, H, W]`` normalised -> ``[B, embed_dim]`` (not normalised)."""
        x = self.conv1(video)  # [B, width, T', h, w]
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c)
        x = x + self.positional_embedding[1:].to(x.dtype)
        if hasattr(self, "temporal_positional_embedding"):
            temb = self.temporal_positional_embedding
            # the reference adds the mean over its T embeddings to a single frame
            temb = temb.mean(1, keepdim=True) if t == 1 else temb[:, :t]
            x = x + temb.to(x.dtype).unsqueeze(2)
        # the reference orders tokens patch-major: (n t); attention is order-invariant, kept for parity
        x = x.permute(0, 2, 1, 3).reshape(b, h * w * t, c)
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, c)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


class ViCLIPText(nn.Module):
    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        self.context_length = cfg.context_length
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(cfg.text_width ** -0.5 * torch.randn(cfg.text_width, cfg.embed_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` ``[B, context]`` (0-padded, end-of-text = the largest id) -> ``[B, embed_dim]``."""
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        x = self.ln_final(self.transformer(x, mask))
        return x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)] @ self.text_projection


class ViCLIP(nn.Module):
    """Parameter names match the released checkpoint: ``vision_encoder.*``, ``text_encoder.*``, ``temp``."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        self.config = cfg
        self.vision_encoder = ViCLIPVision(cfg)
        self.text_encoder = ViCLIPText(cfg)
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))


def _count_layers(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def infer_config(sd: dict, path: str, overrides: dict | None = None) -> ViCLIPConfig:
    """Infer the tower sizes from the weights (see the module docstring)."""
    need = ["vision_encoder.conv1.weight", "vision_encoder.positional_embedding", "vision_encoder.proj",
            "text_encoder.token_embedding.weight", "text_encoder.positional_embedding",
            "text_encoder.text_projection"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ModelLoadError(path, f"not a ViCLIP state dict: missing {', '.join(missing[:3])}.",
                             EXPECTED_FILES[0])
    conv = sd["vision_encoder.conv1.weight"]
    if conv.ndim != 5:
        raise ModelLoadError(path, f"vision_encoder.conv1.weight has shape {tuple(conv.shape)}, not a Conv3d "
                             "patch embedding.", EXPECTED_FILES[0])
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((sd["vision_encoder.positional_embedding"].shape[0] - 1) ** 0.5)
    temb = sd.get("vision_encoder.temporal_positional_embedding")
    tw = sd["text_encoder.token_embedding.weight"]
    cfg = ViCLIPConfig(
        vision_width=width, vision_layers=_count_layers(sd, "vision_encoder.transformer.resblocks."),
        vision_heads=max(1, width // 64), patch_size=patch, image_size=grid * patch,
        num_frames=temb.shape[1] if temb is not None else 8, kernel_size=conv.shape[2],
        embed_dim=sd["vision_encoder.proj"].shape[1], text_width=tw.shape[1],
        text_layers=_count_layers(sd, "text_encoder.transformer.resblocks."), text_heads=max(1, tw.shape[1] // 64),
        context_length=sd["text_encoder.positional_embedding"].shape[0], vocab_size=tw.shape[0],
        temporal_embedding=temb is not None)
    known = {f.name for f in fields(ViCLIPConfig)}
    for k, v in (overrides or {}).items():
        if k in known:
            setattr(cfg, k, type(getattr(cfg, k))(v))
    return cfg


def _find_weights(folder: str) -> str:
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(WEIGHT_EXT)
                   and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise ModelLoadError(folder, "no ViCLIP weights file in the folder.", "; ".join(EXPECTED_FILES))
    pref = [f for f in files if "viclip" in f.lower()]
    if len(files) > 1 and len(pref) != 1:
        raise ModelLoadError(folder, f"several weight files ({', '.join(files)}) and none is clearly the "
                             "ViCLIP one.", "exactly one weights file, or one whose name contains 'viclip'")
    return os.path.join(folder, (pref or files)[0])


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table (a published, fixed mapping)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe_gz_to_files(gz_path: str, out_dir: str) -> str:
    """Convert the reference tokenizer's ``bpe_simple_vocab_16e6.txt.gz`` into vocab.json +
    merges.txt (the same construction as the reference SimpleTokenizer)."""
    with gzip.open(gz_path, "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges if len(m.split()) == 2]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(p) for p in pairs] + \
        ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump({v: i for i, v in enumerate(vocab)}, fh, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    return out_dir


def load_clip_tokenizer(folder: str, expected: str):
    """A transformers CLIPTokenizer from ``folder`` or ``folder/tokenizer`` (local files only)."""
    from transformers import CLIPTokenizer

    for cand in (folder, os.path.join(folder, "tokenizer")):
        if os.path.isfile(os.path.join(cand, "vocab.json")) and os.path.isfile(os.path.join(cand, "merges.txt")):
            try:
                return CLIPTokenizer.from_pretrained(cand, local_files_only=True)
            except Exception as exc:
                raise ModelLoadError(cand, f"the tokenizer files could not be read ({exc}).", expected) from exc
    gz = os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")
    if os.path.isfile(gz):
        import tempfile

        out = _bpe_gz_to_files(gz, tempfile.mkdtemp(prefix="fdd_viclip_tok_"))
        return CLIPTokenizer.from_pretrained(out, local_files_only=True)
    raise ModelLoadError(folder, "no tokenizer files in the folder.", expected)


class ViCLIPScorer(Placed):
    placed_on = "model"

    """A loaded ViCLIP plus its tokenizer: video and text embeddings for the metrics."""

    def __init__(self, model: ViCLIP, tokenizer, source: str = ""):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source

    @property
    def num_frames(self) -> int:
        return self.model.config.num_frames

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        n = self.model.config.context_length
        eot = self.tokenizer.eos_token_id
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.tokenizer(t, add_special_tokens=True)["input_ids"]
            if len(ids) > n:  # truncate, keeping the end-of-text token last (as the reference)
                ids = ids[:n - 1] + [eot]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """``[N, D]`` raw (unnormalised) text embeddings."""
        return self.model.text_encoder(self.tokenize(list(texts)).to(self.device)).float()

    @torch.no_grad()
    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames`` ``[F, H, W, 3]`` in 0..1 -> ``[D]`` raw video embedding."""
        x = preprocess_video(frames, self.num_frames, self.model.config.image_size)
        p = next(self.model.parameters())
        return self.model.vision_encoder(x.to(p.device, p.dtype))[0].float()


def sample_frame_indices(num_frames: int, fnum: int = 8) -> list[int]:
    """The reference's frame choice: stride ``num_frames // fnum`` from frame 0, first ``fnum``.
    Clips shorter than ``fnum`` (which the reference rejects) repeat frames at a uniform stride."""
    if num_frames < 1:
        raise ValueError("frames: the clip has no frames")
    if num_frames >= fnum:
        step = num_frames // fnum
        return list(range(0, num_frames, step))[:fnum]
    return [int(i * num_frames / fnum) for i in range(fnum)]


def preprocess_video(frames: torch.Tensor, fnum: int = 8, size: int = 224) -> torch.Tensor:
    """``[F, H, W, 3]`` 0..1 -> ``[1, 3, fnum, size, size]``: uniform-stride frames, bilinear
    resize, ImageNet mean / std."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected [frames, H, W, 3], got {tuple(frames.shape)}")
    idx = sample_frame_indices(frames.shape[0], fnum)
    x = frames[idx].float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x - mean.to(x)) / std.to(x)
    return as_video(x)


def load_viclip(folder: str | os.PathLike, device: str | torch.device = "cpu") -> ViCLIPScorer:
    """Load a ViCLIP folder (see :data:`EXPECTED_FILES`): weights read by
    :func:`fdd.models.state_dict.read_state_dict` (weights-only pickles or safetensors), config
    inferred from them, strict load; a clear :class:`ModelLoadError` otherwise."""
    from ..models.state_dict import key_mismatch_report, read_state_dict

    folder = os.fspath(folder)
    expected = "a ViCLIP folder holding " + "; ".join(EXPECTED_FILES)
    if not os.path.isdir(folder):
        raise ModelLoadError(folder, "no such folder.", expected)
    weights = _find_weights(folder)
    sd = read_state_dict(weights)
    if any(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    overrides = {}
    cfg_path = os.path.join(folder, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as fh:
            overrides = json.load(fh)
    cfg = infer_config(sd, weights, overrides)
    model = ViCLIP(cfg)
    own = model.state_dict()
    # keys outside the two towers and ``temp`` (e.g. training-loss buffers) are ignored
    sd = {k: v for k, v in sd.items() if k in own or k.startswith(("vision_encoder.", "text_encoder."))}
    bad = key_mismatch_report(own, sd)
    if bad:
        raise ModelLoadError(weights, f"the weights do not fit the ViCLIP architecture inferred from them: {bad}.",
                             EXPECTED_FILES[0])
    model.load_state_dict(sd, strict=True)
    tok = load_clip_tokenizer(folder, expected)
    return ViCLIPScorer(model.to(device), tok, source=weights)
