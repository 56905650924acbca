"""The video-edit metrics node: CLIP / PickScore / ViCLIP metrics of an edit, plus a comparison grid."""

from __future__ import annotations

import json
import os

from comfy_api.v0_0_2 import io

from ..fdd.metrics.clip_models import load_clip, load_pickscore
from ..fdd.metrics.evaluate import MetricModels, evaluate_edit
from ..fdd.metrics.grid import comparison_grid
from ..fdd.metrics.viclip import load_viclip
from . import _runtime as rt
from ._inputs import PackNode

CATEGORY = "video edit (fdd)/evaluation"
#: ComfyUI model folder of the evaluation models: <models>/fdd_metrics/{clip,pickscore,viclip}/<name>/
FOLDER = "fdd_metrics"
KINDS = ("clip", "pickscore", "viclip")
NONE = "none"


def _roots() -> list[str]:
    """The ``fdd_metrics`` model folders (registered with the pack's others, ``nodes/_runtime``)."""
    import folder_paths

    return folder_paths.get_folder_paths(FOLDER)


def model_options(kind: str) -> list[str]:
    names = []
    for root in _roots():
        d = os.path.join(root, kind)
        if os.path.isdir(d):
            names += [n for n in sorted(os.listdir(d)) if os.path.isdir(os.path.join(d, n)) and n not in names]
    return names


def _resolve(kind: str, name: str, input_name: str) -> str:
    for root in _roots():
        p = os.path.join(root, kind, name)
        if os.path.isdir(p):
            return p
    raise ValueError(f"{input_name}: no folder {name!r} under '{FOLDER}/{kind}/' in ComfyUI's model folders "
                     f"({', '.join(_roots())}); put the model folder there")


def _load(kind: str, name: str, input_name: str):
    if not name or name == NONE:
        return None
    path = _resolve(kind, name, input_name)
    loader = {"clip": load_clip, "pickscore": load_pickscore, "viclip": load_viclip}[kind]
    try:
        return rt.CACHE.get(f"metric_{kind}", path, lambda: loader(path))
    except ValueError as exc:  # ModelLoadError names the folder and the expected files
        raise ValueError(f"{input_name}: {exc}") from exc


class VideoEditMetrics(PackNode):
    @classmethod
    def define_schema(cls):
        clip = model_options("clip")
        return io.Schema(
            node_id="FDD_VideoEditMetrics",
            display_name="FDD Video Edit Metrics",
            category=CATEGORY,
            description="Measures a video edit the way the papers do: CLIP frame consistency and text alignment "
                        "(TGVE, ASSD, EI²), CLIP_dir, PickScore, ViCLIP_dir and ViCLIP_out (EVE §4.0.1), plus "
                        "model-free structure preservation (SSIM, edge agreement) and temporal flicker. Returns "
                        "the metrics as JSON text and a grid of input frames over output frames. Models come "
                        "from models/fdd_metrics/{clip,pickscore,viclip}/<folder>/.",
            is_output_node=True,
            inputs=[
                io.Image.Input("input_frames", tooltip="The original video as an IMAGE batch [frames, H, W, 3] "
                                                       "(e.g. LoadVideo -> GetVideoComponents)."),
                io.Image.Input("output_frames", tooltip="The edited video as an IMAGE batch (e.g. from an FDD edit "
                                                        "node). Paired frame by frame with the input; a different "
                                                        "count is matched at a uniform stride."),
                io.String.Input("output_caption", default="", multiline=True,
                                tooltip="Caption of the desired output video: text alignment, PickScore and "
                                        "ViCLIP_out compare the output with it. Required."),
                io.String.Input("input_caption", default="", multiline=True,
                                tooltip="Caption of the input video. Needed by the direction metrics CLIP_dir and "
                                        "ViCLIP_dir (change of video vs change of caption); empty skips them."),
                io.String.Input("instruction", default="", multiline=True,
                                tooltip="The edit instruction, recorded in the JSON for reference (no metric "
                                        "uses it)."),
                io.Combo.Input("clip_model", options=clip + [NONE], default=clip[0] if clip else NONE,
                               tooltip="CLIP folder under models/fdd_metrics/clip/ (transformers format: "
                                       "config.json, model.safetensors, preprocessor_config.json, vocab.json + "
                                       "merges.txt; e.g. openai/clip-vit-large-patch14). 'none' skips the CLIP "
                                       "metrics."),
                io.Combo.Input("pickscore_model", options=model_options("pickscore") + [NONE], default=NONE,
                               tooltip="PickScore folder under models/fdd_metrics/pickscore/ (PickScore_v1 "
                                       "weights with the CLIP-H processor files, same format as CLIP). 'none' "
                                       "skips PickScore."),
                io.Combo.Input("viclip_model", options=model_options("viclip") + [NONE], default=NONE,
                               tooltip="ViCLIP folder under models/fdd_metrics/viclip/ holding "
                                       "ViClip-InternVid-10M-FLT.pth and the CLIP BPE tokenizer (vocab.json + "
                                       "merges.txt or bpe_simple_vocab_16e6.txt.gz). 'none' skips ViCLIP_dir "
                                       "and ViCLIP_out."),
                io.Int.Input("grid_columns", default=8, min=1, max=64,
                             tooltip="Frames per row of the comparison grid (evenly spaced, first and last "
                                     "included)."),
                io.String.Input("filename_prefix", default="fdd/metrics",
                                tooltip="Where the metrics JSON is written in ComfyUI's output folder "
                                        "(prefix_00001_.json); empty: not written."),
            ],
            outputs=[io.String.Output(display_name="metrics_json"),
                     io.Image.Output(display_name="comparison_grid")],
        )

    @classmethod
    def execute(cls, input_frames, output_frames, output_caption, input_caption="", instruction="",
                clip_model=NONE, pickscore_model=NONE, viclip_model=NONE, grid_columns=8,
                filename_prefix="fdd/metrics") -> io.NodeOutput:
        import comfy.model_management as mm

        if not output_caption.strip():
            raise ValueError("output_caption: the metrics need a caption of the desired output video")
        models = MetricModels(clip=_load("clip", clip_model, "clip_model"),
                              pickscore=_load("pickscore", pickscore_model, "pickscore_model"),
                              viclip=_load("viclip", viclip_model, "viclip_model"))
        mods = [m.model for m in (models.clip, models.pickscore, models.viclip) if m is not None]
        mm.throw_exception_if_processing_interrupted()
        inp, out = input_frames[..., :3].float().cpu(), output_frames[..., :3].float().cpu()
        if mods:
            with rt.on_compute_device(mods):
                res = evaluate_edit(models, inp, out, output_caption, input_caption)
        else:
            res = evaluate_edit(models, inp, out, output_caption, input_caption)
        res["captions"] = {"input": input_caption, "instruction": instruction, "output": output_caption}
        res["models"] = {"clip": clip_model, "pickscore": pickscore_model, "viclip": viclip_model}
        res["frames"] = {"input": int(inp.shape[0]), "output": int(out.shape[0])}
        text = json.dumps(res, indent=1)
        if filename_prefix.strip():
            res_file = rt.save_output_json(text, filename_prefix.strip())
            text = json.dumps({**res, "file": res_file}, indent=1)
        grid = comparison_grid(inp, out, max_columns=grid_columns)
        return io.NodeOutput(text, grid, ui={"text": [text]})
