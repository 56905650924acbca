"""The toy training recipe: components, default steps / minutes / stages, continuation legs, export
names and :class:`TrainConfig` (what ``python -m fdd.toy train`` reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field


COMPONENTS = ("text", "vae", "unet", "controlnet", "motion", "t2v", "decoder")
#: steps per component for the CLI: the notes' minute budgets (toy-world-notes.md "Suggested
#: budget") turned into step counts at the measured s/step on 2 cores, so a run is the same on a
#: slower or busier machine (VAE 8 min, UNet ~25, ControlNet 10, motion 15, T2V 15)
DEFAULT_STEPS = {"text": 0, "vae": 1100, "unet": 3100, "controlnet": 2000, "motion": 900, "t2v": 700,
                 "decoder": 2000}
#: later stages after DEFAULT_STEPS for the CLI: (total steps, lr, offset noise). The shipped
#: backbone plateaued at lr 1e-3 (all-attributes-correct ~31 % from step 2400 to 3100) because the
#: background followed the initial noise, not the caption (see training_noise); 300 steps at
#: lr 1e-4 did not help, nor 1000 with offset noise 0.1 (background accuracy 58 % throughout);
#: offset noise 0.5 did (background 58 -> 77 %, all-correct 36 -> 47 % in 400 steps).
#: The ControlNet's preservation (centroid within 1 px) was still rising at 2000 steps
#: (0.11 at 600, 0.27 at 2000) and the motion module's path residual at 900 (4.0 -> 2.9 px), so
#: both continue at lr 1e-3 and cool down; the ControlNet gained EMA at step 2000 of the shipped
#: run (0.27 -> 0.47 preservation in the next 1400 steps; EMA does not change the raw weights'
#: trajectory, so a replay with EMA from step 0 differs only by the average's first 2000 steps,
#: weight e^-5.9 ~ 0.3 % at the end).
#: The VAE's stages: at 1100 steps the evaluator read 91 % of its decoded shapes right (square
#: corners came back rounded), which capped every adapter's measurable preservation; a GPU run of
#: this recipe (seed 0, --device cuda) read 100 % of 128, and a CPU resume of the 1100-step VAE
#: read 100 % of 64 from step 1800 on. The shipped set keeps its 1100-step VAE's encoder (its
#: latent space) with a decoder fine-tuned by the "decoder" component instead.
STAGES = {"vae": [(8000, 1e-3, 0.0), (10000, 3e-4, 0.0)],
          "unet": [(3400, 1e-4, 0.0), (4400, 3e-4, 0.1), (5000, 3e-4, 0.5), (5400, 1e-4, 0.5)],
          "controlnet": [(6000, 1e-3, 0.5), (7400, 3e-4, 0.5), (7900, 1e-4, 0.5)],
          "motion": [(2900, 1e-3, 0.5), (3300, 3e-4, 0.5)]}
#: What the shipped edit adapter and motion module got beyond :data:`STAGES`, as legs run one after
#: the other from the CPU recipe's last step; each stage of a leg is a CLI call ``python -m fdd.toy
#: train COMPONENT --out RUN --steps TOTAL --lr LR`` plus the leg's ``settings`` as flags, and
#: ``where`` says on what it ran (its minutes are reported apart). ``train all`` does not replay them.
#:
#: - one H100, 4x (ControlNet) / 2x (motion) batch, which costs ~40x more per step on 2 CPU cores.
#:   Measured (evaluator, n 128 / 32): the ControlNet's preservation stayed at 0.71-0.77 from 10000
#:   to 15963 steps (edit accuracy 0.81 -> 0.85); the motion module's path residual fell from 1.06
#:   to 0.65 px, its constant-clip share did not move (0.50-0.69).
#: - ControlNet only, then 1 CPU thread (~0.6 s / step) with the two weakest tasks drawn 3x as
#:   often (``task_weights``). Against the H100 leg's weights, paired on the same 256 edits at cfg 2:
#:   preservation +0.020 +- 0.012 (validation seed 999) and +0.016 +- 0.012 (card seed 12345),
#:   from shape changes (Local) and Add; edit accuracy +0.004 / +0.023.
#: - the VAE decoder, on 1 CPU thread from the shipped set rebuilt by ``python -m fdd.toy unpack``
#:   (the recipe's run folder was gone): 600 steps with half of each batch decoded from the
#:   backbone's x0 estimates (``decoder_x0`` 0.5, t < 400; 24 min). Decoding the same sampled
#:   latents (validation seed 999, n 256 / 64) as the shipped decoder: backbone all-correct
#:   0.945 -> 0.957, edit preservation 0.891 -> 0.898, edit fully right 0.820 -> 0.832, motion
#:   constant clips 0.734 -> 0.750 (one clip), reconstructions still 1.0; on the card seed
#:   (12345) preservation 0.852 -> 0.867, edit accuracy 0.887 -> 0.883, constant clips
#:   0.609 -> 0.594 (one clip), backbone 0.938 -> 0.941.
CONTINUATIONS = {
    "controlnet": ({"where": "one H100", "settings": {"device": "cuda", "batch": 128, "eval_every": 1000,
                                                      "eval_samples": 128},
                    "stages": [(13390, 3e-4), (15963, 1e-4)]},
                   {"where": "1 CPU thread", "settings": {"batch": 32, "eval_every": 500, "eval_samples": 128,
                                                          "task_weights": "Add=3,Local=3"},
                    "stages": [(21000, 1e-4)]}),
    "motion": ({"where": "one H100", "settings": {"device": "cuda", "clips_per_batch": 16, "eval_every": 1000,
                                                  "eval_samples": 32},
                "stages": [(9300, 1e-3), (12103, 3e-4)]},),
    "decoder": ({"where": "1 CPU thread (from the unpacked shipped set)",
                 "settings": {"decoder_x0": 0.5, "decoder_x0_tmax": 400}, "stages": [(2600, 3e-4)]},)}
#: wall-clock cap in minutes per component for the CLI, stages included (a safety stop, ~2-3x
#: the expected time on 2 cores)
DEFAULT_MINUTES = {"text": 0.0, "vae": 120.0, "unet": 150.0, "controlnet": 200.0, "motion": 240.0, "t2v": 45.0,
                   "decoder": 60.0}
#: per-component settings for the CLI (video evaluations cost ~2 s per sampled clip on 2 cores)
DEFAULT_SETTINGS = {"vae": {"eval_every": 200}, "unet": {"eval_every": 300},
                    "controlnet": {"eval_every": 200, "offset_noise": 0.5},
                    "motion": {"eval_every": 150, "eval_samples": 16, "offset_noise": 0.5},
                    "t2v": {"eval_every": 150, "eval_samples": 16, "offset_noise": 0.5}}
SCALING = 0.18215
TEXT_POSITIONS = 20
CROSS = 64
EXPORT = {"backbone": "toy_sd1.safetensors", "tokenizer": "tokenizer", "backbone_diffusers": "toy_sd1_diffusers",
          "controlnet": "toy_controlnet_edit.safetensors",
          "motion": "toy_motion_module.safetensors", "t2v": "toy_t2v"}


@dataclass
class TrainConfig:
    minutes: float = 5.0
    steps: int | None = None  # stop after this many steps (total, counting resumed ones)
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    eval_every: int = 200
    eval_samples: int = 64
    log_every: int = 10
    ckpt_every: int = 100
    ema: float = 0.999  # 0 disables EMA (UNet / ControlNet / T2V / motion)
    caption_dropout: float = 0.1
    offset_noise: float = 0.0  # see training_noise
    cfg_scale: float = 4.0
    sample_steps: int = 20
    frames: int = 8
    clips_per_batch: int = 8  # motion / t2v: clips per step (x frames)
    size: int = 32
    #: where the models train and sample ("cpu", "cuda", "cuda:1"...). Random draws stay on the
    #: CPU generators (moved afterwards), so a seed draws the same data and noise on any device.
    device: str = "cpu"
    #: edit adapter training, and the edited share of the backbone's frames: relative sampling
    #: weight per edit task (``None``: uniform over TASKS, the recipe; tasks left out of a given
    #: dict get weight 0). Evaluation stays uniform.
    task_weights: dict | None = None
    #: video trainers (motion, t2v): relative sampling weight per shape of the clips' scenes
    #: (``None``: uniform over SHAPES, the recipe; shapes left out get weight 0). Evaluation
    #: stays uniform.
    shape_weights: dict | None = None
    #: decoder fine-tune: share of each batch decoded from the backbone's one-step estimate of the
    #: clean latent (:func:`x0_estimate`) of the frame noised at a timestep below
    #: ``decoder_x0_tmax``, instead of from the encoder's posterior sample (0: the recipe)
    decoder_x0: float = 0.0
    decoder_x0_tmax: int = 400
    extra: dict = field(default_factory=dict)
