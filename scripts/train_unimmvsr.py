"""Train a UniMMVSR upscaler from a Wan T2V checkpoint (UniMMVSR §3.3–3.4; README "Train your own upscaler").

    # one GPU (or the CPU)
    python scripts/train_unimmvsr.py --config configs/unimmvsr/paper.toml
    # 8 GPUs on one machine (DDP; [training] sharding = "fsdp" for the 14B backbone)
    torchrun --nproc-per-node 8 scripts/train_unimmvsr.py --config configs/unimmvsr/paper.toml

Options: --set section.key=value overrides the config (TOML values: --set training.lora_rank=32; one stage:
--set stages.1.steps=11000);
--comfyui PATH points at the ComfyUI folder (default: the one this pack is installed in, else .build/comfyui);
--stop-after N ends the run after N optimizer steps (a checkpoint is written; run again to resume);
--plan prints the per-GPU memory (weights, gradients, AdamW, EMA, activations with/without checkpointing) and the
expected throughput of the config's largest stage, and exits without training (training/unimmvsr/plan.py;
--plan-model wan2.1-1.3b | wan2.2-5b | wan2.1-14b instead of the parent's header, --plan-world-size, --plan-tflops,
--plan-gpu-gb, --plan-target cpu for the host-memory figure of a CPU run, --plan-json FILE).
The run resumes from the newest checkpoint in <output_dir>/checkpoints by itself.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "unicascade"


def comfyui_dir(given: str | None) -> str:
    candidates = [given, os.environ.get("UNICASCADE_COMFYUI_DIR"),
                  os.path.dirname(os.path.dirname(REPO)) if os.path.basename(os.path.dirname(REPO)) == "custom_nodes"
                  else None, os.path.join(REPO, ".build", "comfyui")]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "comfy", "sd.py")):
            return os.path.abspath(path)
    raise SystemExit("ComfyUI not found: pass --comfyui PATH (the folder holding main.py and comfy/)")


def import_pack(comfy_dir: str, cpu: bool):
    """ComfyUI's modules on the path (CPU mode when there is no GPU), then this pack as a package."""
    sys.path.insert(0, comfy_dir)
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu
    from pack_import import pack_submodule
    return (pack_submodule(PACKAGE, "training.unimmvsr.config"), pack_submodule(PACKAGE, "training.unimmvsr.trainer"))


def fixed_mmap_threshold(limit: int = 128 * 1024) -> None:
    """glibc raises its mmap threshold after the first large free, so the trainer's large short-lived buffers
    (UMT5's 8 MB prompt embeddings, decoded frames) then come from the heap, fragment it and keep host RSS
    wandering by hundreds of MB; a fixed threshold returns them to the OS at once. Linux/glibc only."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, limit)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def parse_sets(values: list[str]) -> dict:
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item}: use section.key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--comfyui")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--plan", action="store_true", help="print the memory/throughput plan and exit")
    parser.add_argument("--plan-model", help="wan2.1-1.3b | wan2.2-5b | wan2.1-14b (default: the parent's header)")
    parser.add_argument("--plan-world-size", type=int, default=int(os.environ.get("WORLD_SIZE", "1")))
    parser.add_argument("--plan-tflops", type=float, default=400.0,
                        help="sustained TFLOP/s per device (default 400: H100 bf16 at ~40%% MFU)")
    parser.add_argument("--plan-gpu-gb", type=float, default=80.0, help="device memory in GiB (default 80)")
    parser.add_argument("--plan-target", choices=("gpu", "cpu"),
                        help="gpu: per-GPU memory; cpu: the CPU run's host memory (default: cpu with --device cpu)")
    parser.add_argument("--plan-json", default="", help="also write the plan as JSON to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fixed_mmap_threshold()
    import torch
    cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    config, trainer = import_pack(comfyui_dir(args.comfyui), cpu)
    try:
        cfg = config.load(args.config, parse_sets(args.set))
    except ValueError as e:
        raise SystemExit(f"config: {e}")
    if args.plan:
        from pack_import import pack_submodule
        try:
            return pack_submodule(PACKAGE, "training.unimmvsr.plan").main(
                cfg, preset=args.plan_model, world=max(1, args.plan_world_size), tflops=args.plan_tflops,
                gpu_gb=args.plan_gpu_gb, json_path=args.plan_json,
                target=args.plan_target or ("cpu" if args.device == "cpu" else "gpu"))
        except ValueError as e:
            raise SystemExit(f"plan: {e}")
    # quoted as a shell would need it: a --set value with spaces or brackets pastes back as one argument
    command = "python scripts/train_unimmvsr.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        command = f"torchrun --nproc-per-node {os.environ['WORLD_SIZE']} " + command.removeprefix("python ")
    try:
        result = trainer.Trainer(cfg, command=command, stop_after=args.stop_after,
                                 device="cpu" if cpu else args.device).run()
    except ValueError as e:  # bad config, manifest, parent or data: a message, not a traceback
        raise SystemExit(f"error: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.steps} steps; checkpoint: {result.final_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
