"""MfM sampling speed against a core Wan model of equal FLOPs, side by side in one run (issue "MfM in ComfyUI",
Benchmark).

Both models sample the same latent (LATENT: 16 channels × 5 × 32 × 48 → 5 × 16 × 24 = 1,920 tokens)
through ComfyUI's own sampler with CFG (two evaluations per step): MfM from a pipeline folder through the
pack's loader (dim 256 = 4 heads × 64, 4 blocks, FFN 4×, the light adapter on the all-zero t2v condition), Wan 2.1
from ComfyUI's classes (dim 256, 4 blocks, FFN 1024) — the same matmul FLOPs per token in the blocks. Printed:
seconds per step of each, their ratio (target ≤ 1.1), the FLOPs of one MfM step from the model's shapes, and the
achieved FLOP/s against this machine's measured fp32 matmul peak.

    .venv/bin/python benchmarks/mfm_step.py
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))
LATENT = (1, 16, 5, 32, 48)      # 17 frames of 256×384 pixels
TEXT = 77
STEPS, REPEATS = 4, 7
ATTENTION = {"pytorch": "scaled_dot_product_attention: ComfyUI's default on NVIDIA GPUs",
             "sub_quad": "sub-quadratic attention: ComfyUI's default on a CPU, logits materialised per head in chunks"}
DIM, LAYERS = 256, 4


def matmul_peak() -> float:
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024 ** 3 / best


def step_seconds(models: dict, context) -> dict:
    """Seconds per step of each model: after a warm-up each, the models sample in turn, round after round (so
    the drifts of a shared machine hit both alike); the median round of each."""
    import comfy.sample
    import torch

    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(0))
    positive = [[context, {}]]
    negative = [[torch.zeros_like(context), {}]]

    def sample(model, steps):
        comfy.sample.sample(model, noise, steps, 5.0, "euler", "simple", positive, negative, torch.zeros(LATENT),
                            seed=0, disable_pbar=True)

    for model in models.values():
        sample(model, 1)                                         # warm-up (loading, first-call costs)
    times = {name: [] for name in models}
    for _ in range(REPEATS):
        for name, model in models.items():
            t0 = time.perf_counter()
            sample(model, STEPS)
            times[name].append((time.perf_counter() - t0) / STEPS)
    return {name: statistics.median(t) for name, t in times.items()}


def mfm_step_flops(tokens: int, text: int, dim: int, layers: int) -> float:
    """Matmul FLOPs of one CFG step (2 evaluations) of the blocks. The light adapter runs once per condition (the
    model caches its σ-independent output), so a step does not pay for it; ``adapter_flops`` is that one-off cost."""
    block = (2 * tokens * dim * dim * 4 + 4 * tokens * tokens * dim          # self-attention
             + 2 * tokens * dim * dim * 2 + 2 * text * 4096 * dim * 2 + 4 * tokens * text * dim   # cross-attention
             + 2 * tokens * dim * 4 * dim * 2 + 2 * tokens * dim * 6 * dim)  # FFN, AdaLN
    return 2 * layers * block


def adapter_flops(frames: int, height: int, width: int, dim: int) -> float:
    px = frames * height * width
    return 2 * 9 * (px * 5 * 16 + px * 16 * 16 + px / 8 * 16 * 32 * 3 + px / 8 * 32 * 32
                       + px / 32 * 32 * 96 + px / 32 * 96 * 96 + px / 256 * 96 * 256 * 3 + px / 256 * 256 * 256
                       + px / 1024 * 256 * 512 + px / 1024 * 512 * dim)


def main() -> int:
    if len(sys.argv) == 1:   # both of ComfyUI's attention paths, each in its own process (chosen at import)
        import subprocess

        for backend in ATTENTION:
            print(f"== attention: {backend} ({ATTENTION[backend]})", flush=True)
            subprocess.run([sys.executable, __file__, backend], check=True)
        return 0
    backend = sys.argv[1]
    from harness.paths import COMFY_DIR

    sys.path.insert(0, COMFY_DIR)
    base = tempfile.mkdtemp(prefix="mfm_step_")
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.use_pytorch_cross_attention = backend == "pytorch"   # else ComfyUI's CPU choice
    comfy.cli_args.args.base_directory = base
    import folder_paths
    import torch
    from safetensors.torch import save_file

    from harness.tiny_mfm import CONFIG, write_pipeline
    from harness.tiny_models import build_wan
    from pack_import import import_pack, pack_submodule

    import_pack("unicascade")
    config = {**CONFIG, "num_attention_heads": DIM // 64, "attention_head_dim": 64, "num_layers": LAYERS}
    write_pipeline(os.path.join(base, "models", "mfm", "bench"), config)
    folder_paths.add_model_folder_path("mfm", os.path.join(base, "models", "mfm"))
    mfm = pack_submodule("unicascade", "model_loaders.mfm_pipeline").load_pipeline_model("bench")
    wan_path = os.path.join(base, "wan.safetensors")
    save_file({k: v.contiguous()
               for k, v in build_wan(dim=DIM, num_layers=LAYERS, ffn_dim=4 * DIM).state_dict().items()},
              wan_path)
    import comfy.sd

    wan = comfy.sd.load_diffusion_model(wan_path)
    context = torch.randn(1, TEXT, 4096, generator=torch.Generator().manual_seed(1))
    peak = matmul_peak()
    seconds = step_seconds({"mfm": mfm, "wan": wan}, context)
    s_mfm, s_wan = seconds["mfm"], seconds["wan"]
    _, _, t, h, w = LATENT
    tokens = t * (h // 2) * (w // 2)
    flops = mfm_step_flops(tokens, TEXT, DIM, LAYERS)
    once = adapter_flops(4 * (t - 1) + 1, 8 * h, 8 * w, DIM)
    print(f"latent {LATENT} ({tokens} tokens), dim {DIM}, {LAYERS} blocks, CFG (2 evaluations per step), "
          f"{torch.get_num_threads()} threads")
    print(f"  MfM : {s_mfm:.3f} s/step")
    print(f"  Wan : {s_wan:.3f} s/step (core WanModel, equal block FLOPs)")
    print(f"  ratio MfM / Wan: {s_mfm / s_wan:.2f} (target ≤ 1.1)")
    print(f"  MfM step: {flops / 1e9:.1f} GFLOP in the blocks → {flops / s_mfm / 1e9:.1f} GFLOP/s achieved; measured "
          f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s ({flops / s_mfm / peak:.0%} of peak); the light adapter "
          f"({once / 1e9:.1f} GFLOP) runs once per condition, not per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
