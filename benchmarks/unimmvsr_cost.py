"""UniMMVSR cost, measured side by side in one run (docs/design.md §4; UniMMVSR Table 2, Table 12).

1. Time per model evaluation with R reference latent frames appended vs none, against the FLOP prediction of
   the added tokens (linear layers grow with N, self-attention with N²): prints measured/predicted.
2. Peak memory of one tiled guided step for a 3840×2160, 9-frame target vs 1920×1080 (same 512-px tiles):
   each runs in its own process; the ratio must stay within 1.2 (memory bounded by the tile, not the frame).

    .venv/bin/python benchmarks/unimmvsr_cost.py
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from harness.paths import load_pack  # noqa: E402


def make_upscaler(pack, dim, layers, ffn, path):
    import torch
    from safetensors.torch import save_file

    from core.unimmvsr.checkpoint import init_from_t2v
    from harness.tiny_models import build_wan
    sd, meta = init_from_t2v({k: v.float()
                              for k, v in build_wan(dim=dim, num_layers=layers, ffn_dim=ffn).state_dict().items()})
    save_file(sd, path, metadata=meta)
    return pack("model_loaders.unimmvsr").load_unimmvsr(path, os.path.basename(path)), torch


def flops(n, d, ffn, ctx, layers):
    linear = 2 * n * (4 * d * d) + 2 * n * (2 * d * ffn) + 2 * n * (2 * d * d) + 2 * ctx * (2 * d * d)
    attention = 4 * n * n * d + 4 * n * ctx * d
    return layers * (linear + attention)


def cost(repeats: int = 5) -> None:
    pack = load_pack(sdpa=True)
    dim, layers, ffn, ctx = 512, 4, 2048, 512
    model, torch = make_upscaler(pack, dim, layers, ffn, "/tmp/unimmvsr_bench.safetensors")
    keys = pack("samplers.unimmvsr_model")
    from core.unimmvsr.reference_layout import layout
    t, h, w = 5, 32, 32
    tokens_per_frame = (h // 2) * (w // 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, t, h, w, generator=g)
    concat = torch.randn(1, 16, t, h, w, generator=g)
    context = torch.randn(1, ctx, 4096, generator=g)
    sigma = torch.tensor([0.7])
    print(f"model dim {dim}, {layers} layers; target {t} latent frames × {tokens_per_frame} tokens = "
          f"{t * tokens_per_frame} tokens; text {ctx} tokens")
    import comfy.model_management
    comfy.model_management.load_models_gpu([model])  # applies the object patches, as sampling does
    configs = {}
    for refs_frames in (0, 1, 3, 5):
        options = {keys.AUG_T_KEY: 600.0, "wrappers": model.wrappers}  # the wrappers sampling passes down
        if refs_frames:
            lay = layout(t, [1] * min(refs_frames, 3), [refs_frames - 3] if refs_frames > 3 else [])
            options[keys.REFERENCES_KEY] = keys.ReferenceTokens(torch.randn(1, 16, refs_frames, h, w, generator=g), lay)
        configs[refs_frames] = (options, [])
    with torch.no_grad():
        for i in range(repeats + 1):  # round-robin, so load on the machine hits every configuration alike
            for refs_frames, (options, times) in configs.items():
                start = time.perf_counter()
                model.model.apply_model(x, sigma, c_concat=concat, c_crossattn=context, transformer_options=options)
                if i:
                    times.append(time.perf_counter() - start)
    base = statistics.median(configs[0][1])
    for refs_frames, (_, times) in configs.items():
        seconds = statistics.median(times)
        n0, n1 = t * tokens_per_frame, (t + refs_frames) * tokens_per_frame
        predicted = flops(n1, dim, ffn, ctx, layers) / flops(n0, dim, ffn, ctx, layers)
        print(f"  R = {refs_frames} reference latent frames: {seconds * 1000:7.1f} ms/evaluation, "
              f"×{seconds / base:.2f} measured vs ×{predicted:.2f} predicted (ratio {seconds / base / predicted:.2f})")


def memory_child(width: int, height: int) -> None:
    import resource
    pack = load_pack(sdpa=True)
    model, torch = make_upscaler(pack, 128, 2, 256, f"/tmp/unimmvsr_mem_{width}.safetensors")
    import comfy.samplers
    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    from core.unimmvsr.references import Reference
    g = torch.Generator().manual_seed(0)
    shape = (1, 16, 3, height // 8, width // 8)   # 9 frames → 3 latent frames
    lr = LRCondition(torch.randn(shape, generator=g), 600.0)
    refs = [Reference("id_image", torch.randn(1, 16, 1, 64, 64, generator=g))]
    cond = [[torch.randn(1, 64, 4096, generator=g), {}]]
    guider = pack("nodes.unimmvsr_guider").UniMMVSRGuiderNode.execute(
        model, cond, cond, lr, 3.0, 1.0, 0.3, 512, 512, 64, 0, 4, refs).result[0]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    noise = torch.randn(shape, generator=g)
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), torch.tensor([1.0, 0.0]),
                  seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": peak / 1024, "before_mb": before / 1024}))


def memory() -> None:
    results = {}
    for width, height in ((1920, 1088), (3840, 2160)):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(width), str(height)], capture_output=True,
                             text=True, timeout=3600)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        results[(width, height)] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[(width, height)]
        print(f"  {width}×{height}, 9 frames, 512-px tiles: peak RSS {r['peak_mb']:.0f} MB")
    ratio = results[(3840, 2160)]["peak_mb"] / results[(1920, 1088)]["peak_mb"]
    print(f"  peak memory 4K / 1080p = {ratio:.2f} (target ≤ 1.2: bounded by the tile)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        print("1. cost of reference tokens")
        cost()
        print("2. memory of the tiled path")
        memory()
