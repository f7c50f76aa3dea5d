"""Multi-GPU UniMMVSR, measured side by side in one run (issue "4K on many GPUs", Benchmark).

1. The same tiled sampling run (a UniMMVSR model of Wan 2.1 layout, dim 256, 4 blocks; 3 latent frames of
   64×64 in 16 windows of 24×24 overlapping by 8) on 1 rank and on 2 gloo ranks, each rank pinned
   to one core with one thread (rank 0 is this process, as ComfyUI is; the worker is started by the pool exactly
   as the UniMMVSR Multi-GPU node starts it). Printed: seconds per step, the speed-up of the whole step and of
   its windows part, the scaling efficiency, and the bytes broadcast + all-reduced per step (measured).
2. A projection for 1080p and 4K × 1–8 GPUs from the FLOP model (core.unimmvsr.window_shares: n·(6d + n) per
   block, the 10B paper model's width) at a stated sustained GPU throughput, plus the per-step communication
   over NVLink and PCIe. Projections are labelled as such.

    .venv/bin/python benchmarks/unimmvsr_multi.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))
STEPS = 6
LATENT = (3, 64, 64)            # latent frames, height, width (Wan 2.1 VAE: 9 frames of 512×512 pixels)
TILE_PX, OVERLAP_PX = 192, 64   # 24×24 latent tiles overlapping by 8: 4×4 = 16 windows (8 per rank)


def setup(base: str):
    """ComfyUI in this process with ``base`` as its base directory holding one UniMMVSR checkpoint."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.base_directory = base
    import torch
    from safetensors.torch import save_file

    from harness.tiny_models import as_trained, build_wan
    from pack_import import import_pack, pack_submodule

    import_pack("unicascade")
    checkpoint = pack_submodule("unicascade", "core.unimmvsr.checkpoint")
    os.makedirs(os.path.join(base, "models", "unimmvsr"), exist_ok=True)
    wan = build_wan(dim=256, num_layers=4, ffn_dim=1024)
    sd, meta = checkpoint.init_from_t2v({k: v.contiguous() for k, v in wan.state_dict().items()})
    save_file(as_trained(sd), os.path.join(base, "models", "unimmvsr", "bench.safetensors"), metadata=meta)
    torch.manual_seed(0)


def sample(ranks: int, pin: bool):
    import comfy.samplers
    import torch
    from pack_import import pack_submodule

    loader = pack_submodule("unicascade", "nodes.unimmvsr_loaders").UniMMVSRLoader
    guider_node = pack_submodule("unicascade", "nodes.unimmvsr_guider").UniMMVSRGuiderNode
    multi_node = pack_submodule("unicascade", "nodes.unimmvsr_multi_gpu").UniMMVSRMultiGPU
    settings = pack_submodule("unicascade", "distributed.settings").MultiGPUSettings
    LRCondition = pack_submodule("unicascade", "core.unimmvsr.lr_condition").LRCondition
    model = loader.execute("bench.safetensors").result[0]
    g = torch.Generator().manual_seed(7)
    lr = LRCondition(torch.randn(1, 16, *LATENT, generator=g) * 0.5, 200.0)
    positive = [[torch.randn(1, 12, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 12, 4096, generator=g), {}]]
    guider = guider_node.execute(model, positive, negative, lr, 3.0, 0.0, 0, TILE_PX, TILE_PX, OVERLAP_PX, 0,
                                 4).result[0]
    if ranks > 1:   # the node's settings, with the benchmark's CPU pinning
        multi_node.execute(guider, ranks, 0, "", "gloo", 600.0)
        multi_gpu = pack_submodule("unicascade", "distributed.session").MultiGPUWindows
        guider = guider.with_execution(multi_gpu(settings(local_ranks=ranks, backend="gloo", timeout=600.0,
                                                          pin_cpus=pin)))
    noise = torch.randn(1, 16, *LATENT, generator=g)
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    # warm-up: one step (model load, worker start, first-call costs)
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas[-3:], seed=0)
    t0 = time.perf_counter()
    out = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas, seed=0)
    seconds = (time.perf_counter() - t0) / STEPS
    session = getattr(guider.last_run, "session", None)
    parts = {k: v / STEPS for k, v in session.seconds.items()} if session else {"windows": seconds}
    return out, seconds, parts, session.bytes_per_step if session else 0


def projection() -> None:
    """Seconds per step (3 evaluations) at 1080p / 4K over 1–8 GPUs, from the FLOP model (per block
    24·n·d² + 4·n²·d = 4·d·n·(6d + n)) of a Wan-14B-sized stand-in (the paper does not publish its 10B model's
    shape) at an assumed sustained throughput; the speed-up columns are ratios and do not depend on that scale."""
    from pack_import import pack_submodule

    shares = pack_submodule("unicascade", "core.unimmvsr.window_shares")
    dim, layers = 5120, 40                      # a Wan-14B-class width/depth stands in for the 10B model
    sustained = 400e12                          # FLOP/s per GPU: bf16 on an H100/H800 at ~40% of its dense peak
    nvlink, pcie = 300e9, 25e9                  # bytes/s: NVLink 4 all-reduce bus bandwidth, PCIe 4 x16 effective
    rows = []
    for name, (w, h) in (("1080p", (1920, 1080)), ("4K", (3840, 2160))):
        frames, lh, lw = 20, h // 8, w // 8
        tile_h, tile_w, ov = 720 // 8, 1280 // 8, 16
        ys = shares_starts(lh, tile_h, ov)
        xs = shares_starts(lw, tile_w, ov)
        tokens = shares.window_tokens(frames, min(tile_h, lh), min(tile_w, lw), (1, 2, 2))
        per_window = 3 * layers * 4 * dim * shares.window_cost(tokens, dim)   # FLOPs of 3 evaluations
        costs = [per_window] * (len(ys) * len(xs))
        latent_bytes = 16 * frames * lh * lw * 4
        comm = latent_bytes + (latent_bytes + frames * lh * lw * 4)     # broadcast x, all-reduce (Σw·x̂, Σw)
        base = None
        for gpus in (1, 2, 4, 8):
            split = shares.balance(costs, gpus)
            makespan = max(sum(costs[i] for i in s) for s in split) / sustained
            t_nv = 0.0 if gpus == 1 else comm * 2 * (gpus - 1) / gpus / nvlink
            t_pc = 0.0 if gpus == 1 else comm * 2 * (gpus - 1) / gpus / pcie
            base = base or makespan
            rows.append(f"{name:>8} {len(costs):>8} {gpus:>5} {makespan:>15.1f} {comm / 1e6:>9.1f} {t_nv:>9.3f} "
                        f"{t_pc:>8.3f} {base / (makespan + t_nv):>12.2f}× {base / (makespan + t_pc):>8.2f}×")
    print("\nProjection (not measured): 77 frames (20 latent), 3 evaluations per window, 720p-sized tiles with 128 px "
          f"overlap, d={dim}, {layers} blocks, {sustained / 1e12:.0f} TFLOP/s sustained per GPU (assumed). Table 12's "
          f"1030 s for 50 steps of 1080p on one H800 (≈ 21 s/step) says the paper's 10B model is cheaper per token "
          f"than this stand-in; read the seconds as an upper bound and the speed-ups as the projection. A step "
          f"cannot spread over more GPUs than it has windows: use smaller tiles for 8 GPUs at 1080p.")
    print(f"{'output':>8} {'windows':>8} {'GPUs':>5} {'s/step compute':>15} {'MB/step':>9} {'NVLink s':>9} "
          f"{'PCIe s':>8} {'speed-up NVLink':>15} {'PCIe':>9}")
    print("\n".join(rows))


def shares_starts(length, tile, overlap):
    from pack_import import pack_submodule

    return pack_submodule("unicascade", "core.unimmvsr.tiling").starts(length, tile, overlap)


def main() -> int:
    from harness.paths import COMFY_DIR

    sys.path.insert(0, COMFY_DIR)
    base = tempfile.mkdtemp(prefix="unimmvsr_multi_")
    setup(base)
    import torch

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    one, s1, p1, _ = sample(1, pin=True)
    two, s2, p2, sent = sample(2, pin=True)
    err = float((one - two).abs().max())
    print(f"UniMMVSR tiled sampling, latent {LATENT}, {TILE_PX}px tiles / {OVERLAP_PX}px overlap, {STEPS} steps, "
          f"each rank pinned to one core, 1 thread")
    print(f"  1 rank : {s1:.3f} s/step")
    print(f"  2 ranks: {s2:.3f} s/step (broadcast {p2['broadcast'] * 1e3:.1f} ms, windows {p2['windows']:.3f} s, "
          f"all-reduce {p2['reduce'] * 1e3:.1f} ms)")
    print(f"  speed-up, whole step: {s1 / s2:.2f}× (efficiency {s1 / s2 / 2:.0%}); windows part: "
          f"{p1['windows'] / p2['windows']:.2f}× (target ≥ 1.7×)")
    print(f"  communicated per step: {sent / 1e6:.2f} MB (latent broadcast + all-reduce of Σw·x̂ and Σw)")
    print(f"  2 ranks vs 1: max |difference| {err:.2e}")
    projection()
    from pack_import import pack_submodule

    pack_submodule("unicascade", "distributed.pool").release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
