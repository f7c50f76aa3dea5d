"""The main demo: run the shared TMA A/B workflow (workflows/tma_wan21_t2v_ab.json) on a real ComfyUI server.

No weights can be downloaded here, so tiny randomly initialised models of the real architectures stand in for
Wan 2.1 T2V, its VAE and umt5-xxl (built by tests/harness/tiny_models.py under the real file names). The
workflow file is used as shared: converted to an API prompt, its CLIPLoader swapped for the tiny-UMT5 loader
and its size/steps reduced for a CPU. Outputs (the A, B and side-by-side animated WEBPs) and summary.md land in
the output folder. With random weights the videos are noise: the demo shows the graph running and measures
what TMA changed, step by step.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

from harness.comfy_server import ComfyServer, prepare_base_directory  # noqa: E402
from harness.paths import use_comfy_in_process  # noqa: E402
from harness.tiny_models import FIXTURE_NODES, write_fixture_models  # noqa: E402
from ui_workflow import load, ui_to_api  # noqa: E402

WORKFLOW = os.path.join(REPO, "workflows", "tma_wan21_t2v_ab.json")
TINY_TEXT_ENCODER_LOADER = "UniCascadeTestTinyTextEncoderLoader"


def shrink_for_cpu(prompt: dict, width: int, height: int, length: int, steps: int) -> None:
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyHunyuanLatentVideo":
            inputs.update(width=width, height=height, length=length)
        if node["class_type"] == "KSampler":
            inputs["steps"] = steps
        if node["class_type"] == "CLIPLoader":
            node["class_type"] = TINY_TEXT_ENCODER_LOADER
            inputs.pop("device", None)


def webp_frames(path: str):
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) for f in ImageSequence.Iterator(im)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "demo_output"))
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--length", type=int, default=17)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    out = os.path.abspath(args.out)
    base = os.path.join(out, "comfy_base")
    shutil.rmtree(base, ignore_errors=True)
    prepare_base_directory(base, [os.path.join(FIXTURE_NODES, "unicascade_test_fixtures")])
    use_comfy_in_process()
    write_fixture_models(os.path.join(base, "models"))
    trace = os.path.join(base, "tma_trace.jsonl")

    server = ComfyServer(base, env={"UNICASCADE_TRACE_FILE": trace}).start()
    try:
        prompt = ui_to_api(load(WORKFLOW), server.object_info())
        shrink_for_cpu(prompt, args.width, args.height, args.length, args.steps)
        started = time.time()
        server.run(prompt)
        seconds = time.time() - started
    finally:
        server.stop()

    results = {}
    for name in ("unpatched", "tma", "side_by_side"):
        files = sorted(glob.glob(os.path.join(base, "output", "UniCascade", f"tma_ab_{name}_*.webp")))
        if not files:
            print(f"demo: no {name} output was written", file=sys.stderr)
            return 1
        results[name] = os.path.join(out, f"tma_ab_{name}.webp")
        shutil.copy(files[-1], results[name])
    a, b = webp_frames(results["unpatched"]), webp_frames(results["tma"])
    per_frame = [float(abs(a[i] - b[i]).mean()) for i in range(len(a))]
    with open(trace, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = {}
    for r in records:
        steps.setdefault(round(r["sigma"], 6), r)

    lines = ["# UniCascade demo: TMA A/B on Wan 2.1 T2V (tiny random models)", "",
             f"workflow: `workflows/tma_wan21_t2v_ab.json` at {args.width}×{args.height}, {args.length} frames, "
             f"{args.steps} steps (uni_pc), seed 42", f"wall time of the prompt (both samplers + decode): {seconds:.1f} s",
             "", "| step | σ | u (global) | α_txt | α_img (no effect: T2V has no image cross-attention) |", "|---|---|---|---|---|"]
    for i, (sigma, r) in enumerate(sorted(steps.items(), reverse=True)):
        lines.append(f"| {i} | {sigma:.4f} | {r['u']:.3f} | {r['alpha_txt']:.4f} | {r['alpha_img']:.4f} |")
    lines += ["", f"mean |A − B| per frame (8-bit RGB): min {min(per_frame):.2f}, max {max(per_frame):.2f}, "
              f"mean {sum(per_frame) / len(per_frame):.2f}", "",
              "outputs: " + ", ".join(os.path.relpath(p, out) for p in results.values())]
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary)
    print(summary)
    print(f"demo outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
