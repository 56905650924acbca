"""``python -m fdd train CONFIG``: single process, and under ``torchrun --nproc_per_node 2``
(gloo on the CPU) with the same global batch: the same losses and the same LoRA update."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fdd_tree(models_tree):
    from fdd.testing.fdd_fixtures import write_fdd_tree

    return write_fdd_tree(os.path.dirname(os.path.dirname(models_tree["checkpoint"])), models_tree)


def _write_config(path, models_tree, fdd_tree, out, **kw):
    from fdd.testing.fdd_fixtures import tiny_config

    cfg = tiny_config(models_tree, fdd_tree["dino"], fdd_tree["dataset"], str(out), **kw)
    with open(path, "w") as fh:
        json.dump(cfg.to_dict(), fh)
    return str(path)


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def _log(out):
    with open(os.path.join(out, "log.jsonl")) as fh:
        return [json.loads(x) for x in fh]


def test_cli_single_process_and_torchrun_two_processes_agree(tmp_path, models_tree, fdd_tree):
    from fdd.models.lora import read_lora

    kw = dict(iterations_sds=1, iterations_adv=1, global_batch=2, micro_batch=1)
    one = _write_config(tmp_path / "one.json", models_tree, fdd_tree, tmp_path / "one", **kw)
    two = _write_config(tmp_path / "two.json", models_tree, fdd_tree, tmp_path / "two", **kw)
    r1 = subprocess.run([sys.executable, "-m", "fdd", "train", one, "--threads", "1", "--quiet"], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert json.loads(r1.stdout.strip().splitlines()[-1])["done"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    from fdd.testing.comfy_server import free_port

    r2 = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                         str(free_port()), "-m", "fdd", "train", two, "--threads", "1", "--quiet"],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, start_new_session=True)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]
    l1, l2 = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [h["phase"] for h in l1] == [1, 2] and len(l2) == 2  # rank 0 alone logs
    for a, b in zip(l1, l2):
        for k in ("loss_g", "sds_edit", "sds_video", "grad_norm_g", "loss_d", "d_edit", "d_video"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
    wa = read_lora(os.path.join(tmp_path / "one", "fdd_aligned_lora.safetensors")).unet
    wb = read_lora(os.path.join(tmp_path / "two", "fdd_aligned_lora.safetensors")).unet
    assert wa.keys() == wb.keys()
    moved = 0
    for k in wa:
        assert torch.allclose(wa[k].up, wb[k].up, atol=1e-6) and torch.allclose(wa[k].down, wb[k].down, atol=1e-6), k
        moved += int(wa[k].up.abs().max() > 0)
    assert moved == len(wa)  # every LoRA layer was updated (B starts at zero)
    ck1 = torch.load(os.path.join(tmp_path / "one", "checkpoint.pt"), weights_only=True)
    ck2 = torch.load(os.path.join(tmp_path / "two", "checkpoint.pt"), weights_only=True)
    assert ck1["step"] == ck2["step"] == 2 and ck2["world_size"] == 2
    for k in ck1["d_edit"]:
        assert torch.allclose(ck1["d_edit"][k], ck2["d_edit"][k], atol=1e-6), k


def test_cli_resumes_and_refuses_bad_configs(tmp_path, models_tree, fdd_tree):
    cfg = _write_config(tmp_path / "c.json", models_tree, fdd_tree, tmp_path / "out", iterations_sds=1,
                        iterations_adv=0)
    r = subprocess.run([sys.executable, "-m", "fdd", "train", cfg, "--threads", "1", "--quiet",
                        "--set", "iterations_sds=2"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "fdd", "train", cfg, "--threads", "1", "--quiet",
                        "--set", "iterations_sds=3"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [h["step"] for h in _log(tmp_path / "out")]
    assert steps == [1, 2, 3]  # the second run resumed at step 2 and did one more iteration
    r = subprocess.run([sys.executable, "-m", "fdd", "train", cfg, "--set", "k_step=3"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown config keys ['k_step']" in r.stderr
