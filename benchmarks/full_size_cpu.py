"""Real sizes on this CPU, one step each (bf16): what tiny test models cannot show — head counts, dims, dtype
paths, memory (issue 32).

1. UniMMVSR on the Wan 2.1 1.3B architecture (dim 1536, 30 blocks, 12 heads of 128): random weights in ComfyUI's
   checkpoint layout, bf16, written at run time and loaded through the pack's loader; a tiny Wan 2.1 VAE from the
   test harness (16 latent channels); the UniMMVSR Upsampler, References (an ID image and a 5-frame reference
   video) and Guider nodes; one euler step of 5 frames at 256×256 with its 3 evaluations (UniMMVSR §3.3: text and
   reference guidance). Seconds against the FLOP model at this machine's measured bf16 matmul rate; peak RSS.
2. MfM 2B (Goku's 2B shape: 28 blocks, 28 heads of 64, 1792 wide): a random pipeline folder (bf16 transformer)
   through the pack's MfM loader, one CFG step (2 evaluations) of 17 frames at 256×384 on ComfyUI's sampler.
3. The attention override at 40 heads: one Wan 2.1 14B block (dim 5120, 40 heads of 128) through ComfyUI's
   loader, with TMA (UniVid §2.3) and UniCascade Attention (flex) against ComfyUI's default attention on the same
   input: the largest difference and both times.

    .venv/bin/python benchmarks/full_size_cpu.py        (~10 GB of RAM, ~3 GB of disk; a few minutes)
"""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]

WAN21_13B = dict(dim=1536, ffn_dim=8960, num_layers=30)
WAN21_14B_BLOCK = dict(dim=5120, ffn_dim=13824, num_layers=1)
MFM_2B = dict(num_attention_heads=28, attention_head_dim=64, num_layers=28)   # MfM §4 / Goku 2B: 1792 wide
TEXT = 512


def evaluation_flops(tokens: int, dim: int, ffn: int, text: int, layers: int) -> float:
    """Matmul FLOPs of one Wan evaluation: projections, FFN, self-attention (4·n²·d) and cross-attention."""
    linear = 2 * tokens * (4 * dim * dim) + 2 * tokens * (2 * dim * ffn) + 2 * tokens * (2 * dim * dim) \
        + 2 * text * (2 * dim * dim)
    attention = 4 * tokens * tokens * dim + 4 * tokens * text * dim
    return layers * (linear + attention)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def unimmvsr_step(pack, workdir: str, shape: dict = WAN21_13B, frames: int = 5, width: int = 256,
                  height: int = 256) -> dict:
    """A random UniMMVSR of ``shape`` (bf16, ComfyUI's checkpoint layout) through the pack's loader, Upsampler,
    References (an ID image, a 5-frame reference video) and Guider (one window of the whole frame), then one euler
    step (3 evaluations): sizes, seconds, the FLOP model's count (also used by benchmarks/gpu_suite.py)."""
    import comfy.model_management
    import comfy.samplers
    import comfy.sd
    import torch
    from safetensors.torch import save_file

    from core.unimmvsr.checkpoint import init_from_t2v
    from harness.tiny_models import build_wan, build_wan_vae
    t0 = time.perf_counter()
    sd, meta = init_from_t2v({k: v.to(torch.bfloat16) for k, v in build_wan(**shape).state_dict().items()})
    path = os.path.join(workdir, "unimmvsr_step.safetensors")
    save_file(sd, path, metadata=meta)
    del sd
    result = {"checkpoint_gib": os.path.getsize(path) / 2 ** 30}
    model = pack("model_loaders.unimmvsr").load_unimmvsr(path, os.path.basename(path))
    vae = comfy.sd.VAE(sd=build_wan_vae().state_dict())
    result["load_seconds"] = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    low = torch.rand(frames, height // 4, width // 4, 3, generator=g)
    lr = pack("nodes.unimmvsr_upsampler").UniMMVSRUpsampler.execute(vae, width, height, 600, 0,
                                                                      lr_images=low).result[0]
    refs = pack("nodes.unimmvsr_references").UniMMVSRReferences.execute(
        vae, width, height, id_image_1=torch.rand(1, height, width, 3, generator=g),
        reference_video_1=torch.rand(5, height, width, 3, generator=g)).result[0]
    cond = [[torch.randn(1, TEXT, 4096, generator=g), {}]]
    guider = pack("nodes.unimmvsr_guider").UniMMVSRGuiderNode.execute(
        model, cond, cond, lr, 3.0, 1.0, 0.3, width, height, 64, 0, 4, refs).result[0]
    latent_frames = (frames - 1) // 4 + 1
    noise = torch.randn(1, 16, latent_frames, height // 8, width // 8, generator=g)
    device = comfy.model_management.get_torch_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), torch.tensor([1.0, 0.0]),
                  seed=0)
    result["seconds"] = time.perf_counter() - start
    if device.type == "cuda":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    per_frame = (height // 16) * (width // 16)
    target, with_refs = latent_frames * per_frame, (latent_frames + 1 + 2) * per_frame
    dim, ffn, layers = shape["dim"], shape["ffn_dim"], shape["num_layers"]
    result.update(latent=list(noise.shape), target_tokens=target, tokens_with_references=with_refs,
                  flops=2 * evaluation_flops(target, dim, ffn, TEXT, layers)
                  + evaluation_flops(with_refs, dim, ffn, TEXT, layers))
    comfy.model_management.unload_all_models()
    os.remove(path)
    return result


def unimmvsr_13b(pack, workdir: str, bf16_rate: float) -> None:
    frames, width, height = 5, 256, 256
    r = unimmvsr_step(pack, workdir, WAN21_13B, frames, width, height)
    predicted = r["flops"] / (bf16_rate * 1e12)
    print(f"1. UniMMVSR, Wan 2.1 1.3B architecture: checkpoint {r['checkpoint_gib']:.2f} GiB (bf16), built and loaded "
          f"in {r['load_seconds']:.0f} s")
    print(f"   one step, {frames} frames {width}×{height} ({r['target_tokens']} target tokens; "
          f"{r['tokens_with_references']} with the ID image and the reference video), 3 evaluations: "
          f"{r['seconds']:.1f} s; FLOP model {r['flops'] / 1e12:.2f} TFLOP at the measured {bf16_rate:.2f} TFLOP/s → "
          f"{predicted:.1f} s (measured/predicted {r['seconds'] / predicted:.2f}); peak RSS {peak_rss_gib():.1f} GiB")


def mfm_step(pack, workdir: str, shape: dict = MFM_2B, latent: tuple | None = None) -> dict:
    """A random MfM pipeline folder of ``shape`` (bf16 transformer) through the pack's MfM loader, then one CFG step
    (2 evaluations) on ComfyUI's sampler: parameters, tokens, seconds, the blocks' FLOPs (also used by
    benchmarks/gpu_suite.py)."""
    import comfy.model_management
    import comfy.sample
    import folder_paths
    import torch

    from harness.tiny_mfm import CONFIG, transformer_weights, write_pipeline
    from mfm_step import LATENT, TEXT as MFM_TEXT, mfm_step_flops
    latent = latent or LATENT
    config = {**CONFIG, **shape}
    weights = {k: v.to(torch.bfloat16) for k, v in transformer_weights(config).items()}
    params = sum(v.numel() for v in weights.values())
    name = f"MfM-random-{shape['num_layers']}x{shape['num_attention_heads']}"
    write_pipeline(os.path.join(workdir, "mfm", name), config, weights=weights)
    del weights
    folder_paths.add_model_folder_path("mfm", os.path.join(workdir, "mfm"))
    model = pack("model_loaders.mfm_pipeline").load_pipeline_model(name)
    device = comfy.model_management.get_torch_device()
    g = torch.Generator().manual_seed(2)
    context = torch.randn(1, MFM_TEXT, 4096, generator=g)
    noise = torch.randn(latent, generator=g)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    comfy.sample.sample(model, noise, 1, 5.0, "euler", "simple", [[context, {}]], [[torch.zeros_like(context), {}]],
                        torch.zeros(latent), seed=0, disable_pbar=True)
    seconds = time.perf_counter() - start
    _, _, t, h, w = latent
    tokens = t * (h // 2) * (w // 2)
    width = shape["num_attention_heads"] * shape["attention_head_dim"]
    result = {"parameters": params, "blocks": shape["num_layers"], "heads": shape["num_attention_heads"],
              "head_dim": shape["attention_head_dim"], "latent": list(latent), "tokens": tokens, "seconds": seconds,
              "block_flops": mfm_step_flops(tokens, MFM_TEXT, width, shape["num_layers"])}
    if device.type == "cuda":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    comfy.model_management.unload_all_models()
    return result


def mfm_2b(pack, workdir: str, bf16_rate: float) -> None:
    t0 = time.perf_counter()
    r = mfm_step(pack, workdir)
    predicted = r["block_flops"] / (bf16_rate * 1e12)
    print(f"2. MfM 2B: {r['parameters'] / 1e9:.2f} B transformer parameters, {r['blocks']} blocks, {r['heads']} heads "
          f"× {r['head_dim']}; written, loaded and stepped in {time.perf_counter() - t0:.0f} s")
    print(f"   one CFG step of {r['tokens']} tokens (the condition adapter included, once): {r['seconds']:.1f} s; FLOP "
          f"model {r['block_flops'] / 1e12:.2f} TFLOP in the blocks → {predicted:.1f} s (measured/predicted "
          f"{r['seconds'] / predicted:.2f}); peak RSS {peak_rss_gib():.1f} GiB")


def attention_at_40_heads(pack) -> None:
    import comfy.model_management
    import comfy.sd
    import torch

    from harness.attention_reference import run_block, tma, tma_state
    from harness.tiny_models import build_wan
    sd = {k: v.to(torch.bfloat16) for k, v in build_wan(**WAN21_14B_BLOCK).state_dict().items()}
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16})
    dm = model.model.diffusion_model
    print(f"3. one Wan 2.1 14B block: {dm.num_heads} heads × {dm.dim // dm.num_heads}, dim {dm.dim}; bf16 weights, "
          f"{model.model.manual_cast_dtype or model.model.get_dtype()} activations")
    boosted = tma(pack, model, 1.3)                                   # TMA with α = 1.3 on the text keys
    ab = pack("samplers.attention_backends")
    fused, chosen, message = ab.apply_attention_backend(boosted, "flex")
    g = torch.Generator().manual_seed(1)
    freqs = dm.rope_encode(2, 32, 32, device=torch.device("cpu"), dtype=torch.float32)   # 2 latent frames, 512 tokens
    # inputs in the dtype ComfyUI computes in (bf16 weights run with float32 activations on a CPU without bf16
    # support: its manual cast), as apply_model would hand them to the block
    compute = model.model.manual_cast_dtype or model.model.get_dtype()
    x = torch.randn(1, 512, dm.dim, generator=g).to(compute)
    context = torch.randn(1, TEXT, dm.dim, generator=g).to(compute)
    state = tma_state(pack, 1.3)
    results = {}
    for name, patched in (("default", boosted), ("flex", fused)):
        calls = ab.Calls()
        run_block(patched, x, freqs, context, {ab.CALLS_KEY: calls, **state})              # warm-up / compile
        start = time.perf_counter()
        out = run_block(patched, x, freqs, context, {ab.CALLS_KEY: calls, **state})
        results[name] = (out, time.perf_counter() - start, calls)
    (ref, t_ref, _), (got, t_flex, calls) = results["default"], results["flex"]
    print(f"   {chosen} backend ({message or 'no message'}): fused self/cross {calls.fused_self}/{calls.fused_cross}, "
          f"default {calls.default_self}/{calls.default_cross}; max |flex − default| "
          f"{(got.float() - ref.float()).abs().max().item():.3g} (outputs of magnitude "
          f"{ref.float().abs().max().item():.3g}); {t_ref:.2f} s default, {t_flex:.2f} s flex for the block")
    comfy.model_management.unload_all_models()


def main() -> int:
    from harness.paths import pack_module, use_comfy_in_process
    use_comfy_in_process()
    import torch
    from train_full_size import cpu_bf16_tflops
    rate = cpu_bf16_tflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, measured bf16 matmul {rate:.2f} TFLOP/s")
    with tempfile.TemporaryDirectory(prefix="full_size_") as workdir:
        unimmvsr_13b(pack_module, workdir, rate)
        mfm_2b(pack_module, workdir, rate)
    attention_at_40_heads(pack_module)
    return 0


if __name__ == "__main__":
    sys.exit(main())
