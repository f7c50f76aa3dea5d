"""Fused attention kernels (issue 13) against the unfused path ComfyUI runs today, at UniMMVSR-like shapes.

Self-attention of a Wan-1.3B-like layer (12 heads of 128) over a UniMMVSR window: target latent frames plus one
ID image (t = 20) and a reference video (t = 30 …), 16×16 tokens per frame; cross-attention of the same queries on
512 text keys with TMA's α = 1.3.

- CPU: FlexAttention compiled (RoPE from positions + group table, core.attention.flex_rope) vs ComfyUI's path:
  RoPE table from ``EmbedND`` + ``apply_rope1`` on q and k, keys × α, ``scaled_dot_product_attention``. Median
  wall time (the variants called in turn, round after round, in one process) and peak RSS growth during the
  calls (sampled every millisecond, each variant alone in its own process).
  Target: flex ≤ 1.1× SDPA time. ``flex_kernel_only`` times Inductor's FlexAttention kernel alone on inputs
  already rotated and scaled, which separates the CPU kernel's own speed from the pack's work around it.
- CUDA (when present): the Triton kernel vs SDPA (flash) + separate RoPE, CUDA events and peak allocated memory.
  Target ≤ 1.0×. Without a GPU the script prints the bytes-moved model of one call and says the GPU figures are
  projections, not measurements.

    .venv/bin/python benchmarks/attention_kernels.py [--frames 3] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

HEADS, HEAD_DIM, TEXT = 12, 128, 512
ALPHA = 1.3


def positions(frames: int, side: int):
    import torch

    def grid(n, start):
        t, y, x = torch.meshgrid(torch.arange(start, start + n), torch.arange(side), torch.arange(side), indexing="ij")
        return torch.stack([t.flatten(), y.flatten(), x.flatten()], -1)
    return torch.cat([grid(frames, 0), grid(1, 20), grid(2, 30)])


def comfy_freqs(pos, head_dim):
    """ComfyUI Wan's RoPE table for these positions (WanModel.rope_encode's last step)."""
    from comfy.ldm.flux.layers import EmbedND
    d = head_dim
    return EmbedND(dim=d, theta=10000.0, axes_dim=[d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])(
        pos[None].float()).movedim(1, 2)


class PeakRSS:
    def __init__(self):
        import psutil
        self.proc = psutil.Process()
        self.stop = False
        self.base = self.peak = self.proc.memory_info().rss

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()

    @property
    def growth_mb(self):
        return (self.peak - self.base) / 2 ** 20


def build(frames: int, device: str) -> tuple[dict, object]:
    """The calls to compare on the same inputs: {variant: fn}, and a check of a variant's result against the
    unfused path (a benchmark of something wrong is worthless)."""
    from harness.paths import pack_module, use_comfy_in_process

    use_comfy_in_process()
    import torch
    import torch.nn.functional as F
    from comfy.ldm.flux.math import apply_rope1

    fused = pack_module("core.attention.fused")
    rope3d = pack_module("core.attention.rope3d")
    torch.manual_seed(0)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    pos = positions(frames, 16).to(device)
    L = pos.shape[0]
    q, k, v = (torch.randn(1, L, HEADS, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
    kt, vt = (torch.randn(1, TEXT, HEADS, HEAD_DIM, device=device, dtype=dtype) for _ in range(2))
    spec = rope3d.wan_rope_spec(HEAD_DIM)
    freqs = comfy_freqs(pos.cpu(), HEAD_DIM).to(device)
    alpha_table = fused.GroupTable.uniform(ALPHA)

    def sdpa(qh, kh, vh):
        return F.scaled_dot_product_attention(qh.transpose(1, 2), kh.transpose(1, 2),
                                              vh.transpose(1, 2)).transpose(1, 2)

    def unfused():
        qr, kr = apply_rope1(q, freqs), apply_rope1(k, freqs)
        out_self = sdpa(qr, kr, v)
        out_cross = sdpa(q, kt * ALPHA, vt)
        return out_self, out_cross

    def kernels(backend):
        def run():
            out_self, _ = fused.rope_attention(backend, q, k, v, q_positions=pos, k_positions=pos, rope=spec)
            out_cross, _ = fused.rope_attention(backend, q, kt, vt, groups=alpha_table)
            return out_self, out_cross
        return run

    # Inductor's FlexAttention kernel alone, on inputs already rotated, scaled and laid out [B, H, L, d]: how much of
    # flex's time is the CPU kernel itself rather than the pack's RoPE and table work around it
    from torch.nn.attention.flex_attention import flex_attention
    plain_flex = torch.compile(flex_attention, fullgraph=True, dynamic=False)
    heads_first = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731
    q_rot, k_rot, v_h = heads_first(apply_rope1(q, freqs)), heads_first(apply_rope1(k, freqs)), heads_first(v)
    q_h, kt_scaled, vt_h = heads_first(q), heads_first(kt * ALPHA), heads_first(vt)

    def flex_kernel_only():
        return (plain_flex(q_rot, k_rot, v_h).transpose(1, 2), plain_flex(q_h, kt_scaled, vt_h).transpose(1, 2))

    fns = {"sdpa": unfused, "flex": kernels("flex"), "flex_kernel_only": flex_kernel_only}
    if device == "cuda":
        fns["triton"] = kernels("triton")

    def error(result) -> float:
        ref = unfused()
        return max((a.float() - b.float()).abs().max().item() for a, b in zip(result, ref))
    return fns, error


def sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def run_timing(frames: int, repeats: int, device: str) -> dict:
    """Every variant in this process, called in turn each round (so drifts of a shared machine hit all alike):
    first-call time (compiles) and the median of ``repeats`` rounds."""
    import torch

    fns, error = build(frames, device)
    out = {}
    with torch.no_grad():
        for name, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            sync(device)
            out[name] = {"first_s": time.perf_counter() - start, "max_abs_err_vs_sdpa": error(result), "times": []}
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                sync(device)
                out[name]["times"].append(time.perf_counter() - start)
    for r in out.values():
        r["median_s"] = statistics.median(r.pop("times"))
    return out


def run_memory(variant: str, frames: int, repeats: int, device: str) -> float:
    """Peak memory growth (MB) of one variant alone in this process, after its first call."""
    import torch

    fns, _ = build(frames, device)
    fn = fns[variant]
    with torch.no_grad():
        fn()
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with PeakRSS() as rss:
            for _ in range(repeats):
                fn()
                sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if device == "cuda" else rss.growth_mb


def bytes_model(L: int, heads: int, d: int, element: int) -> dict:
    """Compulsory HBM bytes of one self-attention call (every tensor read or written once; the re-reads of K/V
    tiles across query blocks, the same in both paths, are taken as L2 hits, as are the 12-byte positions, shared
    by every head). Separate path: RoPE reads q, k and ComfyUI's float32 table ([L, d/2, 2, 2], read for q and for
    k) and writes rotated q, k; flash attention reads them and v and writes o. Fused: reads q, k, v and the
    positions, writes o. (ComfyUI's apply_rope1 goes through float32 intermediates, so it moves more than this.)"""
    t = L * heads * d * element
    table = L * d * 8
    separate = (2 * t + 2 * table + 2 * t) + (3 * t + t)
    fused = 3 * t + 12 * L + t
    return {"tokens": L, "separate_rope_plus_flash_bytes": separate, "fused_bytes": fused,
            "qk_bytes_saved": separate - fused, "saved_fraction": (separate - fused) / separate}


def child(kind, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--frames", str(args.frames),
           "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=3, help="target latent frames (plus 1 ID + 2 reference)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.child == "timing":
        print(json.dumps(run_timing(args.frames, args.repeats, args.device)))
        return
    if args.child:
        print(json.dumps(run_memory(args.child, args.frames, 5, args.device)))
        return
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    L = (args.frames + 3) * 256
    print(f"self-attention over {L} tokens ({args.frames} target + 1 ID + 2 reference latent frames of 16×16), "
          f"{HEADS} heads × {HEAD_DIM}; cross-attention on {TEXT} text keys, α = {ALPHA}; device {args.device}; "
          f"times: median of {args.repeats} rounds, the variants called in turn in one process")
    results = child("timing", args)
    for name in results:
        results[name]["peak_mb"] = child(name, args)
    base = results["sdpa"]["median_s"]
    for v, r in results.items():
        print(f"  {v:7s} median {r['median_s'] * 1e3:8.1f} ms ({r['median_s'] / base:.2f}× sdpa)  first call "
              f"{r['first_s']:6.1f} s  peak memory growth {r['peak_mb']:7.1f} MB (alone in a process)  max |Δ| vs "
              f"sdpa {r['max_abs_err_vs_sdpa']:.1e}")
    element = 2
    model = bytes_model(L, HEADS, HEAD_DIM, element)
    label = "measured shapes" if args.device == "cuda" else "PROJECTION (no GPU here: nothing below was measured)"
    print(f"bytes-moved model per self-attention call, bf16, {label}:")
    for key, value in model.items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value:,}")
    for frames in (21,):  # a 77-frame UniMMVSR window at 480×832 (30×52 tokens per frame) with the same references
        L_big = (frames + 3) * 30 * 52
        big = bytes_model(L_big, HEADS, HEAD_DIM, element)
        print(f"  at {L_big} tokens (77 frames, 480×832, + references): q/k bytes saved per self-attention call "
              f"{big['qk_bytes_saved'] / 2 ** 20:.0f} MiB of {big['separate_rope_plus_flash_bytes'] / 2 ** 20:.0f} "
              f"MiB ({big['saved_fraction'] * 100:.0f}%) (projection)")
    print(json.dumps({"results": results, "bytes_model": model}))


if __name__ == "__main__":
    main()
