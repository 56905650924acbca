"""Toy-world training library: a few steps of each trainer on tiny budgets, exports through
the pack's loaders, resume, tokenizer and whitening. (The real trainings take minutes each;
see fdd/toy/train.py.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fdd.toy.train import (
    EXPORT,
    TrainConfig,
    encode,
    load_tokenizer,
    make_text_encoder,
    text_corpus,
    toy_vocabulary,
    train,
    whiten_text_encoder,
    write_word_tokenizer,
)


def _lines(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(x) for x in fh]


def _cfg(**kw):
    base = {"steps": 2, "batch": 4, "eval_samples": 4, "sample_steps": 2, "eval_every": 2, "log_every": 1,
            "ckpt_every": 1, "clips_per_batch": 2, "frames": 4, "lr": 1e-3}
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toytrain"))
    res = {}
    for name in ("text", "vae", "unet", "controlnet", "motion", "t2v"):
        res[name] = train(name, out, _cfg())
    return out, res


def test_word_tokenizer_one_token_per_word(tmp_path):
    tok = load_tokenizer(write_word_tokenizer(tmp_path / "tok"))
    vocab = tok.get_vocab()
    for w in toy_vocabulary():
        assert tok(w).input_ids[1:-1] == [vocab[w + "</w>"]]
    ids = tok("make the circle blue").input_ids
    assert len(ids) == 6 and max(ids) < len(vocab)


def test_whitening_is_baked_and_decorrelates(tmp_path):
    tok = load_tokenizer(write_word_tokenizer(tmp_path / "tok"))
    te = make_text_encoder(len(tok.get_vocab()), 0)
    prompts = text_corpus(0, 300)
    stats = whiten_text_encoder(tok, te, prompts)
    assert stats["after"]["mean_cos"] < stats["before"]["mean_cos"]
    h = encode(tok, te, prompts).reshape(-1, 64)
    assert torch.allclose(h.mean(0), torch.zeros(64), atol=1e-3)
    assert torch.allclose(h.std(0), torch.ones(64), atol=1e-3)
    assert type(te).__name__ == "CLIPTextModel"


@pytest.mark.slow
def test_every_trainer_runs_logs_and_changes_weights(trained):
    out, res = trained
    for name in ("vae", "unet", "controlnet", "motion", "t2v"):
        assert res[name]["step"] == 2 and np.isfinite(res[name]["loss"]), name
        lines = _lines(os.path.join(out, name, "log.jsonl"))
        assert [r["step"] for r in lines if "loss" in r] == [1, 2]
        assert any("eval" in r for r in lines), name
        st = torch.load(os.path.join(out, name, "state.pt"), weights_only=True)
        assert st["step"] == 2
    assert 0 <= res["unet"]["eval"]["all_correct"] <= 1
    assert "edit_accuracy" in res["controlnet"]["eval"]
    assert "attributes_constant" in res["motion"]["eval"]
    # the motion trainer only moves motion modules: the backbone UNet weights are unchanged
    from fdd.toy.train import Toolkit, make_motion_adapter

    kit = Toolkit(out)
    st = torch.load(os.path.join(out, "motion", "state.pt"), weights_only=True)["model"]
    assert torch.equal(st["conv_in.weight"], kit.unet.conv_in.weight)
    ad = make_motion_adapter(4)
    fin = torch.load(os.path.join(out, "motion", "final.pt"), weights_only=True)
    assert any(not torch.equal(fin[k], v) for k, v in ad.state_dict().items() if "proj_out" not in k)


@pytest.mark.slow
def test_vae_loss_goes_down(tmp_path):
    from fdd.toy.train import train_vae

    train("text", str(tmp_path), _cfg())
    res = train_vae(str(tmp_path), _cfg(steps=24, batch=8, eval_every=0, lr=1e-3))
    lines = [r["loss"] for r in _lines(tmp_path / "vae" / "log.jsonl") if "loss" in r]
    assert np.mean(lines[-5:]) < np.mean(lines[:5])
    assert res["latent_gain"] > 0


@pytest.mark.slow
def test_resume_continues(trained, tmp_path):
    import shutil

    out, _ = trained
    work = tmp_path / "w"
    shutil.copytree(out, work)
    before = torch.load(work / "unet" / "state.pt", weights_only=True)
    res = train("unet", str(work), _cfg(steps=3, eval_every=0))
    assert res["step"] == 3
    steps = [r["step"] for r in _lines(work / "unet" / "log.jsonl")]
    assert steps.count(3) >= 1 and steps.count(1) == 1  # continued, did not restart
    after = torch.load(work / "unet" / "state.pt", weights_only=True)
    k = "conv_in.weight"
    assert not torch.equal(before["model"][k], after["model"][k])


def test_exports_load_through_the_pack_loaders(trained):
    from fdd.models.controlnet import check_controlnet_matches_unet, load_controlnet
    from fdd.models.motion import build_motion_unet, load_motion_adapter
    from fdd.models.sd1 import load_sd1
    from fdd.models.t2v import load_t2v_unet
    from fdd.pipelines.common import encode_prompts
    from fdd.toy.train import Toolkit

    out, _ = trained
    d = os.path.join(out, "export")
    bb = load_sd1(os.path.join(d, EXPORT["backbone"]), tokenizer=os.path.join(d, EXPORT["tokenizer"]))
    kit = Toolkit(out)
    emb = encode_prompts(bb.tokenizer, bb.text_encoder, ["a red circle on a white background"])
    assert torch.allclose(emb, kit.emb(["a red circle on a white background"]), atol=1e-5)
    assert bb.vae_scale_factor == 2
    for a, b in zip(bb.unet.state_dict().values(), kit.unet.state_dict().values()):
        assert torch.equal(a, b)
    folder = load_sd1(os.path.join(d, EXPORT["backbone_diffusers"]))  # tokenizer/ from the folder
    assert torch.allclose(encode_prompts(folder.tokenizer, folder.text_encoder,
                                         ["a red circle on a white background"]), emb, atol=1e-5)
    cn = load_controlnet(os.path.join(d, EXPORT["controlnet"]))
    check_controlnet_matches_unet(cn, bb.unet)
    ad = load_motion_adapter(os.path.join(d, EXPORT["motion"]))
    mu = build_motion_unet(bb.unet, ad)
    x = torch.randn(1, 4, 4, 16, 16)
    assert mu(x, 10, encoder_hidden_states=emb.repeat(4, 1, 1)).sample.shape == x.shape
    u3 = load_t2v_unet(os.path.join(d, EXPORT["t2v"]))
    assert u3(x, 10, encoder_hidden_states=emb).sample.shape == x.shape


def test_edit_pipeline_runs_on_the_exports(trained):
    from fdd.models.controlnet import load_controlnet
    from fdd.models.motion import load_motion_adapter
    from fdd.models.sd1 import load_sd1
    from fdd.pipelines import VideoEditStack
    from fdd.pipelines.plug_and_play import PlugAndPlayConfig, plug_and_play_edit
    from fdd.toy import random_scene, render_clip

    out, _ = trained
    d = os.path.join(out, "export")
    bb = load_sd1(os.path.join(d, EXPORT["backbone"]), tokenizer=os.path.join(d, EXPORT["tokenizer"]))
    stack = VideoEditStack(bb, controlnet=load_controlnet(os.path.join(d, EXPORT["controlnet"])),
                           motion_adapter=load_motion_adapter(os.path.join(d, EXPORT["motion"])))
    clip = torch.from_numpy(render_clip(random_scene(np.random.default_rng(0)), 4))
    res = plug_and_play_edit(stack, clip, "make the circle blue", "a blue circle on a white background",
                             PlugAndPlayConfig(steps=2))
    assert res.shape == clip.shape and torch.isfinite(res).all()


def test_cli_train_text(tmp_path):
    from fdd.toy.__main__ import main

    assert main(["train", "text", "--out", str(tmp_path)]) == 0
    assert os.path.isfile(tmp_path / "text" / "whitening.json")
    assert main(["dataset", "--out", str(tmp_path / "ds"), "--items", "2"]) == 0


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    """Two steps straight == one step, stop, resume for the second (same batches, same noise)."""
    from fdd.toy.train import train_vae

    for d in ("a", "b"):
        train("text", str(tmp_path / d), _cfg())
    train_vae(str(tmp_path / "a"), _cfg(steps=2, eval_every=0))
    train_vae(str(tmp_path / "b"), _cfg(steps=1, eval_every=0))
    train_vae(str(tmp_path / "b"), _cfg(steps=2, eval_every=0))
    a = torch.load(tmp_path / "a" / "vae" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "vae" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
def test_cli_train_all_parallel_runs_the_waves(tmp_path):
    """``train all --parallel`` trains every component (one subprocess per component of a wave),
    leaves each one's log, final weights and the real-format exports."""
    from fdd.toy.__main__ import WAVES, main

    assert main(["train", "all", "--parallel", "--out", str(tmp_path), "--steps", "1", "--batch", "2",
                 "--eval-samples", "1", "--eval-every", "0"]) == 0
    for name in ("vae", "unet", "controlnet", "motion", "t2v"):
        assert os.path.isfile(tmp_path / name / "final.pt"), name
        assert json.load(open(tmp_path / name / "result.json"))["step"] == 1
    assert [c for w in WAVES for c in w][:2] == ["text", "vae"]
    for key in ("backbone", "controlnet", "motion", "t2v"):
        assert os.path.exists(tmp_path / "export" / EXPORT[key]), key
    assert (tmp_path / "motion.log").read_text().strip()


def test_cli_parallel_needs_all(tmp_path):
    from fdd.toy.__main__ import main

    with pytest.raises(SystemExit, match="only with the component 'all'"):
        main(["train", "vae", "--parallel", "--out", str(tmp_path)])


@pytest.mark.slow
def test_decoder_finetune_keeps_the_latent_space_and_is_used(tmp_path):
    """The decoder component trains only the decoder side: encoder and quant_conv are bit-equal
    to the VAE's, the decoder moved, the Toolkit decodes with it, and the backbone export carries it."""
    from fdd.models.sd1 import load_sd1
    from fdd.toy.train import Toolkit, _final_weights

    out = str(tmp_path)
    for name in ("text", "vae", "unet"):
        train(name, out, _cfg())
    res = train("decoder", out, _cfg(steps=3, lr=1e-2))
    assert res["step"] == 3 and res["eval"]["n"] == 4
    old, new = _final_weights(out, "vae"), _final_weights(out, "decoder")
    assert old.keys() == new.keys()
    enc = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in old if k.startswith(("decoder.", "post_quant_conv."))]
    assert enc and dec and len(enc) + len(dec) == len(old)
    assert all(torch.equal(old[k], new[k]) for k in enc)
    assert any(not torch.equal(old[k], new[k]) for k in dec)
    kit = Toolkit(out)
    assert torch.equal(kit.vae.decoder.conv_out.weight, new["decoder.conv_out.weight"])
    bb = load_sd1(os.path.join(out, "export", EXPORT["backbone"]), tokenizer=os.path.join(out, "text", "tokenizer"))
    assert torch.allclose(bb.vae.decoder.conv_out.weight.float(), new["decoder.conv_out.weight"])


def test_task_weights_steer_the_edit_mix_and_bad_weights_are_refused():
    """``task_weights`` draws tasks in proportion to the weights (a task at 0 never appears), the
    uniform default draws exactly the recipe's edits, and bad weights fail naming the input."""
    from fdd.toy.__main__ import _task_weights
    from fdd.toy.train import draw_probabilities, sample_edits
    from fdd.toy.world import TASKS

    n = 700
    edits = sample_edits(np.random.default_rng(3), n, task_weights={"Add": 3, "Local": 1})[4]
    counts = {t: sum(e.task == t for e in edits) for t in TASKS}
    assert counts["Add"] + counts["Local"] == n
    assert abs(counts["Add"] / n - 0.75) < 4 * (0.75 * 0.25 / n) ** 0.5  # binomial, 4 sd

    # the default is the recipe's uniform draw: seed 5 draws what it drew before task_weights existed
    _, _, _, _, edits, idx = sample_edits(np.random.default_rng(5), 6)
    assert [e.instruction for e in edits] == [
        "remove the circle", "change the background to white", "change the background to white",
        "remove the triangle", "draw the square as an outline", "change the background to black"]
    assert idx == [1, 7, 2, 0, 1, 6]

    def task_probabilities(w):
        return draw_probabilities(w, TASKS, "task_weights")

    assert task_probabilities({"Add": 1, "Remove": 3}).tolist() == [0, 0, 0.75, 0.25, 0, 0, 0]
    with pytest.raises(ValueError, match="task_weights: unknown name.*'Ad'"):
        task_probabilities({"Ad": 1})
    with pytest.raises(ValueError, match="task_weights: expected finite weights >= 0"):
        task_probabilities({"Add": -1, "Local": 2})
    with pytest.raises(ValueError, match="positive sum"):
        task_probabilities({t: 0 for t in TASKS})
    assert _task_weights("Add=3, Local=2") == {**{t: 1.0 for t in TASKS}, "Add": 3.0, "Local": 2.0}
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=WEIGHT pairs like Add=3,Local=2"):
        _task_weights("Add:3")
    with pytest.raises(argparse.ArgumentTypeError, match="task_weights: unknown name"):
        _task_weights("Move=2")


def test_backbone_frames_take_task_weights_and_the_default_is_the_recipe():
    """``sample_captioned`` (the backbone's frames) draws its edited frames' tasks by
    ``task_weights``; the default draws the recipe's frames bit for bit (seed 6's captions and
    pixel sum from before the option existed), and `train unet` parses the flag."""
    from fdd.toy.__main__ import build_parser
    from fdd.toy.train import sample_captioned

    x, caps = sample_captioned(np.random.default_rng(6), 5)
    assert caps == ["a striped blue circle on a white background", "an outlined blue triangle on a black background",
                    "a red triangle on a black background", "an outlined blue circle on a white background",
                    "a green triangle on a white background"]
    assert float(x.sum()) == 2365.0
    _, caps = sample_captioned(np.random.default_rng(6), 30, edited=1.0, task_weights={"Add": 1})
    assert all(" and a " in c for c in caps)  # Add only: every frame holds two objects
    _, caps = sample_captioned(np.random.default_rng(6), 30, edited=0.0, task_weights={"Add": 1})
    assert not any(" and a " in c for c in caps)  # unedited frames are untouched by the weights
    with pytest.raises(ValueError, match="task_weights: unknown name"):
        sample_captioned(np.random.default_rng(6), 2, task_weights={"Move": 1})
    ap, _ = build_parser()
    args = ap.parse_args(["train", "unet", "--out", "r", "--task-weights", "Add=6"])
    assert args.task_weights["Add"] == 6.0 and args.task_weights["Local"] == 1.0


def test_eval_t2i_on_an_edit_tasks_output_captions_pairs_captions_with_their_scenes(monkeypatch):
    """``eval_t2i(task="Add")`` asks the backbone for the Add edits' output captions (two objects)
    and scores each sample against the scene that caption describes: rendered truth in place of
    the samples scores 1.0, a sample set shuffled against its captions does not, and the default
    (no task) still draws single-object scenes."""
    from fdd.toy import train as T
    from fdd.toy.world import render_frame

    seen = {}

    def fake_sample(kit, unet, scenes, cfg, seed, captions=None, shuffle=False):
        seen["captions"] = captions
        imgs = np.stack([render_frame(s) for s in scenes])
        return imgs[::-1].copy() if shuffle else imgs

    cfg = T.TrainConfig(eval_samples=24)
    monkeypatch.setattr(T, "sample_t2i", fake_sample)
    res = T.eval_t2i(None, None, cfg, seed=3, task="Add")
    assert res["all_correct"] == 1.0 and res["n"] == 24
    assert len(seen["captions"]) == 24 and all(" and a " in c for c in seen["captions"])
    assert T.eval_t2i(None, None, cfg, seed=3)["all_correct"] == 1.0 and seen["captions"] is None
    monkeypatch.setattr(T, "sample_t2i", lambda *a, **k: fake_sample(*a, **k, shuffle=True))
    assert T.eval_t2i(None, None, cfg, seed=3, task="Add")["all_correct"] < 0.5
    with pytest.raises(ValueError, match="task: expected one of"):
        T.eval_t2i(None, None, cfg, task="Move")


def test_shape_weights_steer_the_video_clips_and_the_default_is_the_recipe():
    """``shape_weights`` draws the training clips' shapes in proportion to the weights (edits of
    the drawn scene may still change the shape), the default draws the recipe's clips bit for
    bit, and the CLI parses / refuses the flag naming it."""

    from fdd.toy.__main__ import build_parser
    from fdd.toy.train import sample_clips
    from fdd.toy.world import SHAPES, random_scene

    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, shape_p=np.array([0.0, 0.8, 0.2])) for _ in range(600)]
    share = np.mean([s.objects[0].shape == "square" for s in scenes])
    assert not any(s.objects[0].shape == "circle" for s in scenes)
    assert abs(share - 0.8) < 4 * (0.8 * 0.2 / 600) ** 0.5

    # the default is the recipe's draw: seed 4 draws what it drew before shape_weights existed
    x0, c0 = sample_clips(np.random.default_rng(4), 3)
    assert c0 == ["an outlined green circle on a black background", "a blue circle on a white background",
                  "a striped yellow square on a white background"]
    assert float(x0.sum()) == 17244.0
    _, caps = sample_clips(np.random.default_rng(4), 40, edited=0.0, shape_weights={"square": 1})
    assert all("square" in c for c in caps)

    ap, _ = build_parser()
    args = ap.parse_args(["train", "motion", "--out", "r", "--shape-weights", "square=3"])
    assert args.shape_weights == {"circle": 1.0, "square": 3.0, "triangle": 1.0}
    assert set(args.shape_weights) == set(SHAPES)
    with pytest.raises(SystemExit):
        ap.parse_args(["train", "motion", "--out", "r", "--shape-weights", "hexagon=2"])


@pytest.mark.slow
def test_resume_with_a_spent_minutes_budget_says_so(tmp_path, capsys):
    """--minutes caps the total training time, resumed time included: a resume whose budget is
    already spent trains nothing and says why on stderr instead of ending silently."""
    from fdd.toy.train import train_vae

    train("text", str(tmp_path), _cfg())
    train_vae(str(tmp_path), _cfg(steps=1, eval_every=0))
    capsys.readouterr()
    res = train_vae(str(tmp_path), _cfg(steps=3, eval_every=0, minutes=1e-9))
    assert res["step"] == 1
    err = capsys.readouterr().err
    assert "vae: nothing to train" in err and "pass a larger --minutes to continue to step 3" in err


def test_parallel_passes_every_flag_value_through_even_one_named_like_a_positional():
    """``train all --parallel`` rebuilds each component's flags from the parsed values: an --out
    folder called ``all`` or ``train`` keeps its value, and --parallel / the component are dropped."""
    from fdd.toy.__main__ import _component_flags, build_parser

    ap, t = build_parser()
    args = ap.parse_args(["train", "--out", "all", "all", "--parallel", "--lr", "0.001", "--task-weights", "Add=3"])
    flags = _component_flags(args, t)
    assert flags[flags.index("--out") + 1] == "all" and "--parallel" not in flags
    assert flags[flags.index("--lr") + 1] == "0.001" and "--steps" not in flags
    tw = flags[flags.index("--task-weights") + 1]
    again = ap.parse_args(["train", "controlnet", *flags])
    assert again.out == "all" and again.lr == 1e-3 and again.task_weights == args.task_weights
    assert again.task_weights["Add"] == 3.0 and "Add=3" in tw


def test_x0_estimate_inverts_the_forward_noising():
    """With the true noise as the denoiser's output the estimate returns the clean latent
    exactly; with a zero output it is z_t / sqrt(abar_t) (checked against the schedule)."""
    from fdd.toy.train import _alphas, x0_estimate

    ab = _alphas()
    g = torch.Generator().manual_seed(0)
    z, noise = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([0, 250, 900])

    class Oracle(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, zt, t, encoder_hidden_states):
            return type("R", (), {"sample": self.out(zt)})()

    got = x0_estimate(Oracle(lambda zt: noise), z, None, t, noise, ab)
    assert torch.allclose(got, z, atol=1e-4)
    zero = x0_estimate(Oracle(torch.zeros_like), z, None, t, noise, ab)
    a = ab[t].view(-1, 1, 1, 1)
    assert torch.allclose(zero, (a.sqrt() * z + (1 - a).sqrt() * noise) / a.sqrt(), atol=1e-5)


@pytest.mark.slow
def test_decoder_x0_share_trains_on_backbone_estimates_and_refuses_bad_settings(tmp_path, monkeypatch):
    """``decoder_x0`` decodes that share of each batch from the backbone's x0 estimates (the UNet
    is called with those frames' captions, timesteps below ``decoder_x0_tmax``); the encoder stays
    bit-equal; a share outside [0, 1) or a bound outside 1..1000 is refused by name."""
    from fdd.toy import train as T

    out = str(tmp_path)
    for name in ("text", "vae", "unet"):
        train(name, out, _cfg())
    seen = []
    real = T.x0_estimate

    def spy(unet, z, emb, t, noise, ab):
        seen.append((len(z), int(t.max())))
        return real(unet, z, emb, t, noise, ab)

    monkeypatch.setattr(T, "x0_estimate", spy)
    res = train("decoder", out, _cfg(steps=2, batch=4, eval_every=0, decoder_x0=0.5, decoder_x0_tmax=50))
    assert res["step"] == 2 and seen and all(n == 2 and tmax < 50 for n, tmax in seen)
    old, new = T._final_weights(out, "vae"), T._final_weights(out, "decoder")
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("encoder.", "quant_conv.")))
    for bad, word in (({"decoder_x0": 1.0}, "decoder_x0:"), ({"decoder_x0_tmax": 0}, "decoder_x0_tmax:")):
        with pytest.raises(ValueError, match=word):
            T.train_vae_decoder(out, _cfg(**bad))
