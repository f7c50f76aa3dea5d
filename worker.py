"""Entry point of a multi-GPU UniMMVSR worker (README "4K on many GPUs").

Rank 0 (ComfyUI with the UniMMVSR Multi-GPU node) starts one per extra local GPU by itself. On another machine,
with ComfyUI and this pack installed and the same checkpoints in its models folders, and the same secret as the
ComfyUI machine in the environment:

    export UNICASCADE_RENDEZVOUS_SECRET=<the value set for ComfyUI>
    torchrun --nproc-per-node 8 <ComfyUI>/custom_nodes/<this pack>/worker.py \\
        --master-addr <rank 0's host> --master-port <the node's rendezvous port>

Each process takes a free remote slot (the GPU of its torchrun LOCAL_RANK) and serves prompts until stopped;
when the pool is released or ComfyUI restarts, it joins the next pool within seconds (``--give-up-after`` makes
it exit instead once rank 0 has been unreachable that long). ``python -m <pack>.worker`` works too where the
folder name is a module name.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "unicascade"


def parse(argv=None):
    p = argparse.ArgumentParser(description="UniMMVSR multi-GPU worker")
    p.add_argument("--master-addr", required=True, help="host of rank 0 (the ComfyUI machine)")
    p.add_argument("--master-port", type=int, required=True, help="the rendezvous port of the Multi-GPU node")
    p.add_argument("--comfyui", default=None, help="ComfyUI's folder (default: the one this pack is installed in)")
    p.add_argument("--base-directory", default=None, help="ComfyUI base directory holding models/ (default: --comfyui)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--give-up-after", type=float, default=0.0,
                   help="exit once rank 0 has been unreachable this many seconds (default 0: keep waiting)")
    p.add_argument("--store-timeout", type=float, default=600.0,
                   help="seconds a rendezvous read may wait (joining, loading a model)")
    # set by rank 0 for the workers it starts itself
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cpu-core", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def comfyui_dir(given: str | None) -> str:
    for path in (given, os.environ.get("UNICASCADE_COMFYUI_DIR"),
                 os.path.dirname(os.path.dirname(HERE)) if os.path.basename(os.path.dirname(HERE)) == "custom_nodes"
                 else None, os.path.join(HERE, ".build", "comfyui")):
        if path and os.path.isfile(os.path.join(path, "comfy", "sd.py")):
            return os.path.abspath(path)
    raise SystemExit("ComfyUI not found: pass --comfyui PATH (the folder holding main.py and comfy/)")


def die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM when rank 0 exits, however it exits (no orphaned workers)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def import_pack():
    if __package__:
        return sys.modules[__package__]
    sys.path.insert(0, os.path.join(HERE, "scripts"))
    from pack_import import import_pack as import_as

    return import_as(PACKAGE)


def main(argv=None) -> int:
    args = parse(argv)
    if args.parent_pid is not None:
        die_with_parent()
        if os.getppid() != args.parent_pid:
            return 0
    remote = args.rank is None
    if remote and "LOCAL_RANK" in os.environ and args.device != "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", os.environ["LOCAL_RANK"])
    if args.cpu_core is not None:
        os.sched_setaffinity(0, {args.cpu_core})
    label = f"rank {args.rank}" if not remote else f"remote worker {os.uname().nodename}:{os.getpid()}"
    logging.basicConfig(level=logging.INFO, format=f"[UniCascade {label}] %(levelname)s %(message)s")
    import torch

    if args.cpu_core is not None:
        torch.set_num_threads(1)
    cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    comfy_dir = comfyui_dir(args.comfyui)
    sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.base_directory = args.base_directory or comfy_dir
    import folder_paths  # (reads the base directory)

    import_pack()
    # a local worker gets rank 0's model folders (extra_model_paths.yaml and all) from its parent's environment;
    # nothing from the rendezvous ever names a path
    for folder, paths in json.loads(os.environ.get("UNICASCADE_MODEL_FOLDERS", "{}")).items():
        for path in paths:
            if folder in folder_paths.folder_names_and_paths and os.path.isdir(path):
                folder_paths.add_model_folder_path(folder, path)
    nodes = importlib.import_module(f"{PACKAGE if not __package__ else __package__}.nodes")
    node_classes = {cls.define_schema().node_id: cls for cls in nodes.node_classes()}
    worker = importlib.import_module(f"{PACKAGE if not __package__ else __package__}.distributed.rank_worker")
    args.device = "cpu" if cpu else "cuda"
    return worker.run(args, node_classes, os.environ.get("UNICASCADE_TRACE_FILE") or None)


if __name__ == "__main__":
    sys.exit(main())
