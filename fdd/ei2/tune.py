"""One-shot tuning of an inflated UNet on the input video (EI² §4.1 Fig. 2a and §5
"Implementation details"), tuned-weight files, and resumable checkpoints.

§5: tune W_Q of FFAM and of the cross-attention and all STAM parameters, AdamW, learning rate
3e-5, 500 steps, 8 frames. The loss is the ε-prediction diffusion loss (Eq. 2) on the video's
latents with its caption. What the paper leaves open follows Tune-A-Video's training config
(which EI² builds on): batch of one video, AdamW β = (0.9, 0.999), ε = 1e-8, weight decay 1e-2,
constant learning rate, gradient clipping at norm 1, t ~ U{0, …, T−1}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.errors import ModelLoadError
from ..models.state_dict import (
    read_safetensors_metadata,
    read_state_dict,
    save_safetensors_atomic,
)
from ..numerics import OPTIMISATION_CAUSES, require_finite
from ..params import param
from ..sampling import DDIMSchedule, add_noise
from ..sampling.control import CancelCheck, ProgressCallback, report
from .config import InflationConfig
from .inflate import (
    InflatedUNet,
    base_differences,
    base_fingerprint,
    load_tuned_state,
    set_trainable,
    tuned_state_dict,
)

FORMAT_VERSION = "1"
META_KIND = "fdd_ei2_kind"
META_INFLATION = "fdd_ei2_inflation"
META_BASE = "fdd_ei2_base"
META_TRAIN = "fdd_ei2_train"
META_HISTORY = "fdd_ei2_loss_history"
META_FORMAT = "fdd_ei2_format"

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
#: power iterations after the last step, so the delivered W̄ has spectral norm 1 to ~1e-6
FINAL_POWER_ITERATIONS = 20


@dataclass
class TuneConfig:
    """One-shot tuning settings. Defaults: EI² §5 (AdamW, lr 3e-5, 500 steps) with Tune-A-Video's
    other optimiser settings.

    - ``gate_lr_scale``: learning-rate multiplier of the STAM identity gates (``identity_init``
      "gate"). Adam moves each parameter by about lr per step whatever its gradient's size, so
      a zero-initialised gate at lr 3e-5 could reach at most 0.015 in 500 steps and STAM could
      barely act; with 100 the gate can cover its range (tanh(1.5) ≈ 0.9) within the paper's
      budget while |tanh| < 1 still bounds the module by the spectral norms (Eq. 7). 1 = plain lr.
    - ``power_iterations``: power-iteration updates of every spectral norm per step.
    - ``mixed_precision``: "auto" = bf16 autocast on CUDA devices that support it, else fp16
      with loss scaling; "no" = fp32. CPU always runs fp32.
    - ``checkpoint_every``: write a checkpoint every N steps (0: only on interrupt). With a
      checkpoint path, one is also written when the progress callback raises (an interrupt),
      at the last finished step.
    """

    steps: int = param(500, "Optimisation steps (paper: 500).", min=1, max=100000)
    learning_rate: float = param(3e-5, "AdamW learning rate (paper: 3e-5).", min=1e-7, max=1.0, step=1e-6)
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    gate_lr_scale: float = param(100.0, "Learning-rate multiplier of the temporal modules' zero-initialised gates "
                                        "(identity_init 'gate'): at lr 3e-5 a gate could only reach ~0.015 in 500 "
                                        "steps; 1 = plain lr.", min=0.001, max=100000.0, step=0.1)
    power_iterations: int = 1
    seed: int = param(0, "Seed of the timesteps and noise drawn each step.", min=0, max=0xFFFFFFFFFFFFFFFF, seed=True)
    gradient_checkpointing: bool = param(False, "Recompute activations in the backward pass: much less memory, "
                                                "about a third slower (Tune-A-Video uses it).")
    mixed_precision: str = param("auto", "Autocast on GPU: auto = bf16 where supported, else fp16 with loss "
                                         "scaling; no = fp32. CPU always runs fp32.", options=MIXED_PRECISION)
    checkpoint_every: int = param(0, "Write a resumable checkpoint every N steps to models/fdd_ei2/checkpoints/"
                                     "<run_name>.safetensors (0 = never; with a run_name a Cancel still writes one).",
                                  min=0, max=100000)

    def validate(self) -> TuneConfig:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {self.learning_rate}")
        if self.gate_lr_scale <= 0:
            raise ValueError(f"gate_lr_scale: expected > 0, got {self.gate_lr_scale}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: expected one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: expected >= 0, got {self.checkpoint_every}")
        return self

    def optimizer_fields(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        return {"learning_rate": self.learning_rate, "weight_decay": self.weight_decay,
                "betas": list(self.betas), "eps": self.eps, "max_grad_norm": self.max_grad_norm,
                "gate_lr_scale": self.gate_lr_scale, "power_iterations": self.power_iterations,
                "seed": self.seed}


@dataclass
class TuneResult:
    history: list[float]
    steps_done: int
    resumed_from: int = 0
    checkpoint_path: str | None = None
    interrupted: bool = False


def diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The diffusion loss of EI² Eq. 2 (DDPM's simple objective): ``‖ε − ε_θ(x_t, t, P)‖²``,
    averaged over elements (the mean squared error Tune-A-Video minimises)."""
    return F.mse_loss(eps_pred.float(), eps.float(), reduction="mean")


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None: full precision)."""
    if device.type != "cuda" or mode == "no":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _fingerprint(model: InflatedUNet, latents: torch.Tensor, text_emb: torch.Tensor) -> dict:
    return {"inflation": model.config.to_dict(), "base": base_fingerprint(model.unet),
            "latents_shape": list(latents.shape), "latents_sum": round(float(latents.double().sum()), 3),
            "text_sum": round(float(text_emb.double().sum()), 3)}


# --------------------------------------------------------------------------------------------
# checkpoints (atomic safetensors: tuned tensors + optimiser + RNG + scaler + history)


def save_checkpoint(path: str, model: InflatedUNet, optimizer: torch.optim.Optimizer, names: list[str],
                    generator: torch.Generator, scaler, step: int, history: list[float], config: TuneConfig,
                    fingerprint: dict) -> str:
    """Write a resumable checkpoint atomically (temp file + rename): the tuned tensors
    (``model/*``), AdamW's moments and step counts (``optim/*``), the noise generator's state
    (``rng/cpu``), the loss scale, and the loss history; settings in the metadata."""
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in tuned_state_dict(model).items()}
    params = dict(model.unet.named_parameters())
    for name in names:
        st = optimizer.state.get(params[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"optim/{name}/{key}"] = st[key].detach().float().cpu()
        if "step" in st:
            s = st["step"]
            tensors[f"optim/{name}/step"] = (s.detach().float().cpu().reshape(1) if torch.is_tensor(s)
                                             else torch.tensor([float(s)]))
    tensors["rng/cpu"] = generator.get_state().clone()
    if scaler is not None and scaler.is_enabled():
        tensors["scaler/scale"] = torch.tensor([float(scaler.get_scale())])
        tensors["scaler/growth_tracker"] = torch.tensor([float(scaler.state_dict().get("_growth_tracker", 0))])
    tensors["history/loss"] = torch.tensor(history, dtype=torch.float64) if history else torch.zeros(0, dtype=torch.float64)
    meta = {META_FORMAT: FORMAT_VERSION, META_KIND: "checkpoint",
            META_INFLATION: model.config.to_json(),
            META_BASE: json.dumps(fingerprint["base"], sort_keys=True),
            META_TRAIN: json.dumps({"step": step, "steps": config.steps, **config.optimizer_fields(),
                                    "fingerprint": fingerprint}, sort_keys=True),
            META_HISTORY: json.dumps(history)}
    return save_safetensors_atomic(tensors, path, meta)


def _load_checkpoint(path: str, model: InflatedUNet, optimizer, names: list[str], generator, scaler,
                     config: TuneConfig, fingerprint: dict) -> tuple[int, list[float]]:
    meta = read_safetensors_metadata(path)
    if meta.get(META_KIND) != "checkpoint":
        raise ModelLoadError(path, "not an EI² tuning checkpoint (metadata fdd_ei2_kind != 'checkpoint').",
                             "a checkpoint written by EI² one-shot tuning")
    train = json.loads(meta[META_TRAIN])
    old_fp = train.get("fingerprint", {})
    if base_differences(dict(old_fp.get("base") or {}), dict(fingerprint.get("base") or {}), 1e-2,
                        scale_by_stored=False):
        raise ValueError(f"resume: the checkpoint {path!r} was tuned from another backbone "
                         f"({old_fp.get('base')} vs {fingerprint.get('base')}); turn resume off or change run_name")
    for key in ("inflation", "latents_shape"):
        if old_fp.get(key) != fingerprint.get(key):
            raise ValueError(f"resume: the checkpoint {path!r} was made with a different {key.replace('_', ' ')} "
                             f"({old_fp.get(key)} vs {fingerprint.get(key)}); turn resume off or change run_name")
    for key in ("latents_sum", "text_sum"):
        a, b = old_fp.get(key), fingerprint.get(key)
        if a is None or b is None or abs(a - b) > 1e-3 * max(1.0, abs(b)):
            what = "input frames" if key == "latents_sum" else "caption"
            raise ValueError(f"resume: the checkpoint {path!r} was tuned on different {what}; turn resume off "
                             "or change run_name")
    now = config.optimizer_fields()
    for key, val in now.items():
        old = train.get(key)
        if (list(old) if isinstance(old, (list, tuple)) else old) != val:
            raise ValueError(f"resume: the checkpoint {path!r} used {key}={old}, this run {key}={val}; "
                             "use the same settings to resume (only steps may change)")
    sd = read_state_dict(path)
    load_tuned_state(model, {k[len("model/"):]: v for k, v in sd.items() if k.startswith("model/")}, path)
    params = dict(model.unet.named_parameters())
    for name in names:
        p = params[name]
        st = {}
        for key in ("exp_avg", "exp_avg_sq"):
            t = sd.get(f"optim/{name}/{key}")
            if t is not None:
                st[key] = t.to(device=p.device, dtype=p.dtype).clone()
        s = sd.get(f"optim/{name}/step")
        if s is not None:
            st["step"] = torch.tensor(float(s.reshape(-1)[0]), dtype=torch.float32)
        if st:
            optimizer.state[p] = st
    generator.set_state(sd["rng/cpu"].to(torch.uint8).clone())
    if scaler is not None and scaler.is_enabled() and "scaler/scale" in sd:
        scaler.load_state_dict({"scale": float(sd["scaler/scale"][0]),
                                "_growth_tracker": int(sd["scaler/growth_tracker"][0]),
                                "growth_factor": scaler.get_growth_factor(),
                                "backoff_factor": scaler.get_backoff_factor(),
                                "growth_interval": scaler.get_growth_interval()})
    history = [float(x) for x in sd.get("history/loss", torch.zeros(0)).tolist()]
    return int(train["step"]), history


# --------------------------------------------------------------------------------------------
# the tuning loop


class OneShotTuner:
    """The state of one-shot tuning (EI² §5) and its step; :func:`tune_one_shot` drives it.

    Built inside ``torch.inference_mode(False)`` with autograd on: copies the inputs into
    ordinary tensors, unfreezes the §5 set (:func:`fdd.ei2.inflate.set_trainable`), makes AdamW
    (gates in their own group at ``lr x gate_lr_scale``), the noise generator, the loss scaler,
    and switches gradient checkpointing as configured. Call :meth:`step` (under the same
    modes) for one optimisation step and :meth:`close` when done.
    """

    def __init__(self, model: InflatedUNet, latents: torch.Tensor, text_emb: torch.Tensor, config: TuneConfig,
                 schedule: DDIMSchedule | None = None):
        self.config = config.validate()
        self.model = model
        self.schedule = schedule or DDIMSchedule()
        self.device = device = model.device
        self.latents = latents.detach().clone().to(device=device, dtype=torch.float32)
        self.text_emb = text_emb.detach().clone().to(device=device, dtype=model.dtype)
        self.named = set_trainable(model)
        self.names = [n for n, _ in self.named]
        if not self.named:
            raise ValueError("model: no tuned parameters found (is the UNet inflated?)")
        gates = [p for n, p in self.named if n.endswith(".temporal.gate")]
        others = [p for n, p in self.named if not n.endswith(".temporal.gate")]
        groups = [{"params": others, "lr": config.learning_rate}]
        if gates:
            groups.append({"params": gates, "lr": config.learning_rate * config.gate_lr_scale})
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=tuple(config.betas),
                                           eps=config.eps, weight_decay=config.weight_decay, foreach=False)
        self.amp = autocast_dtype(device, config.mixed_precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(self.amp == torch.float16))
        self.generator = torch.Generator(device="cpu").manual_seed(int(config.seed))
        unet = model.unet
        if config.gradient_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
        elif hasattr(unet, "disable_gradient_checkpointing"):
            unet.disable_gradient_checkpointing()
        self.fingerprint = _fingerprint(model, self.latents, self.text_emb)
        self.alphas = self.schedule.alphas_cumprod
        self.history: list[float] = []
        self.step_count = 0
        model.train()

    def step(self) -> float:
        """One step: refresh the spectral norms, draw t and ε, noise the latents, predict ε,
        :func:`diffusion_loss`, backward, clip, AdamW. Returns the loss."""
        cfg, model = self.config, self.model
        model.refresh_spectral_norms(cfg.power_iterations)
        t = int(torch.randint(0, self.schedule.num_train_timesteps, (1,), generator=self.generator))
        noise = torch.randn(self.latents.shape, generator=self.generator, dtype=torch.float32).to(self.device)
        x_t = add_noise(self.latents, noise, float(self.alphas[t]))
        with torch.autocast(device_type=self.device.type, dtype=self.amp, enabled=self.amp is not None):
            pred = model(x_t.to(model.dtype), t, self.text_emb)
        loss = diffusion_loss(pred, noise)
        require_finite(loss.detach(), "the EI² tuning loss", self.step_count + 1, self.config.steps,
                       OPTIMISATION_CAUSES + " (lower learning_rate)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named], cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        value = float(loss.detach())
        self.history.append(value)
        self.step_count += 1
        return value

    def save_checkpoint(self, path: str) -> str:
        return save_checkpoint(path, self.model, self.optimizer, self.names, self.generator, self.scaler,
                               self.step_count, self.history, self.config, self.fingerprint)

    def load_checkpoint(self, path: str) -> int:
        step, history = _load_checkpoint(path, self.model, self.optimizer, self.names, self.generator,
                                         self.scaler, self.config, self.fingerprint)
        self.step_count, self.history = step, history[:step]
        return step

    def close(self) -> None:
        """Drop gradients, freeze, eval mode, gradient checkpointing off."""
        self.optimizer.zero_grad(set_to_none=True)
        self.model.requires_grad_(False)
        self.model.eval()
        if hasattr(self.model.unet, "disable_gradient_checkpointing"):
            self.model.unet.disable_gradient_checkpointing()


def tune_one_shot(model: InflatedUNet, latents: torch.Tensor, text_emb: torch.Tensor,
                  config: TuneConfig | None = None, *, checkpoint_path: str | None = None,
                  resume: bool | str = False, callback: ProgressCallback | None = None,
                  should_cancel: CancelCheck | None = None,
                  schedule: DDIMSchedule | None = None) -> TuneResult:
    """Tune ``model`` in place on one video (EI² §4.1, §5).

    ``latents``: the video's VAE latents ``(1, C, n, h, w)`` (already scaled); ``text_emb``: its
    caption's embedding ``(1, L, D)``. Each step draws t ~ U{0..T−1} and ε ~ N(0, I) from a CPU
    generator seeded with ``config.seed``, noises the latents (DDPM forward process), predicts ε
    and minimises :func:`diffusion_loss` (see :class:`OneShotTuner`). Before every step the
    spectral norms take ``config.power_iterations`` block power-iteration updates; after the
    last step they are converged (``FINAL_POWER_ITERATIONS``).

    Checkpoints (``checkpoint_path``, every ``config.checkpoint_every`` steps, and when
    ``callback`` raises) hold everything needed to continue bit-identically: ``resume`` True
    continues the checkpoint and refuses to start when there is none (naming where it looked);
    ``"if_present"`` continues one if it exists (same settings required; ``steps`` may grow). Runs with autograd
    on, outside inference mode, whatever the caller's mode.
    """
    config = (config or TuneConfig()).validate()
    with torch.inference_mode(False), torch.enable_grad():
        tuner = OneShotTuner(model, latents, text_emb, config, schedule)
        start = 0
        if resume not in (False, True, "if_present"):
            raise ValueError(f"resume: expected False, True or 'if_present', got {resume!r}")
        if resume is True and not (checkpoint_path and os.path.isfile(checkpoint_path)):
            raise FileNotFoundError(f"resume: no checkpoint to continue at {checkpoint_path!r}; start a new run "
                                    "(resume off) or name the run whose checkpoint exists")
        if resume and checkpoint_path and os.path.isfile(checkpoint_path):
            start = tuner.load_checkpoint(checkpoint_path)
        last_saved = start if start else -1
        result = TuneResult(history=tuner.history, steps_done=start, resumed_from=start,
                            checkpoint_path=checkpoint_path)
        try:
            for _ in range(start, config.steps):
                tuner.step()
                done = tuner.step_count
                result.steps_done = done
                if checkpoint_path and config.checkpoint_every and done % config.checkpoint_every == 0:
                    tuner.save_checkpoint(checkpoint_path)
                    last_saved = done
                try:
                    report(done, config.steps, None, callback, should_cancel)
                except BaseException:
                    result.interrupted = True
                    if checkpoint_path and last_saved != done:
                        tuner.save_checkpoint(checkpoint_path)
                    raise
        finally:
            tuner.close()
        result.history = tuner.history
        # converge the spectral estimates for the finished weights (per-step tracking may lag a
        # fraction of a percent behind fast-moving weights)
        model.refresh_spectral_norms(max(config.power_iterations, FINAL_POWER_ITERATIONS))
    return result


# --------------------------------------------------------------------------------------------
# tuned-weight files


def write_tuned_weights(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], config: InflationConfig,
                        base: Mapping | None = None, history: list[float] | None = None,
                        train_info: Mapping | None = None) -> str:
    """Write tuned tensors (safetensors, atomically) with the inflation settings, the base UNet's
    fingerprint, training info and the loss history in the metadata."""
    meta = {META_FORMAT: FORMAT_VERSION, META_KIND: "tuned",
            META_INFLATION: config.to_json(),
            META_BASE: json.dumps(dict(base or {}), sort_keys=True),
            META_TRAIN: json.dumps(dict(train_info or {}), sort_keys=True, default=str),
            META_HISTORY: json.dumps([float(x) for x in (history or [])])}
    return save_safetensors_atomic(dict(tensors), os.fspath(path), meta)


def save_tuned_weights(path: str | os.PathLike, model: InflatedUNet, history: list[float] | None = None,
                       train_info: Mapping | None = None) -> str:
    """Save only the tuned tensors of ``model`` (:func:`fdd.ei2.inflate.tuned_state_dict`) with
    its inflation settings (see :func:`write_tuned_weights`)."""
    return write_tuned_weights(path, tuned_state_dict(model), model.config, base_fingerprint(model.unet),
                               history, train_info)


@dataclass
class TunedWeights:
    """What a tuned-weights file (or a checkpoint) holds."""

    tensors: dict[str, torch.Tensor]
    config: InflationConfig
    history: list[float] = field(default_factory=list)
    train_info: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    source: str = ""


def read_tuned_weights(path: str | os.PathLike) -> TunedWeights:
    """Read a tuned-weights file or a tuning checkpoint (its ``model/*`` tensors)."""
    path = os.fspath(path)
    meta = read_safetensors_metadata(path)
    if META_INFLATION not in meta:
        raise ModelLoadError(path, "this file has no EI² inflation settings in its metadata "
                             "(fdd_ei2_inflation), so it is not an EI² tuned-weights file.",
                             "a .safetensors file written by 'FDD EI² Save Tuned Weights' or an EI² "
                             "tuning checkpoint")
    try:
        config = InflationConfig.from_json(meta[META_INFLATION])
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(path, f"the inflation settings in the metadata are invalid ({exc}).",
                             "an EI² tuned-weights file") from exc
    sd = read_state_dict(path)
    if meta.get(META_KIND) == "checkpoint":
        sd = {k[len("model/"):]: v for k, v in sd.items() if k.startswith("model/")}
    history = json.loads(meta.get(META_HISTORY, "[]") or "[]")
    info = json.loads(meta.get(META_TRAIN, "{}") or "{}")
    base = json.loads(meta.get(META_BASE, "{}") or "{}")
    return TunedWeights(tensors=sd, config=config, history=[float(x) for x in history],
                        train_info=info, base=base, source=path)


def check_tuned_base(tuned: TunedWeights, unet, backbone_name: str | None = None) -> None:
    """Refuse EI² weights tuned on another backbone: the base fingerprint stored in the file
    (architecture + a checksum of ``conv_in``) against the backbone they are loaded onto. Files
    written before the fingerprint existed (no ``fdd_ei2_base``) are let through."""
    if not tuned.base:
        return
    diffs = base_differences(tuned.base, base_fingerprint(unet), 1e-3)
    if diffs:
        where = f" '{backbone_name}'" if backbone_name else ""
        raise ModelLoadError(tuned.source or None, f"these EI² weights were tuned on another backbone than"
                             f"{where}: " + "; ".join(diffs) + ".",
                             "the backbone (and LoRAs) the weights were tuned on")


def loss_summary(history: list[float]) -> str:
    if not history:
        return "no steps"
    k = max(1, len(history) // 10)
    first = sum(history[:k]) / k
    last = sum(history[-k:]) / k
    return f"{len(history)} steps, mean loss of first {k}: {first:.4f}, last {k}: {last:.4f}"


__all__ = [
    "OneShotTuner",
    "TuneConfig",
    "TuneResult",
    "TunedWeights",
    "autocast_dtype",
    "diffusion_loss",
    "loss_summary",
    "read_tuned_weights",
    "check_tuned_base",
    "save_checkpoint",
    "save_tuned_weights",
    "tune_one_shot",
    "write_tuned_weights",
]
