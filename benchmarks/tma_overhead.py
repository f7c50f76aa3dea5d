"""TMA overhead: wall time of identical sampling with the TMA-patched model vs the unpatched one, side by side.

A Wan 2.1-architecture model big enough to matter on a CPU (dim 512, 4 layers, 4 heads; random weights, loaded
through ComfyUI's own loader), 33 frames at 256×256 (2,304 video tokens), 512 text tokens, CFG (two branches),
euler. Runs alternate unpatched/patched after a warm-up and the ratio of medians is printed. Target ≤ 1.03.

    .venv/bin/python benchmarks/tma_overhead.py [--repeats 3] [--steps 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from harness.paths import load_pack, use_comfy_in_process  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    use_comfy_in_process()
    import torch
    import comfy.sample
    import comfy.sd
    from harness.tiny_models import build_wan

    tma_node = load_pack()("nodes.tma_boost").TemperatureModalityAlignment
    sd = build_wan(dim=512, num_layers=4, ffn_dim=2048, seed=0).state_dict()
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})
    patched = tma_node.execute(model, 0.3, 0.3, "cosine", 0.4, 0.6, "global (from sigma)").result[0]
    # .venv/bin/python benchmarks/tma_overhead.py --repeats 5  (docs/experiments.md)

    torch.manual_seed(0)
    t = (args.frames - 1) // 4 + 1
    latent = torch.zeros(1, 16, t, args.size // 8, args.size // 8)
    noise = torch.randn_like(latent)
    positive = [[torch.randn(1, 512, 4096), {}]]
    negative = [[torch.randn(1, 512, 4096), {}]]

    def run(m):
        start = time.perf_counter()
        out = comfy.sample.sample(m, noise, args.steps, 5.0, "euler", "simple", positive, negative, latent,
                                  disable_pbar=True, seed=0)
        return time.perf_counter() - start, out

    tokens = t * (args.size // 16) ** 2
    print(f"Wan dim 512 × 4 layers, {args.frames} frames {args.size}×{args.size} ({tokens} tokens), "
          f"{args.steps} euler steps with CFG, torch threads {torch.get_num_threads()}")
    run(model)  # warm-up (allocations, first load)
    run(patched)
    plain_times, patched_times = [], []
    for i in range(args.repeats):
        tp, out_plain = run(model)
        tt, out_tma = run(patched)
        plain_times.append(tp)
        patched_times.append(tt)
        print(f"  repeat {i}: unpatched {tp:.2f} s, TMA {tt:.2f} s")
    ratio = statistics.median(patched_times) / statistics.median(plain_times)
    change = (out_plain - out_tma).abs().max().item()
    print(f"median unpatched {statistics.median(plain_times):.2f} s, "
          f"median TMA {statistics.median(patched_times):.2f} s"
          f" (per-repeat ratios {min(b / a for a, b in zip(plain_times, patched_times)):.3f}–"
          f"{max(b / a for a, b in zip(plain_times, patched_times)):.3f})")
    print(f"ratio patched/unpatched = {ratio:.3f} (target ≤ 1.03); max |Δ output| = {change:.3g} (TMA is active)")


if __name__ == "__main__":
    main()
