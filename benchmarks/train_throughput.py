"""UniMMVSR training throughput, measured side by side in one run (issue "UniMMVSR training", Benchmark).

1. samples/s of the same small config (tiny Wan DiT, 9 frames at 128×128, latents cached after the first pass)
   on 1 rank and on 2 gloo ranks (torchrun), one thread per rank (each rank on one of the 2 cores): the scaling
   efficiency = (2-rank samples/s) / (2 × 1-rank samples/s).
2. A FLOP-model projection of one training step of Wan 2.1 1.3B (dim 1536, 30 blocks, FFN 8960) at 21 frames
   480p (832×480 → 6×30×52 = 9,360 tokens; 512 text tokens) on one GPU, with and without gradient checkpointing.

    .venv/bin/python benchmarks/train_throughput.py
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
STEPS = 14
STAGE = f"""
[[stages]]
name = "bench"
steps = {STEPS}
frames = 9
width = 128
height = 128
tasks = {{ t2v = 0.5, mi2v = 0.3, editing = 0.2 }}
"""


def run(config: str, out: str, ranks: int) -> float:
    script = os.path.join(REPO, "scripts", "train_unimmvsr.py")
    args = [script, "--config", config, "--set", f'training.output_dir="{out}"',
            "--set", f"training.micro_batch={4 // ranks}"]
    cmd = [sys.executable] + args if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", "29533"] + args
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    rates = []
    with open(os.path.join(os.path.dirname(config), out, "metrics.csv"), encoding="utf-8") as f:
        for line in f:
            step, name, value = line.strip().split(",")
            if name == "samples_per_s" and int(step) > 4:   # after the cache is warm
                rates.append(float(value))
    return statistics.median(rates)


def wan_step_flops(tokens: int, text: int = 512, dim: int = 1536, ffn: int = 8960, layers: int = 30,
                   checkpointing: bool = True) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3× forward; +1 forward with checkpointing)."""
    per_block = (2 * tokens * dim * dim * 4          # self-attention q, k, v, o
                 + 2 * 2 * tokens * tokens * dim     # QKᵀ and AV
                 + 2 * tokens * dim * dim * 2        # cross-attention q, o
                 + 2 * text * dim * dim * 2          # cross-attention k, v on the text
                 + 2 * 2 * tokens * text * dim       # cross-attention scores and values
                 + 2 * tokens * dim * ffn * 2)       # FFN
    forward = layers * per_block
    return forward * (4 if checkpointing else 3)


def main() -> None:
    from harness.training_setup import write_workspace

    root = tempfile.mkdtemp(prefix="unimmvsr_bench_")
    config = write_workspace(root, stages=STAGE, validation=False,
                             training={"batch_size": 4, "save_every": 1000, "gradient_checkpointing": False},
                             degradation={"sdedit_probability": 0.0})
    print("1. training throughput, tiny Wan DiT, 9 frames 128×128, global batch 4 (same samples on both)")
    one = run(config, "one_rank", 1)
    two = run(config, "two_ranks", 2)
    print(f"  1 rank : {one:.2f} samples/s")
    print(f"  2 ranks: {two:.2f} samples/s  → speed-up ×{two / one:.2f}, scaling efficiency {two / (2 * one):.0%}")

    print("2. projection: Wan 2.1 1.3B, 21 frames 480p (9,360 tokens), one sample per GPU per step")
    tokens = 6 * 30 * 52
    for ck in (False, True):
        flops = wan_step_flops(tokens, checkpointing=ck)
        row = [f"{name}: {flops / (peak * 1e12 * 0.4):.2f} s" for name, peak in (("A100 bf16", 312), ("H100 bf16", 989))]
        print(f"  gradient checkpointing {'on ' if ck else 'off'}: {flops / 1e12:.0f} TFLOP/step; at 40% MFU "
              + ", ".join(row))
    print("  with 2 ID images + a 21-frame reference video: tokens ×" f"{(6 + 2 + 6) / 6:.2f} → "
          f"{wan_step_flops(tokens * 14 // 6) / wan_step_flops(tokens):.2f}× the step")


if __name__ == "__main__":
    main()
