"""API-format workflow -> the UI (LiteGraph) format the ComfyUI frontend loads, following the
frontend's own rules, so the two formats of a shipped workflow cannot drift apart.

One source per workflow: its API twin (``workflows/api/NAME.json``), the node schemas from a
server's ``/object_info``, and its entry in ``workflows/catalog.toml`` (where it is published, the
note shown on the canvas, the model files it needs). :func:`convert` builds the UI file.

Frontend rules encoded here (ComfyUI frontend 1.32.9 and 1.58.1, read from their bundles and
checked by ``tests/test_frontend.py`` in the real page):

- ``widgets_values`` lists one value per widget input, required then optional, in the schema's
  ``input_order``; a widget input fed by a link keeps its slot (its value is the default).
- An INT input declared ``control_after_generate`` (and, for old schemas, any INT named ``seed``
  or ``noise_seed``), or a COMBO declared so, is followed by a "control after generate" widget:
  one extra value (here always ``"fixed"``, so a queued workflow does not change its own seed).
- A COMBO with ``image_upload`` / ``video_upload`` / ``animated_image_upload`` gets an upload
  button whose value (``"image"``) is serialised after the file name.
- ``forceInput`` inputs and non-widget types are sockets only.

Layout: four groups left to right in the order data flows (input, models, method, output), the
nodes of a group in columns by their depth in the graph, stacked without overlap, and a note
node above them saying what the workflow does, what it needs and where the files go.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
LEGACY_SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUE = "fixed"

#: group of each node type (anything else is "method")
GROUPS = ("input", "models", "method", "output")
GROUP_TITLES = {"input": "Input", "models": "Models", "method": "Method", "output": "Output"}
GROUP_COLORS = {"input": "#3f789e", "models": "#8A8", "method": "#a1309b", "output": "#b58b2a"}
_INPUT_TYPES = {"LoadVideo", "GetVideoComponents", "LoadImage", "FDD_ToyClip", "FDD_Dataset"}
_OUTPUT_TYPES = {"SaveVideo", "SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "CreateVideo",
                 "PreviewAny", "PreviewImage", "ImageScaleBy", "FDD_EI2SaveTuned", "VAEDecode"}

# sizes (px) close to LiteGraph's own: title bar, one slot row, one widget row
TITLE_H, SLOT_H, WIDGET_H, MULTILINE_H = 30, 22, 26, 90
NODE_W, WIDE_W, GAP_X, GAP_Y, GROUP_PAD, GROUP_TITLE_H = 400, 440, 60, 40, 20, 40
#: nodes the frontend draws larger than their widgets (a media preview)
MIN_SIZES = {"LoadVideo": (440, 450), "LoadImage": (440, 450)}
NOTE_W, NOTE_H = 760, 200


def group_of(class_type: str) -> str:
    if class_type in _INPUT_TYPES:
        return "input"
    if class_type in _OUTPUT_TYPES:
        return "output"
    if class_type.startswith(("FDD_Load", "CheckpointLoader", "ControlNetLoader", "LoraLoader")) \
            or class_type in ("FDD_LoraLoader", "FDD_EI2Inflate"):
        return "models"
    return "method"


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _type(spec) -> str:
    return spec[0] if isinstance(spec[0], str) else "COMBO"


def is_widget(spec) -> bool:
    return not _opts(spec).get("forceInput") and (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES)


def _combo_options(spec) -> list:
    if isinstance(spec[0], list):
        return spec[0]
    return list(_opts(spec).get("options", []))


def has_control_widget(name: str, spec) -> bool:
    """Whether the frontend adds a "control after generate" widget after this input."""
    t, opts = _type(spec), _opts(spec)
    if t == "INT":
        return bool(opts.get("control_after_generate", name in LEGACY_SEED_NAMES))
    return t == "COMBO" and bool(opts.get("control_after_generate"))


def has_upload_widget(spec) -> bool:
    return _type(spec) == "COMBO" and any(_opts(spec).get(f) for f in UPLOAD_FLAGS)


def _default(spec):
    opts = _opts(spec)
    if "default" in opts:
        return opts["default"]
    if _type(spec) == "COMBO":
        options = _combo_options(spec)
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(_type(spec))


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)


def node_inputs(node: Mapping[str, Any], schema: Mapping[str, Any]):
    """The input names of a node in the frontend's order and their specs."""
    order = schema.get("input_order", {})
    names = list(order.get("required", [])) + list(order.get("optional", []))
    specs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
    unknown = [k for k in node["inputs"] if k not in specs]
    if unknown:
        raise ValueError(f"{node['class_type']}: inputs {unknown} are not in its schema "
                         f"(known: {sorted(specs)})")
    return names, specs


def widgets_values(node: Mapping[str, Any], schema: Mapping[str, Any]) -> list:
    """The ``widgets_values`` the frontend builds for ``node`` (an API-format node)."""
    names, specs = node_inputs(node, schema)
    values = []
    for name in names:
        spec = specs[name]
        if not is_widget(spec):
            continue
        val = node["inputs"].get(name)
        values.append(_default(spec) if val is None or _is_link(val) else val)
        if has_control_widget(name, spec):
            values.append(CONTROL_VALUE)
        if has_upload_widget(spec):
            values.append("image")
    return values


def estimate_size(node: Mapping[str, Any], schema: Mapping[str, Any]) -> list[int]:
    """A node box at least as large as the frontend draws it (checked in the real page)."""
    names, specs = node_inputs(node, schema)
    sockets = sum(1 for n in names if not is_widget(specs[n]))
    outs = len(schema.get("output", []))
    h = TITLE_H + SLOT_H * max(sockets, outs) + 10
    wide = False
    for n in names:
        spec = specs[n]
        if not is_widget(spec):
            continue
        if _type(spec) == "STRING" and _opts(spec).get("multiline"):
            h += MULTILINE_H
            wide = True
        else:
            h += WIDGET_H
        h += WIDGET_H * (has_control_widget(n, spec) + has_upload_widget(spec))
    if node["class_type"] in ("PreviewAny",):
        h += MULTILINE_H
    w = WIDE_W if wide else NODE_W
    mw, mh = MIN_SIZES.get(node["class_type"], (0, 0))
    return [max(w, mw), int(max(h, mh))]


def _depths(api: Mapping[str, Any]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def d(nid: str, seen=()) -> int:
        if nid in seen:
            raise ValueError(f"the workflow has a cycle through node {nid}")
        if nid not in depth:
            ins = [v for v in api[nid]["inputs"].values() if _is_link(v)]
            depth[nid] = 1 + max((d(v[0], seen + (nid,)) for v in ins), default=-1)
        return depth[nid]

    for nid in api:
        d(nid)
    return depth


def layout(api: Mapping[str, Any], object_info: Mapping[str, Any]):
    """Positions and sizes of every node, the group boxes, and the note's box."""
    depth = _depths(api)
    sizes = {nid: estimate_size(n, object_info[n["class_type"]]) for nid, n in api.items()}
    by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    for nid, n in api.items():
        by_group[group_of(n["class_type"])].append(nid)
    top = 40 + NOTE_H + GAP_Y + GROUP_TITLE_H
    x = 40 + GROUP_PAD
    pos, groups = {}, []
    for g in GROUPS:
        ids = by_group[g]
        if not ids:
            continue
        cols: dict[int, list[str]] = {}
        d0 = min(depth[i] for i in ids)
        for i in sorted(ids, key=lambda i: (depth[i], int(i))):
            cols.setdefault(depth[i] - d0, []).append(i)
        gx0, bottom = x, top
        for c in sorted(cols):
            y = top
            width = max(sizes[i][0] for i in cols[c])
            for i in cols[c]:
                pos[i] = [x, y]
                y += sizes[i][1] + GAP_Y
            bottom = max(bottom, y - GAP_Y)
            x += width + GAP_X
        gx1 = x - GAP_X
        groups.append({"title": GROUP_TITLES[g], "color": GROUP_COLORS[g],
                       "bounding": [gx0 - GROUP_PAD, top - GROUP_TITLE_H - GROUP_PAD,
                                    gx1 - gx0 + 2 * GROUP_PAD, bottom - top + GROUP_TITLE_H + 2 * GROUP_PAD],
                       "font_size": 24, "flags": {}})
        x += 2 * GROUP_PAD + GAP_X
    return pos, sizes, groups


def _models_property(models: list[dict], class_type: str, inputs: Mapping[str, Any]) -> list[dict]:
    """The ``properties.models`` entries core templates carry, for the files this loader reads."""
    names = {v for v in inputs.values() if isinstance(v, str)}
    out = []
    for m in models:
        if m["name"] in names:
            entry = {"name": m["name"], "directory": m["directory"]}
            if m.get("url"):
                entry["url"] = m["url"]
            out.append(entry)
    return out


def convert(api: Mapping[str, Any], object_info: Mapping[str, Any], entry: Mapping[str, Any] | None = None) -> dict:
    """The UI-format workflow for an API-format one. ``entry``: its catalog entry (note, models)."""
    entry = dict(entry or {})
    missing = sorted({n["class_type"] for n in api.values() if n["class_type"] not in object_info})
    if missing:
        raise ValueError(f"node types not in /object_info: {missing}")
    pos, sizes, groups = layout(api, object_info)
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    ids = sorted(api, key=int)
    for order, nid in enumerate(sorted(ids, key=lambda n: (pos[n][0], pos[n][1]))):
        node = api[nid]
        schema = object_info[node["class_type"]]
        names, specs = node_inputs(node, schema)
        inputs = []
        for name in names:
            spec = specs[name]
            val = node["inputs"].get(name)
            if not is_widget(spec) or _is_link(val):
                item = {"name": name, "type": _type(spec), "link": None}
                if is_widget(spec):
                    item["widget"] = {"name": name}
                if _is_link(val):
                    src, slot = val
                    if src not in api:
                        raise ValueError(f"node {nid} input {name!r} links to missing node {src}")
                    lid = len(links) + 1
                    src_type = object_info[api[src]["class_type"]]["output"][slot]
                    links.append([lid, int(src), slot, int(nid), len(inputs), src_type])
                    out_links.setdefault((src, slot), []).append(lid)
                    item["link"] = lid
                inputs.append(item)
        props: dict[str, Any] = {"Node name for S&R": node["class_type"]}
        models = _models_property(entry.get("models", []), node["class_type"], node["inputs"])
        if models:
            props["models"] = models
        nodes.append({
            "id": int(nid), "type": node["class_type"], "pos": pos[nid], "size": sizes[nid],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [],
            "properties": props, "widgets_values": widgets_values(node, schema),
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    by_id = {n["id"]: n for n in nodes}
    for nid in ids:
        schema = object_info[api[nid]["class_type"]]
        by_id[int(nid)]["outputs"] = [
            {"name": name, "type": typ, "links": out_links.get((nid, slot), []), "slot_index": slot}
            for slot, (typ, name) in enumerate(zip(schema["output"], schema["output_name"]))]
    last_id = max(int(i) for i in ids)
    if entry.get("note"):
        last_id += 1
        nodes.append({"id": last_id, "type": "Note", "title": entry.get("title", "About this workflow"),
                      "pos": [40, 40], "size": [NOTE_W, NOTE_H], "flags": {}, "order": len(nodes),
                      "mode": 0, "inputs": [], "outputs": [], "properties": {},
                      "widgets_values": [entry["note"]], "color": "#432", "bgcolor": "#653"})
    ident = str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(api, sort_keys=True)))
    extra = {"ds": {"scale": 0.8, "offset": [0, 0]}}
    return {"id": ident, "revision": 0, "last_node_id": last_id, "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": groups, "config": {}, "extra": extra,
            "version": 0.4}


def boxes_overlap(a, b) -> bool:
    """Whether two ``[x, y, w, h]`` boxes share any area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def schema_inputs(api_node: Mapping[str, Any], prompt_node: Mapping[str, Any],
                  schema: Mapping[str, Any]) -> tuple[dict, dict]:
    """The inputs of two API-format nodes restricted to those the schema declares (the frontend
    also sends display-only widgets, e.g. PreviewAny's ``preview``, which the server ignores)."""
    specs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
    keep = lambda d: {k: v for k, v in d.items() if k in specs}  # noqa: E731
    return keep(api_node["inputs"]), keep(prompt_node["inputs"])
