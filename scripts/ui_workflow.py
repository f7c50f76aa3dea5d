"""Convert between ComfyUI's UI workflow format (what users save and share) and the API prompt format.

Widget values are matched to inputs the way the frontend does: in the node definition's input order (required,
then optional), one value per widget input, plus one extra value after every INT input declared with
``control_after_generate`` — or named ``seed`` / ``noise_seed`` without that option set (the frontend adds the
"fixed/randomize" control to those by name). Node definitions come from ``/object_info``.
Used by the demo and tests; the browser tests check the frontend's own conversion on the same files.
"""
from __future__ import annotations

import json
import uuid

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _input_specs(definition: dict):
    for section in ("required", "optional"):
        for name, spec in definition["input"].get(section, {}).items():
            yield name, spec


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def widget_names(definition: dict) -> list[tuple[str, bool]]:
    """(input name, has a control_after_generate value after it) for every widget input, in order."""
    def has_control(name, spec):
        flag = _options(spec).get("control_after_generate")
        if flag is not None:
            return bool(flag)
        return spec[0] == "INT" and name in ("seed", "noise_seed")
    return [(name, has_control(name, spec)) for name, spec in _input_specs(definition)
            if _is_widget(spec) and not _options(spec).get("forceInput")]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) == 2:  # muted
            continue
        if node.get("mode", 0) == 4:
            raise ValueError(f"node {node['id']} ({node['type']}) is bypassed; bypass is not converted here")
        definition = object_info.get(node["type"])
        if definition is None:
            raise ValueError(f"node {node['id']}: type {node['type']!r} is not installed")
        inputs = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            raise ValueError(f"node {node['id']}: dict widgets_values are not supported")
        cursor = 0
        for name, has_control in widget_names(definition):
            if cursor < len(values):
                inputs[name] = values[cursor]
            cursor += 2 if has_control else 1
        for slot in node.get("inputs", []):
            link_id = slot.get("link")
            if link_id is None:
                continue
            link = links[link_id]
            inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def api_to_ui(prompt: dict, object_info: dict, positions: dict[str, tuple[float, float]] | None = None,
              titles: dict[str, str] | None = None) -> dict:
    """A UI workflow for an API prompt (numeric node ids), laid out at ``positions`` (or in a row)."""
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                links.append([len(links) + 1, int(value[0]), value[1], int(node_id), name, None])
                outputs.setdefault((value[0], value[1]), []).append(len(links))
    order = {nid: i for i, nid in enumerate(prompt)}
    for node_id, node in prompt.items():
        definition = object_info[node["class_type"]]
        widget_values = []
        for name, has_control in widget_names(definition):
            value = node["inputs"].get(name)
            if isinstance(value, list):
                value = _options(dict(_input_specs(definition))[name]).get("default")
            widget_values.append(value)
            if has_control:
                widget_values.append("fixed")
        ui_inputs = []
        for name, spec in _input_specs(definition):
            value = node["inputs"].get(name)
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            if _is_widget(spec) and not linked:
                continue
            if not linked and not _is_widget(spec) and name not in node["inputs"]:
                entry = {"name": name, "type": spec[0] if not isinstance(spec[0], list) else "COMBO", "link": None}
            elif linked:
                link_id = next(link[0] for link in links if link[3] == int(node_id) and link[4] == name)
                entry = {"name": name, "type": spec[0] if not isinstance(spec[0], list) else "COMBO", "link": link_id}
                if _is_widget(spec):
                    entry["widget"] = {"name": name}
            else:
                continue
            ui_inputs.append(entry)
        ui_outputs = []
        for slot, (kind, out_name) in enumerate(zip(definition["output"], definition["output_name"])):
            ui_outputs.append({"name": out_name, "type": kind, "links": outputs.get((node_id, slot), []),
                               "slot_index": slot})
        pos = (positions or {}).get(node_id, (40 + 330 * order[node_id], 80))
        entry = {"id": int(node_id), "type": node["class_type"], "pos": list(pos), "size": [300, 120],
                 "flags": {}, "order": order[node_id], "mode": 0, "inputs": ui_inputs, "outputs": ui_outputs,
                 "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widget_values}
        if titles and node_id in titles:
            entry["title"] = titles[node_id]
        nodes.append(entry)
    # link tuples carry the target *slot index* and the type
    for link in links:
        target = next(n for n in nodes if n["id"] == link[3])
        slot = next(i for i, s in enumerate(target["inputs"]) if s["name"] == link[4])
        link[4] = slot
        link[5] = target["inputs"][slot]["type"]
    return {"id": str(uuid.uuid4()), "revision": 0, "last_node_id": max(int(k) for k in prompt),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
