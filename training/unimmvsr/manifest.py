"""The training manifest: a JSONL file, one clip per line (UniMMVSR §3.3, A.2; issue "Data and degradation").

    {"video": "clips/a.mp4", "prompt": "a dog runs on a beach",
     "id_images": ["ids/a_0.png"], "id_boxes": [[40, 10, 200, 230]],
     "reference_video": "refs/a_src.mp4", "tasks": ["t2v", "mi2v", "editing"]}

``id_boxes`` (optional) gives each ID image's subject box in pixels (else a random box, ``[data] id_crop``); a
``reference_video`` shows the same scene as the clip (an edit's source), frame for frame.

Paths are relative to the manifest's folder. ``tasks`` (optional) limits what a clip is used for; by default a
clip serves T2V, MI2V (with its ``id_images``, or — as the paper extracts them — frames of the same clip outside
the target window when it has none) and editing (with its ``reference_video``, or another segment of the same clip).
Lines are checked when the manifest is read: a line that is not JSON, lacks "video"/"prompt" or names an unknown
task is an error naming the line; missing files are reported per item when the item is drawn (skipped, counted).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .config import TASKS


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Item:
    line: int
    video: str
    prompt: str
    id_images: tuple[str, ...] = ()
    reference_video: str = ""
    tasks: tuple[str, ...] = TASKS
    id_boxes: tuple = ()                 # per ID image: [x0, y0, x1, y1] of the subject in pixels (optional)

    @property
    def label(self) -> str:
        return f"manifest line {self.line} ({os.path.basename(self.video)})"


def read(path: str) -> list[Item]:
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: no such manifest")
    root = os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path} line {n}: not JSON ({e})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("video"), str) or \
                    not isinstance(entry.get("prompt"), str):
                raise ManifestError(f"{path} line {n}: needs \"video\" and \"prompt\" strings")
            tasks = tuple(entry.get("tasks", TASKS))
            unknown = sorted(set(tasks) - set(TASKS))
            if unknown:
                raise ManifestError(f"{path} line {n}: unknown task(s) {', '.join(unknown)}")
            ids = entry.get("id_images", [])
            if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
                raise ManifestError(f"{path} line {n}: \"id_images\" must be a list of paths")
            boxes = entry.get("id_boxes", [])
            if boxes and (not isinstance(boxes, list) or len(boxes) != len(ids) or not all(
                    isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
                    for b in boxes)):
                raise ManifestError(f"{path} line {n}: \"id_boxes\" must hold one [x0, y0, x1, y1] per ID image")
            ref = entry.get("reference_video", "")
            items.append(Item(n, os.path.join(root, entry["video"]), entry["prompt"],
                              tuple(os.path.join(root, p) for p in ids),
                              os.path.join(root, ref) if ref else "", tasks, tuple(tuple(b) for b in boxes)))
    if not items:
        raise ManifestError(f"{path}: no clips")
    return items


def items_for(items: list[Item], task: str) -> list[Item]:
    return [i for i in items if task in i.tasks]
