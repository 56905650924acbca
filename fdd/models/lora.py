"""LoRA weights: read (kohya / peft / diffusers), resolve against a model, apply reversibly, write kohya.

Vocabulary. A LoRA layer for a target weight ``W`` ``[out, in(, kh, kw)]`` holds ``down`` (``A``)
``[r, in]`` or ``[r, in, kh, kw]``, ``up`` (``B``) ``[out, r]`` or ``[out, r, 1, 1]`` and ``alpha``;
applying it with strength ``s`` gives ``W + s * (alpha / r) * (B @ A)`` (reshaped to ``W``), the
convention of kohya sd-scripts, peft (``scaling = lora_alpha / r``) and ComfyUI's ``LoraLoader``.
``alpha`` None means ``alpha = r`` (scale 1).

Key formats read by :func:`read_lora`:

- kohya: ``lora_unet_<module path, '.' -> '_'>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` (0-d tensor); ``lora_te_`` (SD 1.x text encoder), ``lora_te1_`` / ``lora_te2_``
  (SDXL's two). The module path is in diffusers / transformers naming relative to the model.
  The names stay underscored in :class:`LoraWeights` until :func:`resolve_lora_targets` matches
  them against a model, because module names contain underscores themselves (``to_q``,
  ``transformer_blocks``).
- peft / diffusers: ``[unet.|text_encoder.|text_encoder_2.]<path>.lora_A.weight`` / ``.lora_B.weight``
  (``save_lora_weights``, ``get_peft_model_state_dict``), a peft folder (``adapter_model.safetensors``
  + ``adapter_config.json``, keys under ``base_model.model.``), the older diffusers
  ``<path>.lora.down.weight`` / ``.lora.up.weight`` and attention-processor
  ``<...>.processor.to_q_lora.down.weight`` layouts. alpha comes from a ``<path>.alpha`` tensor, the
  safetensors metadata ``lora_adapter_metadata`` that diffusers writes (``unet.lora_alpha``,
  ``unet.alpha_pattern``, ...), or the peft ``adapter_config.json``; else alpha = r.

:func:`save_kohya_lora` writes the kohya format, which ComfyUI's own ``LoraLoader`` reads
(``comfy/lora.py`` maps ``lora_unet_`` + the diffusers module path with dots -> underscores, and
uses ``alpha / r`` with ``alpha = <key>.alpha.item()``); plain peft keys are not read by ComfyUI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Self

import torch
from torch import Tensor, nn

from .errors import ModelLoadError
from .state_dict import (
    read_json_file,
    read_safetensors_metadata,
    read_state_dict,
    save_safetensors_atomic,
)

_log = logging.getLogger(__name__)

_EXPECTED = ("a LoRA in kohya (lora_unet_*.lora_down/.lora_up/.alpha), peft or diffusers "
             "(*.lora_A/.lora_B) format")

#: kohya prefix -> LoraWeights field
_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                   ("lora_te_", "text_encoder"))
#: peft / diffusers model prefix -> LoraWeights field
_PEFT_PREFIXES = (("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"))
#: roots of CLIP text-model module paths (transformers 5's CLIPTextModel has no ``text_model.``)
_CLIP_ROOTS = ("encoder.", "embeddings.", "final_layer_norm")
_LYCORIS_MARKERS = ("hada_w1", "lokr_w1", ".lora_mid.", ".dora_scale", ".diff", "oft_", ".w_norm", ".b_norm")


@dataclass
class LoraLayer:
    """One low-rank update ``(alpha / r) * up @ down`` of one weight.

    ``down``: ``[r, in]`` (linear) or ``[r, in, kh, kw]`` (conv); ``up``: ``[out, r]`` or
    ``[out, r, 1, 1]``; ``alpha`` None means ``r``.
    """

    down: Tensor
    up: Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / r`` (1 when alpha is None)."""
        return (self.rank if self.alpha is None else float(self.alpha)) / self.rank

    def delta(self, shape: Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        """``(alpha / r) * up @ down`` computed in ``dtype`` and reshaped to ``shape`` (the target
        weight's shape; conv-aware: ``up`` and ``down`` are flattened to 2-D first)."""
        up = self.up.to(device=device, dtype=dtype).flatten(1)
        down = self.down.to(device=device, dtype=dtype).flatten(1)
        d = (up @ down) * self.scale
        return d.reshape(tuple(shape)) if shape is not None else d


@dataclass
class LoraWeights:
    """A LoRA file's layers per model, keyed by module path (underscored for kohya files until
    resolved, dotted for peft / diffusers files), and the file it came from."""

    unet: dict[str, LoraLayer] = field(default_factory=dict)
    text_encoder: dict[str, LoraLayer] = field(default_factory=dict)
    source: str = ""
    #: SDXL's second text encoder (``lora_te2_``); unused by SD 1.x graphs
    text_encoder_2: dict[str, LoraLayer] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ read


def _as_alpha(t: Tensor | float | None) -> float | None:
    if t is None:
        return None
    return float(t.item()) if isinstance(t, Tensor) else float(t)


def _read_kohya(sd: Mapping[str, Tensor], path: str) -> LoraWeights:
    out = LoraWeights(source=path)
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k, v in sd.items():
        target = next(((p, f) for p, f in _KOHYA_PREFIXES if k.startswith(p)), None)
        if target is None:
            raise ModelLoadError(path, f"key {k!r} is neither lora_unet_* nor lora_te*_ in a kohya LoRA.", _EXPECTED)
        prefix, fld = target
        base, _, suffix = k[len(prefix):].partition(".")
        groups.setdefault((fld, base), {})[suffix] = v
    for (fld, base), parts in groups.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise ModelLoadError(path, f"layer {base!r} has {sorted(parts)}, not lora_down/lora_up weights "
                                 "(LyCORIS LoHa/LoKr/LoCon-mid/DoRA layers are not supported).", _EXPECTED)
        extra = set(parts) - {"lora_down.weight", "lora_up.weight", "alpha"}
        if extra:
            raise ModelLoadError(path, f"layer {base!r} has unsupported entries {sorted(extra)}.", _EXPECTED)
        getattr(out, fld)[base] = LoraLayer(parts["lora_down.weight"], parts["lora_up.weight"],
                                            _as_alpha(parts.get("alpha")))
    return out


def _peft_alpha_lookup(config: Mapping | None) -> tuple[float | None, dict, bool]:
    if not config:
        return None, {}, False
    alpha = config.get("lora_alpha")
    return (None if alpha is None else float(alpha)), dict(config.get("alpha_pattern") or {}), bool(
        config.get("use_rslora", False))


def _pattern_value(patterns: Mapping[str, float], name: str):
    """peft's pattern rule: a pattern matches a module name that ends with it at a '.' boundary."""
    for pat, val in patterns.items():
        if re.match(rf"(.*\.)?({pat})$", name):
            return val
    return None


_PROC_RE = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def _normalise_peft_key(k: str) -> str:
    """Map the older diffusers layouts onto ``<path>.lora.{down,up}.weight``."""
    k = k.replace("base_model.model.", "", 1) if k.startswith("base_model.model.") else k
    m = _PROC_RE.search(k)
    if m:
        proj = "to_out.0" if m.group(1) == "to_out" else m.group(1)
        k = k[: m.start()] + f".{proj}.lora.{m.group(2)}.weight"
    return k


_PEFT_SUFFIX = re.compile(r"^(.*)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_\-]+)?\.weight$|^(.*)\.lora\.(down|up)\.weight$"
                          r"|^(.*)\.alpha$")


def _read_peft(sd: Mapping[str, Tensor], path: str, metadata: Mapping[str, str],
               adapter_config: Mapping | None) -> LoraWeights:
    out = LoraWeights(source=path)
    meta_cfg: dict[str, dict] = {}
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        try:
            flat = json.loads(raw)
        except json.JSONDecodeError:
            flat = {}
        for key, val in flat.items():
            owner, _, name = key.partition(".")
            meta_cfg.setdefault(owner, {})[name] = val
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k0, v in sd.items():
        k = _normalise_peft_key(k0)
        m = _PEFT_SUFFIX.match(k)
        if not m:
            raise ModelLoadError(path, f"key {k0!r} is not a LoRA down/up/alpha entry.", _EXPECTED)
        if m.group(1) is not None:
            base, part = m.group(1), ("down" if m.group(2) == "lora_A" else "up")
        elif m.group(3) is not None:
            base, part = m.group(3), m.group(4)
        else:
            base, part = m.group(5), "alpha"
        fld, owner = None, None
        for p, f in _PEFT_PREFIXES:
            if base.startswith(p):
                fld, owner, base = f, p[:-1], base[len(p):]
                break
        if fld is None:  # a bare peft state dict: CLIP paths start with text_model.
            fld = "text_encoder" if base.startswith(("text_model.",) + _CLIP_ROOTS) else "unet"
            owner = fld
        groups.setdefault((fld, owner, base), {})[part] = v
    for (fld, owner, base), parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise ModelLoadError(path, f"layer {base!r} lacks its lora_A/lora_B (down/up) pair.", _EXPECTED)
        alpha = _as_alpha(parts.get("alpha"))
        if alpha is None:
            cfg = meta_cfg.get(owner) or adapter_config
            a, patterns, rslora = _peft_alpha_lookup(cfg)
            pa = _pattern_value(patterns, base)
            a = float(pa) if pa is not None else a
            if a is not None and rslora:  # peft scaling alpha / sqrt(r) == (alpha * sqrt(r)) / r
                a = a * math.sqrt(parts["down"].shape[0])
            alpha = a
        getattr(out, fld)[base] = LoraLayer(parts["down"], parts["up"], alpha)
    return out


def _find_in_folder(folder: str) -> tuple[str, dict | None]:
    cfg = None
    cfg_path = os.path.join(folder, "adapter_config.json")
    if os.path.isfile(cfg_path):
        cfg = read_json_file(cfg_path, _EXPECTED)
    for name in ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "adapter_model.bin",
                 "pytorch_lora_weights.bin"):
        f = os.path.join(folder, name)
        if os.path.isfile(f):
            return f, cfg
    raise ModelLoadError(folder, "the folder holds no adapter_model.safetensors / pytorch_lora_weights.safetensors.",
                         _EXPECTED)


def read_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA file (or a peft / diffusers LoRA folder) into :class:`LoraWeights`.

    See the module docstring for the accepted layouts. A file that is not a LoRA, or a LyCORIS
    variant (LoHa, LoKr, DoRA, ...) raises :class:`ModelLoadError` naming the file.
    """
    path = os.fspath(path)
    adapter_config = None
    file = path
    if os.path.isdir(path):
        file, adapter_config = _find_in_folder(path)
    sd = read_state_dict(file)
    metadata = read_safetensors_metadata(file) if file.lower().endswith((".safetensors", ".sft")) else {}
    keys = list(sd)
    if any(m in k for k in keys for m in _LYCORIS_MARKERS):
        raise ModelLoadError(file, "this is a LyCORIS LoRA variant (LoHa / LoKr / LoCon mid / DoRA / OFT), "
                             "which is not supported.", _EXPECTED)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        out = _read_kohya(sd, file)
    elif any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or "_lora.down." in k for k in keys):
        out = _read_peft(sd, file, metadata, adapter_config)
    else:
        raise ModelLoadError(file, f"unknown LoRA key layout (e.g. {keys[:3]}).", _EXPECTED)
    if not (out.unet or out.text_encoder or out.text_encoder_2):
        raise ModelLoadError(file, "the file holds no LoRA layers.", _EXPECTED)
    return out


# --------------------------------------------------------------------------------------- resolve


def _describe(module: nn.Module) -> str:
    cfg = getattr(module, "config", None)
    desc = type(module).__name__
    get = (lambda k: cfg.get(k)) if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k, None))
    if cfg is not None:
        bits = [f"{k}={get(k)}" for k in ("block_out_channels", "cross_attention_dim", "hidden_size",
                                          "num_hidden_layers") if get(k) is not None]
        if bits:
            desc += f" ({', '.join(str(b) for b in bits)})"
    return desc


def _weight_modules(module: nn.Module, skip_motion_modules: bool) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for name, mod in module.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, Tensor) or w.ndim < 2:
            continue
        if skip_motion_modules and "motion_modules" in name.split("."):
            continue
        if name.endswith(".base_layer"):  # a peft-wrapped layer: target its base weight
            name = name[: -len(".base_layer")]
        elif hasattr(mod, "base_layer"):
            continue
        out[name] = mod
    return out


def _text_model_variants(key: str, sep: str) -> list[str]:
    """``key`` plus its form with / without CLIP's ``text_model`` prefix: transformers 5's
    ``CLIPTextModel`` names its layers ``encoder.layers.*`` while kohya files (and
    ``CLIPTextModelWithProjection``) say ``text_model.encoder.layers.*``."""
    pre = "text_model" + sep
    return [key, key[len(pre):]] if key.startswith(pre) else [key, pre + key]


def resolve_lora_targets(layers: Mapping[str, LoraLayer], module: nn.Module, path: str | os.PathLike | None = None,
                         skip_motion_modules: bool = True) -> dict[str, LoraLayer]:
    """Map LoRA layer keys (kohya underscored or dotted) to ``module``'s ``named_modules`` names.

    Dotted keys must equal a module name; underscored kohya keys are matched through
    ``{name.replace('.', '_'): name}`` built from the model (an underscored name shared by two
    modules is refused as ambiguous). Works for ``UNet2DConditionModel`` and ``UNetMotionModel``
    (same names for the 2-D layers); with ``skip_motion_modules`` the motion modules are never
    targets. A LoRA none of whose keys matches, or any of whose layers does not fit its target's
    shape, raises :class:`ModelLoadError` naming ``path`` and the model the LoRA would have to be
    for; a partial match (some keys name layers this model lacks) applies the matching layers and
    logs a warning listing the skipped ones (issue 23: none matching is an error, a partial match a
    warning).
    """
    targets = _weight_modules(module, skip_motion_modules)
    under: dict[str, str | None] = {}
    for name in targets:
        u = name.replace(".", "_")
        under[u] = None if (u in under and under[u] != name) else name
    resolved: dict[str, LoraLayer] = {}
    unmatched: list[str] = []
    misfit: list[str] = []
    for key, layer in layers.items():
        name = next((c for c in _text_model_variants(key, ".") if c in targets), None)
        if name is None:
            ukeys = _text_model_variants(key.replace(".", "_"), "_")
            name = next((under[u] for u in ukeys if under.get(u)), None)
        if name is None:
            unmatched.append(key)
            continue
        w = targets[name].weight
        if layer.up.shape[0] != w.shape[0] or layer.up.shape[0] * layer.down[0].numel() != w.numel() \
                or layer.up.flatten(1).shape[1] != layer.rank:
            misfit.append(f"{key} (LoRA {tuple(layer.up.shape[:1])}x{tuple(layer.down.shape[1:])} vs weight "
                          f"{tuple(w.shape)})")
            continue
        resolved[name] = layer
    desc = _describe(module)
    if unmatched:
        hint = ""
        if any(re.match(r"(input_blocks|middle_block|output_blocks)_", k) for k in unmatched):
            hint = " Its keys use the original LDM names (input_blocks_*), which this loader does not map."
        if not resolved and not misfit:
            raise ModelLoadError(path, f"none of its {len(layers)} LoRA layers matches a layer of the {desc} "
                                       f"(e.g. {unmatched[:3]}): the LoRA was made for another model.{hint}",
                                 f"a LoRA for a {desc}")
        _log.warning("LoRA %s: %d of %d layers match no layer of the %s and are skipped: %s%s%s",
                     path if path is not None else "(in memory)", len(unmatched), len(layers), desc,
                     ", ".join(unmatched[:10]), f" (+{len(unmatched) - 10} more)" if len(unmatched) > 10 else "",
                     hint)
    if misfit:
        raise ModelLoadError(path, f"{len(misfit)} LoRA layers do not fit their target weights (e.g. {misfit[:2]}): "
                             "the LoRA was made for another model.", f"a LoRA for a {desc}")
    return resolved


# ----------------------------------------------------------------------------------------- apply


class LoraPatcher:
    """Add LoRA deltas into a UNet (and text encoders) in place; undo them bit-exactly.

    ``loras`` is a sequence of ``(LoraWeights, strength)``. :meth:`apply` adds
    ``sum_i strength_i * (alpha_i / r_i) * up_i @ down_i`` to every target weight: the delta is
    computed in float32 on the weight's device and added in float32, then cast to the weight's
    dtype (fp16 / bf16 models work). The original tensors are kept (cloned) and :meth:`restore`
    copies them back, so the model returns to bit-identical weights. Usable as a context manager.

    Text-encoder layers are ignored when no text encoder is given (as ComfyUI's
    ``LoraLoaderModelOnly`` does), UNet layers when ``unet`` is None. Motion modules of a
    ``UNetMotionModel`` are never touched. Callers normally go through :class:`LoraStack`.
    """

    def __init__(self, unet: nn.Module | None, loras: Iterable[tuple[LoraWeights, float]],
                 text_encoder: nn.Module | None = None, text_encoder_2: nn.Module | None = None):
        self.unet = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.loras = [(lw, float(s)) for lw, s in loras]
        self._backup: list[tuple[Tensor, Tensor]] = []
        self.applied = False

    def _plan(self) -> list[tuple[Tensor, Tensor]]:
        deltas: dict[int, tuple[Tensor, Tensor]] = {}
        for lw, strength in self.loras:
            for fld, model in (("unet", self.unet), ("text_encoder", self.text_encoder),
                               ("text_encoder_2", self.text_encoder_2)):
                layers = getattr(lw, fld)
                if not layers or model is None:
                    continue
                resolved = resolve_lora_targets(layers, model, lw.source)
                named = _weight_modules(model, True)
                for name, layer in resolved.items():
                    w = named[name].weight
                    d = layer.delta(w.shape, torch.float32, w.device) * strength
                    if id(w) in deltas:
                        deltas[id(w)] = (w, deltas[id(w)][1] + d)
                    else:
                        deltas[id(w)] = (w, d)
        return list(deltas.values())

    @torch.no_grad()
    def apply(self, keep_originals: bool = True) -> Self:
        """Patch the weights (once; a second call without :meth:`restore` does nothing). With
        ``keep_originals`` False no copy is kept: the patch is permanent (a merge)."""
        if self.applied:
            return self
        plan = self._plan()  # resolve everything first: a bad LoRA leaves the model untouched
        for w, d in plan:
            if keep_originals:
                self._backup.append((w, w.detach().clone()))
            w.data.copy_((w.data.float() + d).to(w.dtype))
        self.applied = True
        return self

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original weights back (bit-exact)."""
        for w, orig in reversed(self._backup):
            w.data.copy_(orig)
        self._backup.clear()
        self.applied = False

    def __enter__(self) -> Self:
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.restore()


@dataclass(frozen=True)
class LoraStack:
    """An ordered stack of LoRAs on one backbone: ``(LoraWeights, strength)`` pairs, applied in
    order (their deltas add up). The one way the pack applies LoRAs:

    - :meth:`patch` (the default everywhere): a context manager that adds the deltas into the
      given models for the duration of a call and restores them bit-exactly (:class:`LoraPatcher`);
    - :meth:`merge_into`: a permanent merge, only for a private copy of a model that a method then
      trains or keeps (EI²'s inflated copy, the FDD student); the caller says so in its docstring.

    Iterating gives the pairs, so a stack can go wherever a sequence of pairs is accepted. The
    stack itself is frozen: :meth:`added` returns a new one.
    """

    entries: tuple[tuple[LoraWeights, float], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "entries", tuple((lw, float(s)) for lw, s in self.entries))

    @classmethod
    def of(cls, loras: "LoraStack | Iterable[tuple[LoraWeights, float]] | None") -> "LoraStack":
        """``loras`` as a stack (a stack is returned as is; None is the empty stack)."""
        if isinstance(loras, LoraStack):
            return loras
        return cls(tuple(loras or ()))

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def added(self, lora: LoraWeights, strength: float) -> "LoraStack":
        return LoraStack(self.entries + ((lora, float(strength)),))

    def unet_only(self) -> "LoraStack":
        """The same stack without text-encoder layers."""
        return LoraStack(tuple((replace(lw, text_encoder={}, text_encoder_2={}), s) for lw, s in self.entries))

    def text_only(self) -> "LoraStack":
        """The same stack without UNet layers."""
        return LoraStack(tuple((replace(lw, unet={}), s) for lw, s in self.entries))

    @property
    def has_text_layers(self) -> bool:
        return any(lw.text_encoder or lw.text_encoder_2 for lw, _ in self.entries)

    def patch(self, unet: nn.Module | None = None, text_encoder: nn.Module | None = None,
              text_encoder_2: nn.Module | None = None) -> "LoraPatcher":
        """Context manager: the stack added into ``unet`` / the text encoders inside the block,
        the original weights restored bit-exactly after it (also on an exception)."""
        return LoraPatcher(unet, self.entries, text_encoder=text_encoder, text_encoder_2=text_encoder_2)

    def merge_into(self, unet: nn.Module | None = None, text_encoder: nn.Module | None = None) -> None:
        """Add the stack into the weights for good (no copy of the originals is kept)."""
        LoraPatcher(unet, self.entries, text_encoder=text_encoder).apply(keep_originals=False)


# ----------------------------------------------------------------------------------------- write


def _kohya_tensors(prefix: str, layers: Mapping[str, LoraLayer]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, layer in layers.items():
        base = prefix + name.replace(".", "_")
        out[f"{base}.lora_down.weight"] = layer.down.detach().clone()  # safetensors refuses shared storage
        out[f"{base}.lora_up.weight"] = layer.up.detach().clone()
        alpha = float(layer.rank if layer.alpha is None else layer.alpha)
        out[f"{base}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def save_kohya_lora(path: str | os.PathLike, unet_layers: Mapping[str, LoraLayer],
                    text_encoder_layers: Mapping[str, LoraLayer] | None = None,
                    metadata: Mapping[str, str] | None = None) -> str:
    """Write a kohya-format LoRA safetensors file (atomically) that ComfyUI's ``LoraLoader`` reads.

    Keys: ``lora_unet_<path with '.' -> '_'>.lora_down.weight`` / ``.lora_up.weight`` and
    ``.alpha`` (0-d float32 tensor holding the real lora_alpha, r when the layer has none);
    text-encoder layers under ``lora_te_`` in CLIP's canonical ``text_model.encoder.layers.*`` naming
    (the ``text_model.`` that transformers 5's ``CLIPTextModel`` no longer has in its module
    names is added back, as ComfyUI expects ``lora_te_text_model_encoder_layers_*``). ``unet_layers`` are keyed by diffusers module path
    (as :func:`lora_layers_from_peft` returns). kohya's ``ss_network_*`` metadata is added
    (``metadata`` entries win).
    """
    tensors = _kohya_tensors("lora_unet_", unet_layers)
    te = {("text_model." + k if k.startswith(_CLIP_ROOTS) else k): v for k, v in (text_encoder_layers or {}).items()}
    tensors.update(_kohya_tensors("lora_te_", te))
    if not tensors:
        raise ValueError("save_kohya_lora: no LoRA layers to save")
    every = list(unet_layers.values()) + list((text_encoder_layers or {}).values())
    meta = {"ss_network_module": "networks.lora", "format": "pt"}
    ranks = {layer.rank for layer in every}
    alphas = {float(layer.rank if layer.alpha is None else layer.alpha) for layer in every}
    if len(ranks) == 1:
        meta["ss_network_dim"] = str(ranks.pop())
    if len(alphas) == 1:
        meta["ss_network_alpha"] = repr(alphas.pop())
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return save_safetensors_atomic(tensors, path, metadata=meta)


def lora_layers_from_peft(model: nn.Module, adapter_name: str = "default") -> dict[str, LoraLayer]:
    """Extract a peft LoRA adapter (``add_adapter`` / ``inject_adapter_in_model``) as LoraLayers.

    Keys are the wrapped modules' paths in the model's own naming (no ``base_layer``, no
    ``base_model.model.`` of a ``PeftModel``); tensors are detached copies; alpha is peft's
    ``lora_alpha`` (times sqrt(r) for rsLoRA, so that ``alpha / r`` equals peft's scaling).
    DoRA and embedding LoRAs are refused (ValueError).
    """
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    out: dict[str, LoraLayer] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, PeftLoraLayer):
            continue
        if adapter_name in getattr(mod, "lora_embedding_A", {}):
            raise ValueError(f"{name}: embedding LoRA layers are not supported")
        if adapter_name not in mod.lora_A:
            continue
        if getattr(mod, "use_dora", {}).get(adapter_name, False):
            raise ValueError(f"{name}: DoRA adapters cannot be written as plain LoRA")
        r = int(mod.r[adapter_name])
        alpha = float(mod.lora_alpha[adapter_name])
        if getattr(mod, "use_rslora", {}).get(adapter_name, False):
            alpha = alpha * math.sqrt(r)
        clean = ".".join(p for p in name.split(".") if p != "base_layer")
        clean = clean.removeprefix("base_model.model.")
        out[clean] = LoraLayer(mod.lora_A[adapter_name].weight.detach().clone(),
                               mod.lora_B[adapter_name].weight.detach().clone(), alpha)
    if not out:
        raise ValueError(f"the model has no peft LoRA layers for adapter {adapter_name!r}")
    return out
