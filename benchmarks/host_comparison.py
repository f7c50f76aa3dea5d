"""The same work on the two tested ComfyUI hosts, side by side in one run (docs/hosts.md): does 0.33's
comfy-kitchen (fused RoPE in Wan's self-attention) change a Wan sampling step, TMA's overhead on it, or a UniMMVSR
evaluation with references?

Each round starts one process per host, alternating (main, floor, main, floor, …), so load on the machine hits
both alike. A process builds a Wan 2.1-architecture model (dim 512, 4 layers, random weights, through ComfyUI's own
loader), then times, after a warm-up: euler sampling with CFG unpatched and with TMA (UniVid §2.3), and one
UniMMVSR evaluation with 3 reference latent frames (UniMMVSR §3.2). Medians per host and floor/main ratios are
printed; the spread is the range over rounds.

    .venv/bin/python benchmarks/host_comparison.py [--rounds 3]     (needs `make setup setup-floor`)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = {"main": (os.path.join(REPO, ".venv", "bin", "python"), os.path.join(REPO, ".build", "comfyui")),
         "floor": (os.path.join(REPO, ".venv-floor", "bin", "python"), os.path.join(REPO, ".build", "comfyui-floor"))}


def measure(repeats: int, frames: int, size: int, steps: int) -> dict:
    """One host, in this process: seconds per sampling run (plain, TMA) and per UniMMVSR evaluation."""
    sys.path[:0] = [REPO]
    from harness.paths import pack_module, use_comfy_in_process
    use_comfy_in_process()
    import torch
    import comfy.model_management
    import comfy.sample
    import comfy.sd
    from safetensors.torch import save_file

    from core.unimmvsr.checkpoint import init_from_t2v
    from core.unimmvsr.reference_layout import layout
    from harness.tiny_models import build_wan

    import inspect

    import comfy.ldm.flux.math
    import comfyui_version
    kitchen = "quant_ops.ck" in inspect.getsource(comfy.ldm.flux.math)   # Wan's RoPE through comfy-kitchen
    wan_sd = build_wan(dim=512, num_layers=4, ffn_dim=2048, seed=0).state_dict()
    model = comfy.sd.load_diffusion_model_state_dict(dict(wan_sd), model_options={"dtype": torch.float32})
    tma = pack_module("nodes.tma_boost").TemperatureModalityAlignment.execute(
        model, 0.3, 0.3, "cosine", 0.4, 0.6, "global (from sigma)").result[0]
    upscaler_sd, meta = init_from_t2v({k: v.float() for k, v in wan_sd.items()})
    path = os.path.join(REPO, ".cache", "host_comparison_unimmvsr.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(upscaler_sd, path, metadata=meta)
    upscaler = pack_module("model_loaders.unimmvsr").load_unimmvsr(path, os.path.basename(path))
    keys = pack_module("samplers.unimmvsr_model")

    g = torch.Generator().manual_seed(0)
    t, hw = (frames - 1) // 4 + 1, size // 8
    latent = torch.zeros(1, 16, t, hw, hw)
    noise = torch.randn(latent.shape, generator=g)
    positive = [[torch.randn(1, 512, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 512, 4096, generator=g), {}]]
    x, concat = torch.randn(1, 16, t, hw, hw, generator=g), torch.randn(1, 16, t, hw, hw, generator=g)
    refs = keys.ReferenceTokens(torch.randn(1, 16, 3, hw, hw, generator=g), layout(t, [1, 1, 1], []))

    def sample(m):
        start = time.perf_counter()
        comfy.sample.sample(m, noise, steps, 5.0, "euler", "simple", positive, negative, latent, disable_pbar=True,
                            seed=0)
        return time.perf_counter() - start

    def evaluate():
        options = {keys.AUG_T_KEY: 600.0, keys.REFERENCES_KEY: refs, "wrappers": upscaler.wrappers}
        start = time.perf_counter()
        with torch.no_grad():
            upscaler.model.apply_model(x, torch.tensor([0.7]), c_concat=concat, c_crossattn=positive[0][0],
                                       transformer_options=options)
        return time.perf_counter() - start

    comfy.model_management.load_models_gpu([upscaler])
    sample(model), sample(tma), evaluate()                                     # warm-up
    runs = {"plain": [], "tma": [], "unimmvsr": []}
    for _ in range(repeats):
        runs["plain"].append(sample(model))
        runs["tma"].append(sample(tma))
        runs["unimmvsr"].append(evaluate())
    return {"version": comfyui_version.__version__, "comfy_kitchen": kitchen, "threads": torch.get_num_threads(),
            "tokens": t * (size // 16) ** 2, **{k: statistics.median(v) for k, v in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per host, alternating")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per process (after a warm-up)")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats, args.frames, args.size, args.steps)))
        return
    missing = [name for name, (python, comfy) in HOSTS.items() if not (os.path.exists(python) and os.path.isdir(comfy))]
    if missing:
        raise SystemExit(f"host environments missing: {', '.join(missing)} — run `make setup setup-floor` first")
    results: dict[str, list[dict]] = {name: [] for name in HOSTS}
    for round_index in range(args.rounds):
        for name, (python, comfy) in HOSTS.items():
            env = {**os.environ, "UNICASCADE_COMFYUI_DIR": comfy}
            out = subprocess.run([python, os.path.abspath(__file__), "--child", "--repeats", str(args.repeats),
                                  "--frames", str(args.frames), "--size", str(args.size), "--steps", str(args.steps)],
                                 capture_output=True, text=True, env=env, timeout=3600)
            if out.returncode:
                raise SystemExit(f"{name} host failed:\n{out.stderr[-3000:]}")
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[name][-1]
            print(f"round {round_index} {name} (ComfyUI {r['version']}): plain {r['plain']:.2f} s, "
                  f"TMA {r['tma']:.2f} s, UniMMVSR evaluation {r['unimmvsr'] * 1000:.0f} ms")
    first = results["main"][0]
    print(f"\nWan dim 512 × 4 layers, {args.frames} frames {args.size}×{args.size} ({first['tokens']} tokens), "
          f"{args.steps} euler steps with CFG; UniMMVSR with 3 reference frames; torch threads {first['threads']}")

    def spread(name, key):
        values = [r[key] for r in results[name]]
        return statistics.median(values), min(values), max(values)

    for name in HOSTS:
        r = results[name][0]
        overheads = [x["tma"] / x["plain"] for x in results[name]]
        print(f"{name}: ComfyUI {r['version']} "
              f"(RoPE {'through comfy-kitchen' if r['comfy_kitchen'] else 'in PyTorch'}): "
              f"sampling {spread(name, 'plain')[0]:.2f} s, TMA overhead ×{statistics.median(overheads):.3f} "
              f"({min(overheads):.3f}–{max(overheads):.3f}), UniMMVSR evaluation "
              f"{spread(name, 'unimmvsr')[0] * 1000:.0f} ms")
    for key, label in (("plain", "Wan sampling"), ("tma", "TMA sampling"), ("unimmvsr", "UniMMVSR evaluation")):
        ratios = [f[key] / m[key] for m, f in zip(results["main"], results["floor"])]
        print(f"floor/main {label}: ×{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}–{max(ratios):.3f})")


if __name__ == "__main__":
    main()
