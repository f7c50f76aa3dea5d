"""One prepared command for the first GPU the project is lent (`make bench-gpu`): what only a GPU can show, as JSON.

1. kernels — the Triton kernel (RoPE in the kernel) and compiled FlexAttention against a float64 reference at Wan
   2.1 1.3B (12 heads × 128) and 14B (40 × 128) shapes, bf16 and fp16, self-attention over a 21-latent-frame
   480p (32,760 tokens) and 720p (75,600 tokens) window, without and with reference tokens (an ID image at t = 20,
   two reference frames from t = 30). The reference is computed in float64 for a sample of query rows against
   every key; the bound a bf16/fp16 result must meet is twice the error of the kernel's own arithmetic emulated
   with round-to-nearest conversions on those rows (harness/attention_reference.py, checked under Triton's
   interpreter in the suite). Speed: the kernel against ComfyUI's path on the same inputs — a separate RoPE pass
   (``apply_rope1``) then PyTorch SDPA (flash) — CUDA events, median of 5 (ratio; target ≤ 1.0).
2. unimmvsr_step — one guided UniMMVSR step (3 evaluations: UniMMVSR §3.3) of the Wan 2.1 1.3B architecture,
   random weights in ComfyUI's checkpoint layout written at run time (bf16), through the pack's loader, Upsampler,
   References (an ID image, a reference video) and Guider, on a 720p tile of 21 latent frames: seconds, peak
   allocated memory, the FLOP model's count (the same code as benchmarks/full_size_cpu.py).

3. trainer_lora_step — two LoRA steps (rank 16, checkpointing, bf16, EMA) of the Wan 2.1 1.3B architecture through
   scripts/train_unimmvsr.py on benchmarks/train_full_size.py's workspace: seconds per step and the peak CUDA memory
   the trainer logs (metrics.csv ``cuda_peak_gib``) against ``--plan``'s per-GPU figure for the same config.
4. mfm_2b_step — MfM 2B (28 blocks, 28 heads of 64; random bf16 pipeline folder through the MfM loader), one CFG
   step of 17 frames at 256×384 on ComfyUI's sampler: seconds, peak allocated memory, the blocks' FLOPs.

``--budget`` (480 s) bounds the whole suite: the kernel section gets what ``--reserve`` (300 s) leaves for the model
steps, and a section that would start after the budget is spent is recorded as skipped.

Without CUDA it prints a one-line message and an empty result, and exits 0. ``--smoke`` runs the same code at
tiny shapes on whatever device there is (the CPU here; flex only, Triton when TRITON_INTERPRET=1), so the suite
is known to run before a GPU is spent on it (tests/test_gpu_suite.py).

    .venv/bin/python benchmarks/gpu_suite.py [--out benchmarks/results/gpu_<name>_<date>.json] [--budget 480]
                                             [--reserve 300] [--smoke]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]

HEAD_DIM = 128
MODELS = {"wan2.1_1.3B": 12, "wan2.1_14B": 40}                  # heads of 128
WINDOWS = {"480p_21": (21, 30, 52), "720p_21": (21, 45, 80)}   # latent frames, token rows, token columns
SAMPLED_ROWS = 128


def positions(frames: int, rows: int, cols: int, references: bool):
    import torch
    from harness.attention_reference import grid
    parts = [grid(frames, rows, cols)]
    if references:                                           # UniMMVSR §3.2: ID image at t = 20, video from t = 30
        parts += [grid(1, rows, cols, 20), grid(2, rows, cols, 30)]
    return torch.cat(parts)


def reference_rows(q, k, v, q_pos, k_pos, rows, axes):
    """float64 attention output of the sampled query rows against every key."""
    import torch
    from harness.attention_reference import explicit_rope
    q64 = explicit_rope(q[:, rows].double(), q_pos[rows], axes)
    k64 = explicit_rope(k.double(), k_pos, axes)
    logits = torch.einsum("blhd,bmhd->bhlm", q64, k64) / math.sqrt(q.shape[-1])
    return torch.einsum("bhlm,bmhd->blhd", logits.softmax(-1), v.double())


def nearest_rounding_bound(q, k, v, q_pos, k_pos, rows, axes, exact, block_n: int) -> float:
    """Twice the float64 error of the kernel's arithmetic emulated with round-to-nearest conversions."""
    from harness.attention_reference import emulate_kernel_bf16
    emulated, _ = emulate_kernel_bf16(q[:, rows], k, v, q_pos[rows], k_pos, axes, "adjacent", 1.0,
                                      rounding="nearest", block_n=block_n, dtype=q.dtype)
    return 2 * (emulated - exact).abs().max().item()


def cuda_median_ms(fn, repeats: int = 5) -> float:
    import torch
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernels(pack, device, smoke: bool, deadline: float) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from comfy.ldm.flux.math import apply_rope1

    from attention_kernels import comfy_freqs
    from harness.attention_reference import wan_axes
    fused = pack("core.attention.fused")
    rope3d = pack("core.attention.rope3d")
    spec = rope3d.wan_rope_spec(HEAD_DIM)
    backends = ["flex"] + (["triton"] if device.type == "cuda"
                           or pack("core.attention.backend_status").interpreter_enabled() else [])
    models = {"tiny": 1} if smoke else MODELS
    windows = {"tiny": (2, 3, 4)} if smoke else WINDOWS
    dtypes = [torch.bfloat16, torch.float16]
    results = []
    for model, heads in models.items():
        for window, (frames, rows_, cols) in windows.items():
            for references in (False, True):
                pos = positions(frames, rows_, cols, references).to(device)
                length = pos.shape[0]
                g = torch.Generator(device=device).manual_seed(length + heads)
                q, k, v = (torch.randn(1, length, heads, HEAD_DIM, device=device, generator=g) for _ in range(3))
                rows = torch.randperm(length, generator=torch.Generator().manual_seed(0))[:SAMPLED_ROWS].to(device)
                exact = reference_rows(q, k, v, pos, pos, rows, wan_axes(HEAD_DIM))
                freqs = comfy_freqs(pos.cpu(), HEAD_DIM).to(device)
                for dtype in dtypes:
                    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
                    exact_d = reference_rows(qd, kd, vd, pos, pos, rows, wan_axes(HEAD_DIM))
                    bound = nearest_rounding_bound(qd, kd, vd, pos, pos, rows, wan_axes(HEAD_DIM), exact_d, 64)
                    for backend in backends:
                        if time.monotonic() > deadline:
                            results.append({"model": model, "window": window, "skipped": "time budget spent"})
                            return results
                        record = {"model": model, "heads": heads, "window": window, "tokens": length,
                                  "references": references, "dtype": str(dtype).replace("torch.", ""),
                                  "backend": backend}
                        try:
                            with torch.no_grad():
                                out, _ = fused.rope_attention(backend, qd, kd, vd, q_positions=pos, k_positions=pos,
                                                              rope=spec)
                            error = (out[:, rows].double() - exact_d).abs().max().item()
                            record.update(error=error, bound=bound, within_bound=error <= bound,
                                          error_vs_float32_inputs=(out[:, rows].double() - exact).abs().max().item())
                            if device.type == "cuda":
                                def kernel(b=backend):
                                    fused.rope_attention(b, qd, kd, vd, q_positions=pos, k_positions=pos, rope=spec)

                                def comfy_path():
                                    qr, kr = apply_rope1(qd, freqs), apply_rope1(kd, freqs)
                                    F.scaled_dot_product_attention(qr.transpose(1, 2), kr.transpose(1, 2),
                                                                   vd.transpose(1, 2))
                                with torch.no_grad():
                                    ms_kernel, ms_comfy = cuda_median_ms(kernel), cuda_median_ms(comfy_path)
                                record.update(kernel_ms=ms_kernel, rope_plus_sdpa_ms=ms_comfy,
                                              ratio=ms_kernel / ms_comfy)
                        except Exception as e:   # one failing case must not lose the others' figures
                            record["error_message"] = f"{type(e).__name__}: {e}"
                        results.append(record)
                        print(json.dumps(record), file=sys.stderr, flush=True)
    return results


def unimmvsr_13b_step(pack, smoke: bool, workdir: str) -> dict:
    from full_size_cpu import WAN21_13B, unimmvsr_step
    if smoke:
        return unimmvsr_step(pack, workdir, dict(dim=128, ffn_dim=256, num_layers=2), 5, 192, 128)
    return unimmvsr_step(pack, workdir, WAN21_13B, 81, 1280, 720)       # 21 latent frames of a 720p tile


def mfm_2b_step(pack, smoke: bool, workdir: str) -> dict:
    from full_size_cpu import MFM_2B, mfm_step
    shape = dict(num_attention_heads=2, attention_head_dim=64, num_layers=2) if smoke else MFM_2B
    return mfm_step(pack, workdir, shape, (1, 16, 2, 8, 8) if smoke else None)


def trainer_lora_step(smoke: bool, workdir: str) -> dict:
    """Two LoRA steps (rank 16, checkpointing, bf16 autocast, EMA) of the Wan 2.1 1.3B architecture through
    scripts/train_unimmvsr.py on the workspace of benchmarks/train_full_size.py (5 frames 64×64 of bikes); the peak
    CUDA memory the trainer logs (metrics.csv cuda_peak_gib) against ``--plan``'s per-GPU figure for that config."""
    import subprocess

    import torch
    from train_full_size import SCRIPT, logged, step_seconds

    def run(what: str, *args: str) -> None:
        done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-3000:]}")

    root = os.path.join(workdir, "trainer")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    run("writing the workspace", os.path.join(REPO, "benchmarks", "train_full_size.py"), "--write-workspace", root,
        "--rank", "16", *(["--tiny"] if smoke else []))
    config = os.path.join(root, "train.toml")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    run("the trainer", SCRIPT, "--config", config, "--device", device)
    wall = time.perf_counter() - started
    plan_json = os.path.join(root, "plan.json")
    run("the plan", SCRIPT, "--config", config, "--device", device, "--plan", "--plan-target", "gpu",
        "--plan-json", plan_json)
    with open(plan_json, encoding="utf-8") as f:
        plan = json.load(f)
    peaks = logged(os.path.join(root, "run"), "cuda_peak_gib")
    planned = plan["total"] / 2 ** 30
    out = {"parameters": plan["parameters"]["total"], "trainable": plan["parameters"]["trainable"],
           "tokens_per_sample": plan["shape"]["tokens"], "seconds_per_step": step_seconds(os.path.join(root, "run")),
           "process_wall_s": wall, "plan_gpu_gib": planned}
    if peaks:
        out.update(cuda_peak_gib=max(peaks), measured_over_plan=max(peaks) / planned)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too (default benchmarks/results/gpu_<name>_<date>.json "
                                      "on a GPU)")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds for the whole suite (default 480); the kernel section gets what the model steps "
                             "leave (--reserve), and a step that would start past the budget is skipped")
    parser.add_argument("--reserve", type=float, default=300, help="seconds kept for the model steps (default 300)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device (checks the suite runs)")
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_suite: no CUDA device here (torch.cuda.is_available() is False): nothing measured. Run it on a "
              "machine with an NVIDIA GPU, or with --smoke to check the suite at tiny shapes.", file=sys.stderr)
        print(json.dumps({"cuda": False}))
        return 0
    from harness.paths import pack_module, use_comfy_in_process
    use_comfy_in_process()
    import comfy.cli_args
    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    started = time.monotonic()
    report = {"date": datetime.date.today().isoformat(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "smoke": args.smoke}
    workdir = os.path.join(REPO, ".cache", "gpu_suite")
    os.makedirs(workdir, exist_ok=True)
    sections = (("kernels", lambda: kernels(pack_module, device, args.smoke,
                                            started + max(0.0, args.budget - args.reserve))),
                ("unimmvsr_step", lambda: unimmvsr_13b_step(pack_module, args.smoke, workdir)),
                ("trainer_lora_step", lambda: trainer_lora_step(args.smoke, workdir)),
                ("mfm_2b_step", lambda: mfm_2b_step(pack_module, args.smoke, workdir)))
    for name, run in sections:
        if time.monotonic() > started + args.budget:
            report[name] = {"skipped": "time budget spent"}
            continue
        try:
            report[name] = run()
        except Exception as e:
            report[name] = {"error_message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    report["seconds"] = time.monotonic() - started
    text = json.dumps(report, indent=1)
    print(text)
    out = args.out
    if out is None and report["gpu"]:
        name = report["gpu"].replace(" ", "_").replace("/", "_")
        out = os.path.join(REPO, "benchmarks", "results", f"gpu_{name}_{report['date']}.json")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
