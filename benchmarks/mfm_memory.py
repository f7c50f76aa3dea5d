"""MfM 8B on a 24 GB GPU at 352×640×97 (issue "MfM in ComfyUI", Memory): what is counted and what is projected.

Counted (this script runs the pack's own MfM transformer code at the real sizes on PyTorch's ``meta`` device —
shapes and dtypes without arithmetic — and follows every tensor the forward allocates, freeing it when its storage
dies):
- the parameters of an MfM config (default: the 8B Goku shape of docs/design.md §8 — 40 blocks, 48 heads × 64, T5 4096 —
  or ``--config path/to/transformer/config.json`` of a real folder), per block and in all, in bf16;
- the high-water mark of live activation tensors of one sampling evaluation at 352×640×97 (25 × 22 × 40 = 22,000
  tokens; batch 2 = CFG's conditional and unconditional branches evaluated together, as ComfyUI does), with flash
  attention's own allocations (output + log-sum-exp; no N×N matrix);
- what ComfyUI reserves for that evaluation from the model's ``memory_usage_factor``.
Projected (printed as such): how many blocks stay resident on a 24 GB card under ComfyUI's lowvram path (the rest
streamed block by block from system RAM each step), the bytes streamed per step and their time over PCIe 4.0 x16,
against the step's compute on an RTX 4090-class GPU. Nothing here ran on a GPU.

    .venv/bin/python benchmarks/mfm_memory.py [--config transformer/config.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

GOKU_8B = {"num_attention_heads": 48, "attention_head_dim": 64, "num_layers": 40, "in_channels": 16,
           "out_channels": 16, "cross_attention_dim": 4096, "patch_size": 2, "use_rope": True,
           "add_motion_score": True, "use_depth_cond": True, "activation_fn": "gelu-approximate",
           "norm_type": "ada_norm_zero", "adaln_norm_type": "legacy", "attention_bias": False,
           "condition_type": "inpaint_mask"}
FRAMES, HEIGHT, WIDTH, TEXT = 97, 352, 640, 77
GiB = 1024 ** 3
CARD = 24 * GiB
PCIE_BYTES_PER_S = 25e9           # PCIe 4.0 x16, sustained host → device
GPU_BF16_FLOPS = 165e12 * 0.5     # RTX 4090 dense bf16 peak at 50% utilisation
MEMORY_PER_LATENT_POSITION = 0.01 * 1024 * 1024   # ComfyUI's memory_required: dtype bytes × 0.01 MiB × factor


class LiveTensorBytes(TorchDispatchMode):
    """High-water mark of the bytes held by tensors that ops create (views share their base's storage).
    ``existing`` tensors (weights, inputs) are not counted, nor are views of them ops return (e.g. a Linear's
    transposed weight)."""

    def __init__(self, existing=()):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = {id(t.untyped_storage()) for t in existing}

    def _freed(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._seen:
                    self._seen.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def flash_allocations(q, k, v, bias, cross=False):
    """What flash attention allocates: its output and the fp32 log-sum-exp (no N×N logits)."""
    torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    return torch.empty_like(q)


def parameter_bytes(model, dtype_bytes=2) -> tuple[int, int]:
    blocks = model.blocks()
    per_block = sum(p.numel() for p in blocks[0].parameters()) * dtype_bytes
    total = sum(p.numel() for p in model.parameters()) * dtype_bytes
    return per_block, total


def comfy_memory_usage_factor() -> float:
    """The factor the pack's MfM model config gives ComfyUI (imported the way ComfyUI imports the pack)."""
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from harness.paths import COMFY_DIR

    sys.path.insert(0, COMFY_DIR)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    from pack_import import import_pack, pack_submodule

    import_pack("unicascade")
    return pack_submodule("unicascade", "samplers.mfm_model").MfMConfig.memory_usage_factor


def main() -> None:
    from core.mfm.transformer import MfMTransformer3D

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", help="a pipeline's transformer/config.json (default: the 8B Goku shape)")
    args = parser.parse_args()
    config = dict(GOKU_8B)
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    dtype = torch.bfloat16
    full = MfMTransformer3D(**config, device="meta", dtype=dtype)
    block_bytes, weight_bytes = parameter_bytes(full)
    layers = len(full.blocks())
    dim = full.dim

    # one evaluation at the real size: two blocks suffice (every block allocates the same; the peak is per block)
    probe = MfMTransformer3D(**{**config, "num_layers": 2, "num_block_chunks": 1}, device="meta", dtype=dtype)
    batch, t, h, w = 2, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8
    tokens = t * (h // 2) * (w // 2)
    x = torch.empty(batch, 16, t, h, w, device="meta", dtype=dtype)
    context = torch.empty(batch, TEXT, probe.config.text_dim, device="meta", dtype=dtype)
    mask = torch.ones(batch, TEXT, device="meta")
    condition = torch.empty(batch, probe.condition_channels, FRAMES, HEIGHT, WIDTH, device="meta", dtype=dtype)
    inputs = sum(a.numel() * a.element_size() for a in (x, context, condition))
    existing = [*probe.parameters(), x, context, mask, condition]
    with torch.no_grad():
        with LiveTensorBytes(existing) as adapter_count:
            adapted = probe.adapt(condition)
        with LiveTensorBytes(existing + [adapted]) as step_count:
            probe(x, torch.full((batch,), 500.0, device="meta"), context, attention_mask=mask,
                  motion_score=torch.full((batch,), 5.0, device="meta"), attention=flash_allocations,
                  adapter_output=adapted)
    cached = adapted.numel() * adapted.element_size()
    activation = step_count.peak + cached + inputs
    latent_positions = batch * t * h * w
    factor_needed = activation / (latent_positions * 2 * MEMORY_PER_LATENT_POSITION)

    factor = comfy_memory_usage_factor()
    reserved = latent_positions * 2 * MEMORY_PER_LATENT_POSITION * factor
    print(f"config: {layers} blocks, width {dim} ({config['num_attention_heads']} heads × "
          f"{config['attention_head_dim']}), bf16")
    print(f"counted  weights: {weight_bytes / GiB:.2f} GiB in all, {block_bytes / 2**20:.0f} MiB per block")
    print(f"counted  one evaluation at {WIDTH}×{HEIGHT}×{FRAMES}, batch {batch} (CFG), {tokens:,} tokens per sample:")
    print(f"           adapter on the full-resolution condition (once per condition, then cached): "
          f"{adapter_count.peak / GiB:.2f} GiB peak, {cached / GiB:.2f} GiB kept")
    print(f"           blocks' activation high-water {step_count.peak / GiB:.2f} GiB + inputs {inputs / GiB:.2f} GiB "
          f"+ cached adapter output = {activation / GiB:.2f} GiB")
    print(f"           ComfyUI reserves {reserved / GiB:.2f} GiB for it (memory_usage_factor {factor}; "
          f"{factor_needed:.2f} would match the count)")
    budget = CARD - reserved - 0.8 * GiB - 400 * 2**20        # minimum_inference_memory, extra reserved VRAM
    resident_blocks = max(0, min(layers, int((budget - (weight_bytes - layers * block_bytes)) // block_bytes)))
    streamed = (layers - resident_blocks) * block_bytes
    text_dim = probe.config.text_dim
    per_token = 12 * dim * dim              # q, k, v, o of self-attention; q, o of cross-attention; the 4× MLP
    flops = batch * layers * (2 * tokens * per_token + 4 * tokens * tokens * dim + 4 * tokens * TEXT * dim
                              + 2 * TEXT * text_dim * dim * 2)           # + cross-attention's k, v of the text
    print("projected on a 24 GiB GPU (ComfyUI lowvram, not measured):")
    print(f"           {resident_blocks} of {layers} blocks resident, {layers - resident_blocks} streamed: "
          f"{streamed / GiB:.2f} GiB per step over PCIe 4.0 x16 ≈ {streamed / PCIE_BYTES_PER_S:.2f} s")
    print(f"           compute per step ≈ {flops / 1e12:.0f} TFLOP ≈ {flops / GPU_BF16_FLOPS:.1f} s on an RTX "
          f"4090-class GPU at 50% of its bf16 peak: streaming "
          f"{'hides behind' if streamed / PCIE_BYTES_PER_S < flops / GPU_BF16_FLOPS else 'exceeds'} compute")
    print(f"           without offload the weights alone ({weight_bytes / GiB:.1f} GiB) + the evaluation "
          f"({activation / GiB:.1f} GiB) {'fit' if weight_bytes + activation < CARD - 1.2 * GiB else 'do not fit'} "
          f"in 24 GiB")


if __name__ == "__main__":
    main()
