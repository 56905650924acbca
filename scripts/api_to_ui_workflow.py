"""Turn an API-format workflow into the UI (LiteGraph) format the ComfyUI editor and template
browser load, using a running server's /object_info for socket types and widget order.

    .venv/bin/python scripts/api_to_ui_workflow.py workflows/api/X.json workflows/X.json --port P

Widget values are written in the schema's input order (linked widget inputs keep a slot, as
the frontend does), with the "fixed" marker after inputs that have control_after_generate.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request
import uuid


def widget_types():
    return {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec) -> bool:
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(t, list) or t in widget_types()


def convert(api: dict, object_info: dict) -> dict:
    ids = sorted(api, key=int)
    depth: dict[str, int] = {}

    def d(nid):
        if nid not in depth:
            ins = [v for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[nid] = 1 + max((d(str(v[0])) for v in ins), default=-1)
        return depth[nid]

    for nid in ids:
        d(nid)
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    rows: dict[int, int] = {}
    for nid in sorted(ids, key=lambda n: (depth[n], int(n))):
        node = api[nid]
        schema = object_info[node["class_type"]]
        order = schema.get("input_order", {})
        names = list(order.get("required", [])) + list(order.get("optional", []))
        specs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        inputs, widgets = [], []
        for name in names:
            spec = specs[name]
            val = node["inputs"].get(name)
            linked = isinstance(val, list) and len(val) == 2 and isinstance(val[0], str)
            entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO"}
            if is_widget(spec):
                entry["widget"] = {"name": name}
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                default = opts.get("default", spec[0][0] if isinstance(spec[0], list) and spec[0] else None)
                widgets.append(default if linked or val is None else val)
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            if linked:
                lid = len(links) + 1
                src, slot = val
                src_type = object_info[api[src]["class_type"]]["output"][slot]
                links.append([lid, int(src), slot, int(nid), len(inputs), src_type])
                out_links.setdefault((src, slot), []).append(lid)
                entry["link"] = lid
                inputs.append(entry)
            elif not is_widget(spec):
                entry["link"] = None
                inputs.append(entry)
            else:
                entry["link"] = None
                inputs.append(entry)
        col = depth[nid]
        row = rows.get(col, 0)
        rows[col] = row + 1
        nodes.append({
            "id": int(nid), "type": node["class_type"], "pos": [40 + 380 * col, 40 + 300 * row],
            "size": [340, 120 + 26 * len(widgets)], "flags": {}, "order": len(nodes), "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    by_id = {n["id"]: n for n in nodes}
    for nid in ids:
        schema = object_info[api[nid]["class_type"]]
        outs = []
        for slot, (typ, name) in enumerate(zip(schema["output"], schema["output_name"])):
            outs.append({"name": name, "type": typ, "links": out_links.get((nid, slot), []),
                         "slot_index": slot})
        by_id[int(nid)]["outputs"] = outs
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(api, sort_keys=True))), "revision": 0,
            "last_node_id": max(int(i) for i in ids), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("api")
    ap.add_argument("out")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/object_info", timeout=60) as r:
        info = json.loads(r.read())
    with open(a.api) as fh:
        api = json.load(fh)
    ui = convert(api, info)
    tmp = a.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(ui, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
