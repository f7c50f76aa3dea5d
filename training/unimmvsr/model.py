"""The model being trained: ComfyUI's own Wan backbone with the UniMMVSR parts, made exactly as the UniMMVSR
Loader node makes it (model_loaders/unimmvsr.build_unimmvsr), and its forward is core.unimmvsr.forward — the
function the sampler runs (docs/design.md §6: training starts from a pretrained T2V model).

- The parent: a Wan T2V diffusion model (any variant ComfyUI loads: 2.1 1.3B/14B, 2.2 TI2V 5B); new weights start
  at zero (core.unimmvsr.checkpoint.init_from_t2v), so step 0 predicts what the parent predicts. A UniMMVSR
  checkpoint as parent continues from it.
- Full fine-tune, or LoRA (peft) on the blocks' linear layers with the new input channels and the augmentation
  embedding trained in full; LoRA is merged on export.
- Gradient checkpointing wraps each Wan block, so it covers the reference path too.
- Export writes the documented checkpoint format (full, or delta over the parent) that the loader reads unchanged.
"""
from __future__ import annotations

import contextlib

import os

import torch

from ...core.unimmvsr import checkpoint
from ...core.unimmvsr.forward import unimmvsr_forward
from ...samplers.unimmvsr_model import AUG_MODULE

LORA_TARGETS = r".*blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)|.*blocks\.\d+\.ffn\.(0|2)"
FULL_TRAINABLE_PREFIXES = ("patch_embedding.", AUG_MODULE + ".")  # trained in full also under LoRA


def read_parent(path: str, cfg_model) -> tuple[dict, dict, str]:
    """(state dict, metadata, parent file name) of the starting point; raises ValueError naming the file."""
    import comfy.utils

    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"parent {path}: no such file")
    try:
        sd, meta = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except Exception as e:
        raise ValueError(f"parent {name}: cannot read this safetensors file ({type(e).__name__}: {e})") from e
    meta = meta or {}
    if meta.get("unimmvsr_format"):
        if meta.get("unimmvsr_kind") == "delta":
            raise ValueError(f"parent {name} is a delta checkpoint: give the full checkpoint (or its Wan parent)")
        return sd, meta, meta.get("unimmvsr_base", name)
    try:
        sd, meta = checkpoint.init_from_t2v({k: v.float() for k, v in sd.items()}, id_start=cfg_model.id_start,
                                            video_start=cfg_model.video_start, shift=cfg_model.shift)
    except checkpoint.NotUniMMVSRError as e:
        raise ValueError(f"parent {name}: {e}") from None
    return sd, meta, name


def load_for_training(path: str, cfg_model, device: torch.device):
    """A ComfyUI ModelPatcher (float32, on ``device``) of the upscaler, plus its metadata and the parent's name."""
    from ...model_loaders.unimmvsr import build_unimmvsr

    sd, meta, parent_name = read_parent(path, cfg_model)
    patcher = build_unimmvsr(sd, meta, os.path.basename(path), {"dtype": torch.float32})
    # every weight trainable (LoRA freezes what it does not train): newer ComfyUI hosts load weights as
    # Parameters with requires_grad=False, which would silently leave a full fine-tune's blocks untrained
    patcher.model.diffusion_model.requires_grad_(True)
    patcher.model.to(device)
    return patcher, meta, parent_name


def enable_gradient_checkpointing(wan: torch.nn.Module) -> None:
    """Every Wan block recomputes its activations in backward (torch.utils.checkpoint, non-reentrant) whenever
    gradients are on. Set on each block module itself — Wan's "dit" block-replacement hook binds its loop
    variable late, so a recomputation through it would run the last block."""
    import torch.utils.checkpoint

    for block in wan.blocks:
        if "forward" in block.__dict__:
            continue
        original = type(block).forward

        def differentiable(*args, _original=original, **kwargs):   # re-run in backward, after forward returned
            with host_autograd_ops():
                return _original(*args, **kwargs)

        def forward(*args, _block=block, _original=original, _recompute=differentiable, **kwargs):
            if torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(_recompute, _block, *args, use_reentrant=False, **kwargs)
            return _original(_block, *args, **kwargs)

        block.forward = forward


def compile_blocks(wan: torch.nn.Module, device: torch.device) -> None:
    """``[training] compile``: torch.compile (inductor) each Wan block in place (the trainer does it before wrapping
    the module in DDP/FSDP). Parameter names, the state dict and the export are unchanged, and gradient
    checkpointing (set on the block) is compiled with it. Shapes are marked dynamic after their first change (the
    tasks' token counts differ), so a run compiles a few times in its first steps. Inductor builds C++ kernels on
    the CPU: refused with the reason when no compiler is found."""
    import shutil

    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise ValueError("[training] compile = true needs a C++ compiler on the CPU (inductor builds its kernels "
                         "with it): install g++ or clang++, or set compile = false")
    for block in wan.blocks:
        block.compile()


class TrainModule(torch.nn.Module):
    """The trainable upscaler around ComfyUI's WanModel (its augmentation embedding is a sub-module of it)."""

    def __init__(self, wan: torch.nn.Module, gradient_checkpointing: bool = False):
        super().__init__()
        self.wan = wan
        if gradient_checkpointing:
            enable_gradient_checkpointing(wan)

    def forward(self, x, timestep, context, aug_t, references=None):
        with host_autograd_ops(torch.is_grad_enabled()):
            return unimmvsr_forward(self.wan, getattr(self.wan, AUG_MODULE), x, timestep, context, aug_t=aug_t,
                                    references=references, transformer_options={})


@contextlib.contextmanager
def host_autograd_ops(needed: bool = True):
    """While gradients flow: the host's differentiable code paths. ComfyUI ≥ 0.3x routes Wan's RoPE (and fused
    linear activations) through comfy-kitchen custom ops that have no backward, unless its
    ``model_management.in_training`` flag is set — what its own trainer sets. Feature-detected: a host without the
    flag (0.3.75) has only the plain PyTorch path."""
    import comfy.model_management as mm

    if not needed or not hasattr(mm, "in_training") or mm.in_training:
        yield
        return
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = False


def add_lora(wan: torch.nn.Module, rank: int, alpha: float) -> None:
    """peft LoRA adapters on the blocks' attention and FFN linears; everything else frozen except the LR input
    channels' patch embedding and the augmentation embedding."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS, lora_dropout=0.0,
                                       init_lora_weights=True), wan)
    for name, p in wan.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith(FULL_TRAINABLE_PREFIXES))


def merged_state_dict(sd: dict[str, torch.Tensor], lora_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The backbone's weights (a WanModel state dict, possibly with peft LoRA keys) in checkpoint layout: LoRA
    merged (W + scale·B·A), the augmentation embedding under its checkpoint prefix, float32 on the CPU."""
    out, lora = {}, {}
    for key, value in sd.items():
        value = (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().float().cpu()
        if ".lora_A." in key or ".lora_B." in key:
            layer, _, rest = key.partition(".lora_")
            lora.setdefault(layer, {})[rest[0]] = value
            continue
        key = key.replace(".base_layer.", ".")
        if key.startswith(AUG_MODULE + "."):
            key = checkpoint.AUG_PREFIX + key[len(AUG_MODULE) + 1:]
        out[key] = value
    for layer, ab in lora.items():
        out[layer + ".weight"] = out[layer + ".weight"] + lora_scale * (ab["B"] @ ab["A"])
    return {k: v.contiguous() for k, v in out.items()}


def training_state_dict(module, ema: dict | None, sharded: bool) -> dict[str, torch.Tensor]:
    """The backbone's current weights (EMA values where EMA is on). Under FSDP every rank must call: each tensor is
    gathered alone (``full_tensor()``, one all-gather), moved to rank 0's CPU and dropped on the other ranks, so no
    rank holds more than one whole tensor on its device and only rank 0 gets the dict (the others get {})."""
    main = not sharded or torch.distributed.get_rank() == 0
    out = {}
    for key, value in module.state_dict().items():  # FSDP2: sharded DTensors, nothing gathered yet
        if not key.startswith("wan."):
            continue
        if ema is not None and key in ema:
            value = ema[key]
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()  # a collective: every rank takes part, only rank 0 keeps the result
            if not main:
                continue
            value = value.detach().cpu()
        if main:
            out[key[len("wan."):]] = value
    return out


def export(wan_sd: dict, meta: dict, path: str, *, kind: str = "full", parent_path: str = "", lora_scale: float = 1.0,
           extra_meta: dict | None = None, dtype=torch.float16) -> str:
    """Write the documented checkpoint (docs/design.md §5) at ``path`` from a backbone state dict."""
    from safetensors.torch import save_file

    sd = {k: v.to(dtype) for k, v in merged_state_dict(wan_sd, lora_scale).items()}
    meta = {k: str(v) for k, v in {**meta, **(extra_meta or {})}.items()}
    meta["unimmvsr_kind"] = "full"
    meta.pop("unimmvsr_base", None)
    if kind == "delta":
        import comfy.utils
        base = {k: v.to(dtype) for k, v in comfy.utils.load_torch_file(parent_path, safe_load=True).items()}
        sd, meta = checkpoint.to_delta(sd, meta, base, os.path.basename(parent_path))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)
    return path
