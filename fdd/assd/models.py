"""The models ASSD runs on: a text-to-video prior eps_theta, an optional image prior eps_Omega
for the joint guidance, and the VAE whose latent space both share.

Two video priors, driven by the same optimiser code (:class:`VideoPrior`):

- :class:`UNet3DPrior`: a ModelScope ``text-to-video-ms-1.7b`` / ``zeroscope_v2`` UNet3D, the
  paper's models. Its text encoder, tokenizer and VAE come from the *same pipeline folder*
  (``text_encoder/``, ``tokenizer/``, ``vae/``, loaded offline with ``from_pretrained(...,
  local_files_only=True)`` by :func:`load_t2v_folder_parts`). A folder that holds only ``unet/``
  borrows them from an SD 1.x backbone instead, when they fit (text width = the UNet's
  cross-attention width, VAE latent channels = the UNet's input channels): ModelScope and
  Zeroscope use SD's VAE, but an OpenCLIP-H text encoder (1024 wide), so for the real models the
  folder's own text encoder is needed; the tiny test models share one.
- :class:`MotionPrior`: an SD 1.x backbone with AnimateDiff motion modules (``UNetMotionModel``),
  for users without a T2V model; it uses the backbone's text encoder and VAE.

The image prior (:class:`ImagePrior`) is an SD 1.x UNet2D with its own text encoder. Joint
guidance adds its gradients to the video latent, so the two latent spaces must agree:
:func:`check_latent_spaces_agree` refuses otherwise.
"""

from __future__ import annotations

import contextlib

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..models.errors import ModelLoadError
from ..models.state_dict import read_json_file
from ..pipelines.common import encode_prompts
from ..memory import Placed
from ..sampling import DDIMSchedule
from .attention import spatial_self_attention_layers


class LatentSpaceMismatch(ValueError):
    """The image model's latents are not the video model's (joint guidance is impossible)."""


# --------------------------------------------------------------------------------------------
# noise predictors


class VideoPrior(Placed):
    """eps_theta of the paper: a text-conditioned noise predictor for video latents
    ``(B, C, F, h, w)``, with the tokenizer / text encoder that make its conditioning."""

    kind = "video"

    def __init__(self, unet: torch.nn.Module, tokenizer, text_encoder, source: str = ""):
        self.unet = unet
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.source = source

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    def size_multiple(self) -> int:
        """Latent sides must be multiples of this (one halving per down level but the last)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def encode_text(self, prompts, device=None) -> torch.Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, list(prompts), device)

    def spatial_self_attention(self) -> list[tuple[str, torch.nn.Module]]:
        """The spatial self-attention layers in execution order (temporal layers excluded)."""
        return spatial_self_attention_layers(self.unet)

    def predict(self, x: torch.Tensor, t: int, text_emb: torch.Tensor) -> torch.Tensor:
        """Noise prediction ``(B, C, F, h, w)`` in float32 for ``x`` ``(B, C, F, h, w)`` and one
        text embedding per batch element ``(B, L, D)``."""
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.text_encoder]


class UNet3DPrior(VideoPrior):
    """A ModelScope / Zeroscope ``UNet3DConditionModel`` (repeats the text per frame itself)."""

    kind = "unet3d"

    def predict(self, x, t, text_emb):
        dt = self.dtype
        return self.unet(x.to(dt), t, encoder_hidden_states=text_emb.to(dt), return_dict=False)[0].float()


class MotionPrior(VideoPrior):
    """SD 1.x + AnimateDiff motion modules (``UNetMotionModel``, text given per frame)."""

    kind = "motion"

    def predict(self, x, t, text_emb):
        dt = self.dtype
        emb = text_emb.to(dt).repeat_interleave(x.shape[2], dim=0)
        return self.unet(x.to(dt), t, encoder_hidden_states=emb, return_dict=False)[0].float()


class ImagePrior(Placed):
    """eps_Omega of the paper (Eq. 9): an SD 1.x ``UNet2DConditionModel`` on single frames."""

    def __init__(self, unet: torch.nn.Module, tokenizer, text_encoder, vae=None,
                 scaling_factor: float = 0.18215, vae_scale_factor: int = 8,
                 schedule: DDIMSchedule | None = None, source: str = ""):
        self.unet = unet
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae
        self.scaling_factor = float(scaling_factor)
        self.vae_scale_factor = int(vae_scale_factor)
        self.schedule = schedule or DDIMSchedule()
        self.source = source

    def size_multiple(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def encode_text(self, prompts, device=None) -> torch.Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, list(prompts), device)

    def predict(self, x: torch.Tensor, t: int, text_emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, C, h, w)``, ``text_emb`` ``(N, L, D)`` -> float32 ``(N, C, h, w)``."""
        dt = self.dtype
        return self.unet(x.to(dt), t, encoder_hidden_states=text_emb.to(dt), return_dict=False)[0].float()

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.text_encoder]

    @classmethod
    def from_backbone(cls, backbone) -> "ImagePrior":
        """From an :class:`fdd.models.sd1.SD1Backbone`."""
        return cls(backbone.unet, backbone.tokenizer, backbone.text_encoder, backbone.vae,
                   backbone.scaling_factor, backbone.vae_scale_factor, DDIMSchedule(), backbone.source)


@dataclass
class ASSDModels:
    """Everything one ASSD run needs. ``vae`` encodes the source video and decodes the result;
    ``schedule`` is the video prior's noise schedule (alpha_bar_t of Eq. 1)."""

    video: VideoPrior
    vae: Any
    scaling_factor: float
    vae_scale_factor: int
    schedule: DDIMSchedule = field(default_factory=DDIMSchedule)
    image: Optional[ImagePrior] = None

    def modules(self) -> list[torch.nn.Module]:
        """Every module (each once), e.g. to move them to a device."""
        mods = self.video.modules() + [self.vae] + (self.image.modules() if self.image else [])
        seen, out = set(), []
        for m in mods:
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        return out

    def with_image_model(self, image: Optional[ImagePrior], tolerance: float = 0.1) -> "ASSDModels":
        """A copy with ``image`` as the joint-guidance model, after checking the latent spaces."""
        if image is not None:
            check_latent_spaces_agree(self, image, tolerance)
        return ASSDModels(self.video, self.vae, self.scaling_factor, self.vae_scale_factor, self.schedule, image)


# --------------------------------------------------------------------------------------------
# latent-space agreement


def _probe_pixels(size: int) -> torch.Tensor:
    """A fixed, structured probe image ``(1, 3, size, size)`` in -1..1 (gradients + stripes)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = 0.8 * xx
    g = 0.8 * torch.sin(3.0 * yy * torch.pi / 2)
    b = 0.6 * torch.sign(torch.sin(4.0 * (xx + yy) * torch.pi))
    return torch.stack([r, g, b]).unsqueeze(0)


@torch.no_grad()
def _probe_latent(vae, pixels, scaling: float) -> torch.Tensor:
    p = next(vae.parameters())
    return vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mean.float().cpu() * scaling


def check_latent_spaces_agree(models: ASSDModels, image: ImagePrior, tolerance: float = 0.1) -> float:
    """Refuse joint guidance (:class:`LatentSpaceMismatch`) when the image model's latents are
    not the video model's. Returns the measured relative difference (0 for a shared VAE).

    Checked: the UNets' input channels, the VAEs' latent channels, downsampling factor and
    scaling factor; then both VAEs encode the same fixed probe image and the posterior means
    (times the scaling factors) must agree within ``tolerance`` relative L2 error. This accepts a
    fine-tuned decoder (SD's ft-MSE / ft-EMA VAEs keep the encoder) and ModelScope / Zeroscope
    with SD 1.x (both use SD's kl-f8 VAE), and refuses e.g. an SDXL VAE or another family.
    """
    hint = ("Joint guidance adds the image model's gradients to the video latent, so both models "
            "must share one latent space (the same VAE family, e.g. SD 1.x with ModelScope / "
            "Zeroscope). Use a matching image model or turn joint guidance off.")
    v_in, i_in = models.video.in_channels, int(image.unet.config.in_channels)
    if v_in != i_in:
        raise LatentSpaceMismatch(f"joint guidance: the video UNet takes {v_in}-channel latents, the image "
                                  f"UNet {i_in}-channel ones. {hint}")
    if image.vae is None or image.vae is models.vae:
        return 0.0
    vc, ic = int(models.vae.config.latent_channels), int(image.vae.config.latent_channels)
    if vc != ic:
        raise LatentSpaceMismatch(f"joint guidance: the video VAE has {vc} latent channels, the image "
                                  f"model's {ic}. {hint}")
    if models.vae_scale_factor != image.vae_scale_factor:
        raise LatentSpaceMismatch(f"joint guidance: the video VAE downsamples by {models.vae_scale_factor}, "
                                  f"the image model's by {image.vae_scale_factor}. {hint}")
    if abs(models.scaling_factor - image.scaling_factor) > 1e-3 * abs(models.scaling_factor):
        raise LatentSpaceMismatch(f"joint guidance: latent scaling factors differ ({models.scaling_factor} vs "
                                  f"{image.scaling_factor}). {hint}")
    px = _probe_pixels(8 * models.vae_scale_factor)
    a = _probe_latent(models.vae, px, models.scaling_factor)
    b = _probe_latent(image.vae, px, image.scaling_factor)
    rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
    if not rel <= tolerance:
        raise LatentSpaceMismatch(f"joint guidance: the video and image VAEs encode the same image "
                                  f"differently (relative difference {rel:.3f} > {tolerance}); they "
                                  f"belong to different latent spaces. {hint}")
    return rel


# --------------------------------------------------------------------------------------------
# building the models


_T2V_EXPECTED = ("a ModelScope / Zeroscope diffusers pipeline folder (unet/, vae/, text_encoder/, "
                 "tokenizer/, scheduler/)")


@dataclass
class T2VFolderParts:
    """What a text-to-video pipeline folder holds besides its UNet (None where absent)."""

    folder: str
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    schedule: Optional[DDIMSchedule] = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def _pipeline_root(folder: str) -> str:
    """The pipeline folder for a pipeline folder or its ``unet/`` subfolder."""
    if os.path.isfile(os.path.join(folder, "config.json")) and not os.path.isdir(os.path.join(folder, "unet")):
        parent = os.path.dirname(os.path.abspath(folder))
        if os.path.isfile(os.path.join(parent, "model_index.json")):
            return parent
    return folder


def read_schedule(scheduler_dir: str) -> DDIMSchedule:
    """The DDPM schedule from a diffusers ``scheduler/scheduler_config.json`` (ModelScope and
    Zeroscope: scaled_linear 0.00085 .. 0.012 over 1000 steps, SD's). Only epsilon prediction
    is supported (score distillation here compares predicted noises)."""
    path = os.path.join(scheduler_dir, "scheduler_config.json")
    cfg = read_json_file(path, _T2V_EXPECTED)
    pred = cfg.get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise ModelLoadError(path, f"the model predicts {pred!r}; ASSD needs an epsilon-prediction model.",
                             "a text-to-video model with prediction_type 'epsilon'")
    kind = cfg.get("beta_schedule", "scaled_linear")
    if kind not in ("scaled_linear", "linear"):
        raise ModelLoadError(path, f"unsupported beta_schedule {kind!r}.", "scaled_linear or linear")
    return DDIMSchedule(num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
                        beta_start=float(cfg.get("beta_start", 0.00085)),
                        beta_end=float(cfg.get("beta_end", 0.012)), beta_schedule=kind)


def load_t2v_folder_parts(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> T2VFolderParts:
    """Load ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` of a text-to-video
    pipeline folder (or of the pipeline folder around a given ``unet/`` folder), offline. Parts
    that are absent stay None; a part that is present but broken raises :class:`ModelLoadError`."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    root = _pipeline_root(os.fspath(folder))
    parts = T2VFolderParts(folder=root)
    sub = lambda name: os.path.join(root, name)  # noqa: E731

    def load(name, fn):
        try:
            return fn(sub(name))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(sub(name), f"could not be loaded ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}).", _T2V_EXPECTED) from exc

    if os.path.isfile(os.path.join(sub("vae"), "config.json")):
        parts.vae = load("vae", lambda p: AutoencoderKL.from_pretrained(p, local_files_only=True))
        parts.vae = parts.vae.to(dtype).eval().requires_grad_(False)
    if os.path.isfile(os.path.join(sub("text_encoder"), "config.json")):
        parts.text_encoder = load("text_encoder", lambda p: CLIPTextModel.from_pretrained(p, local_files_only=True))
        parts.text_encoder = parts.text_encoder.to(dtype).eval().requires_grad_(False)
    if os.path.isdir(sub("tokenizer")):
        parts.tokenizer = load("tokenizer", lambda p: CLIPTokenizer.from_pretrained(p, local_files_only=True))
    if os.path.isdir(sub("scheduler")):
        parts.schedule = read_schedule(sub("scheduler"))
    return parts


def t2v_models(unet3d, parts: T2VFolderParts | None = None, fallback=None, source: str = "") -> ASSDModels:
    """:class:`ASSDModels` for a UNet3D prior. Text encoder + tokenizer and VAE come from
    ``parts`` (the T2V pipeline folder), else from ``fallback`` (an SD1Backbone) when they fit
    the UNet; otherwise a :class:`ModelLoadError` says what is missing."""
    parts = parts or T2VFolderParts(folder=source)
    cross = int(unet3d.config.cross_attention_dim)
    in_ch = int(unet3d.config.in_channels)
    where = parts.folder or source or None
    if parts.text_encoder is not None and parts.tokenizer is not None:
        tok, te = parts.tokenizer, parts.text_encoder
    elif fallback is not None and int(fallback.text_encoder.config.hidden_size) == cross:
        tok, te = fallback.tokenizer, fallback.text_encoder
    else:
        lent = ("" if fallback is None else f" and the backbone's text encoder ({fallback.text_encoder.config.hidden_size} "
                f"wide) does not fit its {cross}-wide cross-attention")
        raise ModelLoadError(where, "the text-to-video folder has no text_encoder/ + tokenizer/" + lent + ".",
                             _T2V_EXPECTED)
    if int(te.config.hidden_size) != cross:
        raise ModelLoadError(where, f"the text encoder is {te.config.hidden_size} wide but the UNet3D's "
                             f"cross-attention takes {cross}.", _T2V_EXPECTED)
    if parts.vae is not None:
        vae, sf, vsf = parts.vae, parts.scaling_factor, parts.vae_scale_factor
    elif fallback is not None and int(fallback.vae.config.latent_channels) == in_ch:
        vae, sf, vsf = fallback.vae, fallback.scaling_factor, fallback.vae_scale_factor
    else:
        raise ModelLoadError(where, "the text-to-video folder has no vae/ and no backbone with a "
                             f"{in_ch}-channel VAE was given.", _T2V_EXPECTED)
    if int(vae.config.latent_channels) != in_ch:
        raise ModelLoadError(where, f"the VAE makes {vae.config.latent_channels}-channel latents, the UNet3D "
                             f"takes {in_ch}.", _T2V_EXPECTED)
    prior = UNet3DPrior(unet3d, tok, te, source=source or parts.folder)
    return ASSDModels(prior, vae, sf, vsf, parts.schedule or DDIMSchedule())


def motion_models(backbone, motion_unet, source: str = "") -> ASSDModels:
    """:class:`ASSDModels` for the SD 1.x + AnimateDiff prior (``motion_unet`` built from
    ``backbone.unet`` and a motion adapter, e.g. by :class:`fdd.pipelines.VideoEditStack`)."""
    prior = MotionPrior(motion_unet, backbone.tokenizer, backbone.text_encoder, source=source or backbone.source)
    return ASSDModels(prior, backbone.vae, backbone.scaling_factor, backbone.vae_scale_factor, DDIMSchedule())


@contextlib.contextmanager
def applied_backbone_loras(loras, backbone, models: ASSDModels, image: "ImagePrior | None" = None,
                           motion_unet=None):
    """An SD 1.x backbone's LoRAs (a :class:`~fdd.models.lora.LoraStack`) applied for one ASSD run
    and restored bit-exactly after it: on the motion UNet of the AnimateDiff prior (its own copy
    of the 2-D layers), on the backbone's UNet2D when it is the image model, and on the backbone's
    text encoder once, when ``models`` or ``image`` use it (the image model, the AnimateDiff prior,
    or lent to a T2V UNet). A T2V UNet3D itself never gets SD 1.x LoRAs."""
    from ..models.lora import LoraStack

    stack = LoraStack.of(loras)
    if not stack or backbone is None:
        yield
        return
    in_use = models.modules() + (image.modules() if image is not None else [])
    te = backbone.text_encoder if any(m is backbone.text_encoder for m in in_use) else None
    with contextlib.ExitStack() as patches:
        if motion_unet is not None:
            patches.enter_context(stack.patch(motion_unet, text_encoder=te))
            te = None
        if image is not None:
            patches.enter_context(stack.patch(backbone.unet, text_encoder=te))
            te = None
        if te is not None:
            patches.enter_context(stack.text_only().patch(text_encoder=te))
        yield
