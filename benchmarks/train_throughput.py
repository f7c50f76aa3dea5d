"""UniMMVSR training throughput, measured side by side in one run (issue "UniMMVSR training", Benchmark).

1. samples/s of the same small config (tiny Wan DiT, 9 frames at 128×128, latents cached after the first pass)
   on 1 rank and on 2 gloo ranks (torchrun), one thread per rank (each rank on one of the 2 cores): the scaling
   efficiency = (2-rank samples/s) / (2 × 1-rank samples/s).
2. The demo's recipe (configs/unimmvsr/demo.toml: dim 256, 4 blocks, 64×64×5 crops, batch 8, its stage-2 task mix)
   in one process on both cores: one forward per sample in fp32 (the trainer before shape-grouped micro-batches)
   against micro-batches of 8 stacked by shape, in fp32 and in bf16 autocast, each slot drawing its own task; then
   bf16 micro-batches of 8 with one task per step (one reference layout per step; the demo's two prompts and the null
   prompt still embed to three lengths, so up to three forwards; with [data] text_tokens = 36 all three are padded
   to one length, so one forward), eager and with torch.compile'd blocks, against a task per slot, over more steps
   and as total samples / total time (a step's cost depends on its task).
3. A FLOP-model projection of one training step of Wan 2.1 1.3B (dim 1536, 30 blocks, FFN 8960) at 21 frames
   480p (832×480 → 6×30×52 = 9,360 tokens; 512 text tokens) on one GPU, with and without gradient checkpointing.

    .venv/bin/python benchmarks/train_throughput.py
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
STEPS = 14
DEMO_STEPS = 36
TASK_STEPS = 160    # one task per step: a step's cost depends on its task, so more steps and the overall rate
TASK_WARM = 60      # steps left out: the compiled run compiles again for each new sample shape in its first steps
PADDED = 36         # [data] text_tokens: the demo's longest prompt, so its prompts and the null prompt share a length
STAGE = f"""
[[stages]]
name = "bench"
steps = {STEPS}
frames = 9
width = 128
height = 128
tasks = {{ t2v = 0.5, mi2v = 0.3, editing = 0.2 }}
"""


def run(config: str, out: str, ranks: int, sets: tuple = (), warm: int = 4, threads: int = 1,
        overall: bool = False) -> float:
    """Median samples/s of the steps after ``warm`` (``overall``: their total samples / total time instead)."""
    script = os.path.join(REPO, "scripts", "train_unimmvsr.py")
    args = [script, "--config", config, "--set", f'training.output_dir="{out}"',
            "--set", f"training.micro_batch={4 // ranks}", *sets]
    cmd = [sys.executable] + args if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", "29533"] + args
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    rates = []
    with open(os.path.join(os.path.dirname(config), out, "metrics.csv"), encoding="utf-8") as f:
        for line in f:
            step, name, value = line.strip().split(",")
            if name == "samples_per_s" and int(step) > warm:   # after the cache is warm
                rates.append(float(value))
    return len(rates) / sum(1 / r for r in rates) if overall else statistics.median(rates)


def demo_config(root: str, steps: int) -> str:
    """configs/unimmvsr/demo.toml as it is, its relative .cache/demo paths made absolute (the parent, manifest and
    text cache scripts/demo_train.py prepares) and only its last stage kept, ``steps`` long."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from demo_train import CONFIG, WORK, prepare

    prepare(WORK)
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read().replace("../../.cache/demo", WORK)
    head, *stages = text.split("[[stages]]")
    last = re.sub(r"(?m)^steps = \d+", f"steps = {steps}", stages[-1])
    path = os.path.join(root, "demo_bench.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + "[[stages]]" + last)
    return path


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

    print("2. the demo's recipe (dim 256, 4 blocks, 64×64×5, batch 8, stage-2 task mix), one process, 2 threads")
    config = demo_config(root, DEMO_STEPS)
    rates = {}
    for label, micro, precision in (("one forward per sample, fp32", 1, "fp32"),
                                    ("shape-grouped micro-batch of 8, fp32", 8, "fp32"),
                                    ("one forward per sample, bf16 autocast", 1, "bf16"),
                                    ("shape-grouped micro-batch of 8, bf16 autocast", 8, "bf16")):
        rates[label] = run(config, f"demo_{micro}_{precision}", 1, ("--set", f"training.micro_batch={micro}",
                                                                     "--set", f'training.mixed_precision="{precision}"',
                                                                     "--set", "training.save_every=100000",
                                                                     "--set", "training.one_task_per_step=false"),
                           warm=DEMO_STEPS // 3, threads=2)
        print(f"  {label:48s}: {rates[label]:.2f} samples/s")
    base = rates["one forward per sample, fp32"]
    for label, rate in list(rates.items())[1:]:
        print(f"  {label:48s}: ×{rate / base:.2f} over one forward per sample in fp32")
    for precision in ("fp32", "bf16 autocast"):
        stacked = rates[f"shape-grouped micro-batch of 8, {precision}"]
        single = rates[f"one forward per sample, {precision}"]
        print(f"  stacking by shape in {precision}: ×{stacked / single:.2f} over one forward per sample")
    config = demo_config(root, TASK_STEPS)
    task_rates = {}
    for label, per_step, compiled, tokens in (
            ("a task per slot (a forward per layout × prompt length)", False, False, 0),
            ("one task per step (a forward per prompt length)", True, False, 0),
            ("one task per step, compiled blocks", True, True, 0),
            (f"one task per step, text_tokens {PADDED} (one forward)", True, False, PADDED),
            (f"one task per step, text_tokens {PADDED}, compiled blocks", True, True, PADDED)):
        task_rates[label] = run(config, f"demo_task_{per_step}_{compiled}_{tokens}", 1,
                                ("--set", "training.save_every=100000",
                                 "--set", f"training.one_task_per_step={str(per_step).lower()}",
                                 "--set", f"training.compile={str(compiled).lower()}",
                                 "--set", f"data.text_tokens={tokens}"),
                                warm=TASK_WARM, threads=2, overall=True)
        print(f"  {label:56s}: {task_rates[label]:.2f} samples/s (steps {TASK_WARM + 1}–{TASK_STEPS}, bf16)")
    base = next(iter(task_rates.values()))
    for label, rate in list(task_rates.items())[1:]:
        print(f"  {label:56s}: ×{rate / base:.2f} over a task per slot")
    print("3. projection: Wan 2.1 1.3B, 21 frames 480p (9,360 tokens), one sample per GPU per step")
    tokens = 6 * 30 * 52
    for ck in (False, True):
        flops = wan_step_flops(tokens, checkpointing=ck)
        row = [f"{name}: {flops / (peak * 1e12 * 0.4):.2f} s"
               for name, peak in (("A100 bf16", 312), ("H100 bf16", 989))]
        print(f"  gradient checkpointing {'on ' if ck else 'off'}: {flops / 1e12:.0f} TFLOP/step; at 40% MFU "
              + ", ".join(row))
    print("  with 2 ID images + a 21-frame reference video: tokens ×" f"{(6 + 2 + 6) / 6:.2f} → "
          f"{wan_step_flops(tokens * 14 // 6) / wan_step_flops(tokens):.2f}× the step")


if __name__ == "__main__":
    main()
