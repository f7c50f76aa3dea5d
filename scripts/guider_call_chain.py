"""The longest call chain of one UniMMVSR guider step, in the pack's own modules (issue "one-way architecture"):
a tiny UniMMVSR through the loader, guider (tiles + a reference) and, with --ranks 2, the Multi-GPU node on CPU
ranks; one sampler step runs under a profiler that records, at every call into the pack, the stack of pack modules
above it. Printed: the longest such stack as module stops (consecutive frames of one module are one stop) and how
many of its steps go UP the stack of docs/architecture.md (scripts/check_imports.py's layers).

    .venv/bin/python scripts/guider_call_chain.py [--ranks 2] [--root OTHER_CHECKOUT]

--root measures another checkout of the pack (e.g. an older commit in a git worktree) with this one's ComfyUI.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--root", default=HERE)
    args = parser.parse_args()
    root = os.path.realpath(args.root)
    os.environ.setdefault("UNICASCADE_COMFYUI_DIR", os.path.join(HERE, ".build", "comfyui"))
    harness = root if os.path.isdir(os.path.join(root, "harness")) else os.path.join(root, "tests")
    sys.path[:0] = [harness, root, os.path.join(HERE, "scripts")]
    import check_imports
    from harness.paths import use_comfy_in_process
    use_comfy_in_process()
    import comfy.cli_args

    base = "/tmp/unicascade_call_chain"   # ComfyUI's base directory: the workers load the checkpoint from it too
    comfy.cli_args.args.base_directory = base
    import comfy.samplers
    import torch
    from safetensors.torch import save_file

    from harness.paths import pack_module as pack
    from harness.tiny_models import build_wan

    from core.unimmvsr.checkpoint import init_from_t2v
    from core.unimmvsr.references import Reference
    wan = build_wan(dim=128, num_layers=2, ffn_dim=256)
    sd, meta = init_from_t2v({k: v.float() for k, v in wan.state_dict().items()})
    os.makedirs(os.path.join(base, "models", "unimmvsr"), exist_ok=True)
    save_file(sd, os.path.join(base, "models", "unimmvsr", "chain.safetensors"), metadata=meta)
    try:
        loader = pack("nodes.unimmvsr_loaders").UniMMVSRLoader
    except ModuleNotFoundError:   # before the loader nodes moved to nodes/
        loader = pack("model_loaders.unimmvsr").UniMMVSRLoader
    model = loader.execute("chain.safetensors").result[0]
    try:
        LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    except ModuleNotFoundError:
        LRCondition = pack("nodes.unimmvsr_upsampler").LRCondition
    guider_nodes = pack("nodes.unimmvsr_guider")
    node = getattr(guider_nodes, "UniMMVSRGuiderNode", None) or guider_nodes.UniMMVSRGuider
    g = torch.Generator().manual_seed(0)
    shape = (1, 16, 2, 32, 32)
    cond = [[torch.randn(1, 8, 4096, generator=g), {}]]
    refs = [Reference("id_image", torch.randn(1, 16, 1, 16, 16, generator=g))]
    guider = node.execute(model, cond, cond, LRCondition(torch.randn(shape, generator=g), 600.0), 3.0, 1.0, 0.3,
                          128, 128, 32, 0, 4, refs).result[0]
    if args.ranks > 1:
        guider = pack("nodes.unimmvsr_multi_gpu").UniMMVSRMultiGPU.execute(guider, args.ranks, 0, "", "gloo",
                                                                           300.0).result[0]
    pack_dir = os.path.realpath(root) + os.sep
    longest: list[str] = []

    def module_of(frame) -> str | None:
        name = frame.f_code.co_filename
        if name.startswith("<"):
            return None
        name = os.path.realpath(name)
        if not name.startswith(pack_dir):
            return None
        if os.path.relpath(name, pack_dir).split(os.sep)[0] in ("harness", "tests", "scripts", ".build", ".venv"):
            return None
        rel = os.path.relpath(name, pack_dir)[:-3].replace(os.sep, ".")
        return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel

    def profile(frame, event, _):
        nonlocal longest
        if event != "call" or module_of(frame) is None:
            return
        stops, f = [], frame
        while f is not None:
            m = module_of(f)
            if m is not None and (not stops or stops[-1] != m):
                stops.append(m)
            f = f.f_back
        if len(stops) > len(longest):
            longest = stops[::-1]

    noise = torch.randn(shape, generator=g)
    sys.setprofile(profile)
    try:
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                      torch.tensor([1.0, 0.0]), seed=0)
    finally:
        sys.setprofile(None)
        if args.ranks > 1:
            pack("distributed.pool").release()
    print(f"longest call chain of a guider step ({args.ranks} rank(s)): {len(longest)} module stops, "
          f"{check_imports.climbs(longest)} upward steps")
    print("  " + " → ".join(longest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
