"""Shared fixtures. Nothing here downloads: HF_HUB_OFFLINE is forced before any import."""

from __future__ import annotations

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(int(os.environ.get("FDD_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture(scope="session")
def models_tree(tmp_path_factory):
    """The tiny models tree, written once per test session."""
    from fdd.testing.models_tree import write_models_tree

    root = tmp_path_factory.mktemp("models")
    return write_models_tree(root)


COMFY_DIR = os.path.join(ROOT, ".comfyui", "ComfyUI")


@pytest.fixture(scope="session")
def comfy_pack(models_tree):
    """ComfyUI imported in-process (CPU) with the tiny models registered, and this pack
    imported the way ComfyUI imports a custom node folder (a package, relative imports)."""
    if not os.path.isfile(os.path.join(COMFY_DIR, "main.py")):
        pytest.fail(f"ComfyUI is not installed at {COMFY_DIR}: run scripts/setup.sh")
    import importlib.util

    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # the tests run on CPU (a CUDA build of torch without a GPU)
    import folder_paths  # noqa: F401  (ComfyUI's)

    for kind, path in models_tree.items():
        folder = os.path.dirname(path)
        name = os.path.basename(folder)
        if name in ("checkpoints", "controlnet", "loras", "diffusers", "dinov2", "fdd_datasets"):
            folder_paths.add_model_folder_path(name, folder)
    spec = importlib.util.spec_from_file_location("fdd_pack", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["fdd_pack"] = pack
    spec.loader.exec_module(pack)
    import asyncio

    ext = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    folder_paths.add_model_folder_path("animatediff_models", os.path.dirname(models_tree["motion"]))
    return {n.GET_SCHEMA().node_id: n for n in nodes}


@pytest.fixture(scope="session")
def toy_untrained(tmp_path_factory):
    """An untrained toy run (random weights in the toy architectures, real exports):
    ``fdd.testing.toy_run.write_untrained_toy_run``; returns the run folder (exports in
    ``<run>/export``)."""
    from fdd.testing.toy_run import write_untrained_toy_run

    run = tmp_path_factory.mktemp("toy_untrained")
    write_untrained_toy_run(run)
    return str(run)


def start_comfy_server(models_tree, tmp_path_factory, name: str, extra_args=()):
    """A real ComfyUI server (CPU, loopback) with this pack, the tiny models tree and the demo
    clip in its input folder; the caller stops it."""
    from fdd.testing.comfy_server import ComfyServer, prepare_demo_inputs

    models_root = os.path.dirname(os.path.dirname(models_tree["checkpoint"]))
    srv = ComfyServer(str(tmp_path_factory.mktemp(name)), models_root, comfy_dir=COMFY_DIR,
                      extra_args=tuple(extra_args))
    srv.start()
    prepare_demo_inputs(srv)
    return srv


@pytest.fixture(scope="module")
def server(models_tree, tmp_path_factory):
    """One real ComfyUI server per test module that asks for it (:func:`start_comfy_server`)."""
    srv = start_comfy_server(models_tree, tmp_path_factory, "comfy")
    yield srv
    srv.stop()
