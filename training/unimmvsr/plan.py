"""Memory and throughput plan of a UniMMVSR training run from its config alone (``train_unimmvsr.py --plan``).

No weight is read. The architecture comes from the parent's safetensors header (names and shapes) or a named
preset; parameters are counted on the trainer's own model built on the ``meta`` device (ComfyUI's WanModel with
the 2·C-channel patch embedding, the augmentation embedding and the trainer's LoRA); activations are MEASURED: one
training forward + loss of the largest stage runs on fake tensors (PyTorch's FakeTensorMode: meta storage that
reports the ``cpu`` device, so bf16 autocast casts as in a real run) under ``torch.autograd.graph.saved_tensors_hooks``
and the saved tensors are summed once per storage, with and without gradient checkpointing. Throughput is a FLOP
model at an assumed sustained rate.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from dataclasses import asdict, dataclass

import torch

GiB = 1024 ** 3
TEXT_TOKENS = 512           # Wan's UMT5 output length (ComfyUI pads prompts to 512) when [data] text_tokens is 0
PATCH = (1, 2, 2)           # Wan's patch (t, h, w)


@dataclass(frozen=True)
class Architecture:
    name: str
    dim: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    channels: int                # the T2V latent channels C (the upscaler's patch embedding takes 2·C)
    text_dim: int = 4096
    freq_dim: int = 256
    file_bytes: int = 0          # the parent's tensor bytes (header); 0 for a preset


# Wan 2.1 T2V 1.3B / 14B and Wan 2.2 TI2V 5B (the released configs; ComfyUI derives heads = dim // 128)
PRESETS = {
    "wan2.1-1.3b": Architecture("wan2.1-1.3b", 1536, 8960, 30, 12, 16),
    "wan2.2-5b": Architecture("wan2.2-5b", 3072, 14336, 30, 24, 48),
    "wan2.1-14b": Architecture("wan2.1-14b", 5120, 13824, 40, 40, 16),
}


def read_header(path: str) -> tuple[dict, dict]:
    """(tensor name → {dtype, shape, data_offsets}, metadata) from a safetensors file's JSON header only (the
    format: an 8-byte little-endian length, then that much JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v for k, v in header.items() if k != "__metadata__"}, header.get("__metadata__") or {}


def architecture_from_header(path: str) -> Architecture:
    """Wan dimensions from the parent's header, as ComfyUI's model detection reads them (heads = dim // 128); a
    UniMMVSR checkpoint as parent already has 2·C input channels."""
    if not os.path.isfile(path):
        raise ValueError(f"parent {path}: no such file (or plan for a preset: --plan-model "
                         f"{' | '.join(PRESETS)})")
    try:
        tensors, meta = read_header(path)
    except (OSError, ValueError, struct.error) as e:
        raise ValueError(f"parent {path}: not a safetensors file ({e})") from None
    heads = [k for k in tensors if k.endswith("head.modulation")]
    if not heads:
        raise ValueError(f"parent {path}: not a Wan diffusion model (no head.modulation)")
    prefix = heads[0][: -len("head.modulation")]

    def shape(name):
        return tensors[prefix + name]["shape"]

    dim = shape("head.modulation")[-1]
    channels = shape("patch_embedding.weight")[1]
    if meta.get("unimmvsr_format"):
        channels //= 2
    layers = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    size = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in tensors.values())
    return Architecture(os.path.basename(path), dim, shape("blocks.0.ffn.0.weight")[0], len(layers), dim // 128,
                        channels, shape("text_embedding.0.weight")[1], shape("time_embedding.0.weight")[1], size)


# -- sizes ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    stage: str
    frames: int
    width: int
    height: int
    vae: str                     # how pixels become latents
    latent: tuple                # target latent (t, h, w)
    id_frames: tuple             # latent frames of each ID image (MI2V)
    video_frames: tuple          # latent frames of each reference video (editing)
    tokens_per_frame: int
    tokens: int                  # per sample: target + reference tokens
    text_tokens: int


def planned_vae_factors(vae: str, channels: int) -> tuple[int, int, str]:
    """(time, space) compression of the config's VAE: space-to-depth:F keeps time and folds F×F pixels; the Wan 2.1
    VAE (16 channels) is 4× time, 8× space; the Wan 2.2 VAE (48 channels) 4× time, 16× space."""
    if vae.startswith("space_to_depth"):
        f = int(vae.partition(":")[2] or 4)
        return 1, f, f"space-to-depth {f}× (no time compression)"
    if channels == 48:
        return 4, 16, "Wan 2.2 VAE: 4× time, 16× space"
    return 4, 8, "Wan 2.1 VAE: 4× time, 8× space"


def stage_shape(cfg, stage, arch: Architecture) -> Shape:
    """Tokens of one sample of ``stage``: the target window, plus its references — ``max_id_images`` one-frame ID
    images for MI2V, and for editing a reference video of the target's length (the trainer takes it as long as the
    window when the clip allows) — the larger of the two when both tasks are in the mix (a sample has one task)."""
    ft, fs, label = planned_vae_factors(cfg.model.vae, arch.channels)
    t = 1 + (stage.frames - 1) // ft
    h, w = math.ceil(stage.height / fs), math.ceil(stage.width / fs)
    per_frame = math.ceil(h / PATCH[1]) * math.ceil(w / PATCH[2])
    ids = (1,) * cfg.data.max_id_images if "mi2v" in stage.tasks else ()
    videos = (t,) if "editing" in stage.tasks else ()
    if ids and videos:  # the larger reference set decides the worst sample
        ids, videos = (ids, ()) if sum(ids) > t else ((), videos)
    tokens = (t + sum(ids) + sum(videos)) * per_frame
    return Shape(stage.name, stage.frames, stage.width, stage.height, label, (t, h, w), ids, videos, per_frame,
                 tokens, cfg.data.text_tokens or TEXT_TOKENS)


def largest_shape(cfg, arch: Architecture) -> Shape:
    shapes = [stage_shape(cfg, s, arch) for s in cfg.stages]
    return max(shapes, key=lambda s: s.tokens)


# -- the model on meta ------------------------------------------------------------------------------------------
def build_model(arch: Architecture, lora_rank: int = 0, lora_alpha: float = 0.0, device="meta"):
    """The trained module's backbone as the trainer has it (float32, ComfyUI's ops, LR channels, augmentation
    embedding, LoRA), with no storage."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    from ...core.unimmvsr.aug_embedding import AugmentationEmbedding
    from ...samplers.unimmvsr_model import AUG_MODULE
    from .model import add_lora

    wan = WanModel(model_type="t2v", patch_size=PATCH, in_dim=2 * arch.channels, dim=arch.dim, ffn_dim=arch.ffn_dim,
                   freq_dim=arch.freq_dim, text_dim=arch.text_dim, out_dim=arch.channels, num_heads=arch.num_heads,
                   num_layers=arch.num_layers, operations=comfy.ops.disable_weight_init, device=device,
                   dtype=torch.float32)
    with torch.device(device):
        wan.add_module(AUG_MODULE, AugmentationEmbedding(arch.freq_dim, arch.dim))
    if lora_rank > 0:
        add_lora(wan, lora_rank, lora_alpha)
    return wan


def shard_numel(p: torch.Tensor, world: int) -> int:
    """Elements one rank holds of a parameter FSDP2 shards over ``world`` ranks (dim-0 chunks padded to equal size)."""
    if world <= 1 or p.ndim == 0:
        return p.numel()
    return math.ceil(p.shape[0] / world) * (p.numel() // p.shape[0])


@dataclass(frozen=True)
class Parameters:
    total: int
    trainable: int
    block_max: int               # largest block (FSDP all-gathers one at a time, plus the next prefetched)
    block_trainable_max: int
    root: int                    # outside the blocks (FSDP keeps the root's unsharded through forward and backward)
    lora: int                    # the LoRA adapters' parameters
    lora_targets: int            # base weights + biases of the LoRA-wrapped linears (merged into new tensors on export)
    total_shard: int             # per rank under FSDP over world ranks
    trainable_shard: int
    flops_fwd_token: int         # 2 × matmul parameters applied per video token, per text token, per sample
    flops_fwd_text: int
    flops_fwd_sample: int
    flops_bwd_token: int         # backward: trainable 4×, frozen 2× (input gradient only)
    flops_bwd_text: int
    flops_bwd_sample: int
    block_flops_fwd_token: int   # the blocks' share (recomputed under checkpointing)
    block_flops_fwd_text: int


def count_parameters(wan, world: int = 1) -> Parameters:
    from ...samplers.unimmvsr_model import AUG_MODULE

    named = dict(wan.named_parameters())
    total = sum(p.numel() for p in named.values())
    trainable = sum(p.numel() for p in named.values() if p.requires_grad)
    blocks = [sum(p.numel() for p in b.parameters()) for b in wan.blocks]
    blocks_tr = [sum(p.numel() for p in b.parameters() if p.requires_grad) for b in wan.blocks]
    lora = sum(p.numel() for n, p in named.items() if ".lora_" in n)
    lora_targets = sum(p.numel() for n, p in named.items() if ".base_layer." in n)
    fwd = {"token": 0, "text": 0, "sample": 0}
    bwd = dict(fwd)
    block_fwd = {"token": 0, "text": 0}
    for name, module in wan.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
            continue
        use = "token"
        if name.startswith("text_embedding.") or re.match(r"blocks\.\d+\.cross_attn\.(k|v)\b", name):
            use = "text"
        elif name.startswith(("time_embedding.", "time_projection.", AUG_MODULE + ".")):
            use = "sample"
        for p in module.parameters(recurse=False):
            fwd[use] += 2 * p.numel()
            bwd[use] += (4 if p.requires_grad else 2) * p.numel()
            if name.startswith("blocks.") and use != "sample":
                block_fwd[use] += 2 * p.numel()
    return Parameters(total, trainable, max(blocks), max(blocks_tr), total - sum(blocks), lora, lora_targets,
                      sum(shard_numel(p, world) for p in named.values()),
                      sum(shard_numel(p, world) for p in named.values() if p.requires_grad),
                      fwd["token"], fwd["text"], fwd["sample"], bwd["token"], bwd["text"], bwd["sample"],
                      block_fwd["token"], block_fwd["text"])


# -- activations, measured --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Activations:
    saved: int                   # saved-for-backward bytes at the end of the forward + loss (once per storage)
    autocast_cache: int          # bf16 copies of trainable float32 weights autocast keeps until its region exits
    live_end_of_forward: int     # saved ∪ autocast cache (storages counted once)
    block_max: int               # the largest block's saved bytes (no checkpointing) = its recomputation
    method: str


def _to_fake(wan, mode):
    """Swap every parameter and buffer of a meta-built module for a fake tensor on the cpu device."""
    cpu = torch.device("cpu")
    for module in wan.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                fake = mode.fake_tensor_converter.from_meta_and_device(mode, p.data, cpu)
                module._parameters[name] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = mode.fake_tensor_converter.from_meta_and_device(mode, b, cpu)


def measure_activations(arch: Architecture, shape: Shape, batch: int, *, lora_rank: int, lora_alpha: float,
                        checkpointing: bool, autocast: bool, attention: str, id_start: int = 20,
                        video_start: int = 30) -> Activations:
    """One training forward + loss (TrainModule, as flow_matching_losses calls it) of ``batch`` samples of
    ``shape`` on fake tensors. ``attention``: "sdpa" (what ComfyUI runs on NVIDIA: flash attention, which saves q,
    k, v, the output and the log-sum-exp) or "comfy" (ComfyUI's choice on this host: sub-quadratic on the CPU)."""
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ldm.wan.model as wan_module
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from ...core.unimmvsr.forward import ReferenceTokens
    from ...core.unimmvsr.reference_layout import layout
    from .model import TrainModule

    wan = build_model(arch, lora_rank, lora_alpha)
    mode = FakeTensorMode()
    _to_fake(wan, mode)
    module = TrainModule(wan, checkpointing).train()
    params = {p.untyped_storage()._cdata for p in wan.parameters()}
    trainable = {id(p) for p in wan.parameters() if p.requires_grad}
    saved: dict[int, int] = {}
    casts: dict[int, torch.Tensor] = {}
    per_block: list[int] = []

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved.setdefault(storage._cdata, storage.nbytes())
        return t

    class AutocastCasts(TorchDispatchMode):  # the copies autocast makes of trainable weights (and caches)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and id(args[0]) in trainable:
                casts[out.untyped_storage()._cdata] = out
            return out

    for block in wan.blocks:
        block.register_forward_pre_hook(lambda m, a: per_block.append(-sum(saved.values())))
        block.register_forward_hook(lambda m, a, o: per_block.__setitem__(-1, per_block[-1] + sum(saved.values())))

    previous = wan_module.optimized_attention
    if attention == "sdpa":
        wan_module.optimized_attention = comfy_attention.attention_pytorch
    try:
        with mode:
            t, h, w = shape.latent
            c = arch.channels
            x = torch.empty(batch, 2 * c, t, h, w)
            context = torch.empty(batch, shape.text_tokens, arch.text_dim)
            refs = None
            if shape.id_frames or shape.video_frames:
                lay = layout(t, list(shape.id_frames), list(shape.video_frames), id_start, video_start)
                refs = ReferenceTokens(torch.empty(batch, c, lay.reference_frames, h, w), lay)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), AutocastCasts():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    pred = module(x, torch.full((batch,), 500.0), context, torch.full((batch,), 400.0), refs)
                target = torch.empty(batch, c, t, h, w)
                loss = (pred.float() - target).pow(2).flatten(1).mean(1).sum()
            del loss
    finally:
        wan_module.optimized_attention = previous
    union = sum(saved.values()) + sum(v.untyped_storage().nbytes() for k, v in casts.items() if k not in saved)
    return Activations(sum(saved.values()), sum(v.untyped_storage().nbytes() for v in casts.values()), union,
                       max(per_block) if per_block and not checkpointing else 0,
                       f"measured (fake tensors, {'flash SDPA' if attention == 'sdpa' else 'ComfyUI attention'})")


FORMULA_DIM, FORMULA_FFN = 36, 2   # saved 2-byte words per token in one Wan block (bf16 autocast), fitted to this
                                   # module's measured plans of Wan 2.1 1.3B and 14B (Wan 2.2 5B: within 4%)


def formula_activations(arch: Architecture, shape: Shape, batch: int, checkpointing: bool, trainable: int,
                        autocast: bool) -> Activations:
    """Fallback when the fake-tensor forward fails. Per token, a Wan block under bf16 autocast saves about
    2 bytes × (36·dim + 2·ffn): the FFN's hidden state before and after GELU, and dim-wide tensors in both float32
    (the residual stream, norms and RoPE run in float32) and bf16 (the matmul inputs, flash attention's q, k, v,
    output); twice that without autocast. With checkpointing a block keeps only its float32 input (4 bytes × dim)."""
    word = 2 if autocast else 4
    n = batch * shape.tokens
    block = word * n * (FORMULA_DIM * arch.dim + FORMULA_FFN * arch.ffn_dim)
    cache = 2 * trainable if autocast else 0
    saved = arch.num_layers * (4 * n * arch.dim if checkpointing else block)
    return Activations(saved, cache, saved + (cache if checkpointing else 0), block,
                       "formula (the fake forward failed)")


# -- the plan ---------------------------------------------------------------------------------------------------
def train_flops(p: Parameters, arch: Architecture, shape: Shape, checkpointing: bool) -> float:
    """FLOPs of one sample's training step: 2 per multiply-add; matmul weights forward 2·N per token, backward
    2·N (input gradient) + 2·N (weight gradient, trainable only) — 6·N full fine-tune, 4·N for a frozen LoRA base;
    attention 4·L·d·n² forward (QKᵀ and AV), 12·L·d·n² with backward; checkpointing adds one forward of the
    blocks."""
    n, lt, d, layers = shape.tokens, shape.text_tokens, arch.dim, arch.num_layers
    attention = layers * (4 * n * n * d + 4 * n * lt * d)
    total = (p.flops_fwd_token + p.flops_bwd_token) * n + (p.flops_fwd_text + p.flops_bwd_text) * lt + \
        p.flops_fwd_sample + p.flops_bwd_sample + 3 * attention
    if checkpointing:
        total += p.block_flops_fwd_token * n + p.block_flops_fwd_text * lt + attention
    return float(total)


def memory(p: Parameters, act: Activations, *, sharding: str, world: int, ema: bool, target: str,
           checkpointing: bool) -> dict:
    """Bytes per GPU (target gpu) or of the training process (target cpu) by component."""
    sharded = sharding == "fsdp" and world > 1
    params, trainable = (p.total_shard, p.trainable_shard) if sharded else (p.total, p.trainable)
    m = {"weights": 4 * params,                      # float32: the trainer loads the parent as float32
         "gradients": 4 * trainable,
         # DDP's default gradient_as_bucket_view=False keeps its all-reduce buckets beside .grad
         "ddp_buckets": 4 * p.trainable if sharding == "ddp" and world > 1 else 0,
         "optimizer": 8 * trainable,                 # AdamW exp_avg + exp_avg_sq, float32
         "ema": 4 * trainable if ema else 0,
         # FSDP2 all-gathers one block at a time and prefetches the next; the root's stay unsharded from forward to
         # backward; a block's unsharded gradients wait for their reduce-scatter
         "fsdp_working_set": 4 * (p.root + 2 * p.block_max + p.block_trainable_max) if sharded else 0}
    m["activations"] = max(act.live_end_of_forward, act.saved + act.block_max) if checkpointing \
        else act.live_end_of_forward
    # AdamW's step runs after backward: foreach (CUDA's default) keeps one float32 temporary per trainable
    # parameter; the CPU's per-parameter loop only the largest one's (negligible)
    m["optimizer_step_temp"] = 4 * trainable if target == "gpu" else 0
    m["train_peak"] = sum(v for k, v in m.items() if k not in ("activations", "optimizer_step_temp")) + \
        max(m["activations"], m["optimizer_step_temp"])
    return m


def host_phases(p: Parameters, arch: Architecture, ema: bool) -> dict:
    """Host bytes outside the training loop (model.read_parent, load_for_training, model.export). Loading: the
    parent's file pages and their float32 conversion, then that state dict and the float32 model it is copied into
    (LoRA comes after). Export: the model, AdamW and EMA state, the LoRA-merged weights as new tensors and the float16
    copy that is written."""
    parent = p.total - p.lora
    file_bytes = arch.file_bytes or 2 * parent           # a preset's release file: 16-bit
    converted = 4 * parent if file_bytes < 4 * parent else 0
    load = max(file_bytes + converted, 8 * parent)
    export = 4 * p.total + 8 * p.trainable + (4 * p.trainable if ema else 0) + 4 * p.lora_targets + 2 * parent
    return {"load": load, "export": export}


def both_activations(arch, shape, batch, cfg, target, trainable) -> tuple[Activations, Activations]:
    """(with, without checkpointing); the largest block's recomputation comes from the run without."""
    tr = cfg.training
    kwargs = dict(lora_rank=tr.lora_rank, lora_alpha=tr.lora_alpha, autocast=tr.mixed_precision == "bf16",
                  attention="sdpa" if target == "gpu" else "comfy", id_start=cfg.model.id_start,
                  video_start=cfg.model.video_start)
    try:
        off = measure_activations(arch, shape, batch, checkpointing=False, **kwargs)
        on = measure_activations(arch, shape, batch, checkpointing=True, **kwargs)
        return dataclasses.replace(on, block_max=off.block_max), off
    except Exception as e:  # an op without a fake (meta) kernel
        reason = f" — {type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else f" — {type(e).__name__}"
        on, off = (formula_activations(arch, shape, batch, c, trainable, kwargs["autocast"]) for c in (True, False))
        return tuple(dataclasses.replace(a, method=a.method + reason) for a in (on, off))


def make_plan(cfg, arch: Architecture, *, world: int = 1, target: str = "gpu", tflops: float = 400.0,
              gpu_gb: float = 80.0) -> dict:
    tr = cfg.training
    shape = largest_shape(cfg, arch)
    batch = 1 if tr.sharding == "fsdp" and world > 1 else tr.micro_batch   # FSDP: one forward per sample
    params = count_parameters(build_model(arch, tr.lora_rank, tr.lora_alpha), world)
    result = {"config": cfg.source, "architecture": asdict(arch), "shape": asdict(shape), "world_size": world,
              "sharding": tr.sharding, "target": target, "batch_per_forward": batch, "lora_rank": tr.lora_rank,
              "mixed_precision": tr.mixed_precision, "tflops": tflops, "gpu_gb": gpu_gb,
              "configured_checkpointing": tr.gradient_checkpointing, "parameters": asdict(params), "scenarios": {}}
    acts = both_activations(arch, shape, batch, cfg, target, params.trainable)
    for flag, act in zip((True, False), acts):
        mem = memory(params, act, sharding=tr.sharding, world=world, ema=tr.ema_decay > 0, target=target,
                     checkpointing=flag)
        flops = train_flops(params, arch, shape, flag)
        seconds = batch * flops / (tflops * 1e12)
        result["scenarios"]["on" if flag else "off"] = {
            "activations": asdict(act), "memory": mem, "flops_per_sample": flops, "seconds_per_forward": seconds,
            "tokens_per_s": batch * shape.tokens / seconds,
            "seconds_per_step": tr.batch_size / world * flops / (tflops * 1e12)}
    configured = result["scenarios"]["on" if tr.gradient_checkpointing else "off"]["memory"]["train_peak"]
    result["total"] = configured
    if target == "cpu":
        result["host"] = host_phases(params, arch, tr.ema_decay > 0)
        result["host"]["train"] = configured
        result["host"]["peak"] = max(result["host"].values())
    return json.loads(json.dumps(result))   # the same values as the --plan-json file (tuples as lists)


def _alternatives(cfg, arch: Architecture, plan: dict) -> list[str]:
    """Single changes, each with the per-GPU total it gives."""
    tr, card, world = cfg.training, plan["gpu_gb"] * GiB, plan["world_size"]
    on = plan["scenarios"]["on"]
    act_on = Activations(**on["activations"])
    out = []
    if not tr.gradient_checkpointing:
        out.append(f"gradient_checkpointing = true → {on['memory']['train_peak'] / GiB:.1f} GiB")
    if tr.sharding == "ddp":
        ranks, b = max(world, 8), plan["batch_per_forward"]   # FSDP runs one sample per forward
        one = dataclasses.replace(act_on, saved=act_on.saved // b, block_max=act_on.block_max // b,
                                  live_end_of_forward=act_on.saved // b + act_on.autocast_cache)
        p = count_parameters(build_model(arch, tr.lora_rank, tr.lora_alpha), ranks)
        fsdp = memory(p, one, sharding="fsdp", world=ranks, ema=tr.ema_decay > 0, target="gpu", checkpointing=True)
        out.append(f"sharding = \"fsdp\" over {ranks} ranks, with checkpointing → {fsdp['train_peak'] / GiB:.1f} GiB")
    if tr.lora_rank == 0:
        p = count_parameters(build_model(arch, 64, 0.0), world)
        lora = memory(p, dataclasses.replace(act_on, autocast_cache=0, live_end_of_forward=act_on.saved),
                      sharding=tr.sharding, world=world, ema=tr.ema_decay > 0, target="gpu", checkpointing=True)
        out.append(f"lora_rank = 64, with checkpointing → about {lora['train_peak'] / GiB:.1f} GiB")
    per_token = on["memory"]["activations"] / max(1, plan["batch_per_forward"] * plan["shape"]["tokens"])
    room = card - (on["memory"]["train_peak"] - on["memory"]["activations"])
    if room > 0:
        out.append(f"a smaller crop: about ≤ {int(room / per_token / plan['batch_per_forward']):,} tokens per sample "
                   f"(now {plan['shape']['tokens']:,}), with checkpointing")
    else:
        out.append("a smaller crop alone cannot fit: weights and optimizer state already exceed the card")
    return out


def render(plan: dict, cfg=None, arch: Architecture | None = None) -> str:
    a, s, p = plan["architecture"], plan["shape"], plan["parameters"]
    on, off = plan["scenarios"]["on"], plan["scenarios"]["off"]
    configured = "on" if plan["configured_checkpointing"] else "off"
    gpu = plan["target"] == "gpu"
    unit = "per GPU" if gpu else "of the training process (host RAM)"
    refs = []
    if s["id_frames"]:
        refs.append(f"{len(s['id_frames'])} ID image(s) of 1 latent frame ([data] max_id_images, MI2V)")
    if s["video_frames"]:
        refs.append(f"a reference video of {s['video_frames'][0]} latent frames (editing: assumed as long as the "
                    f"target)")
    lines = [
        f"UniMMVSR training plan — {os.path.basename(plan['config'])} (nothing trained; no weights read)",
        f"model      {a['name']}: dim {a['dim']}, FFN {a['ffn_dim']}, {a['num_layers']} blocks, "
        f"{a['num_heads']} heads, {a['channels']} latent + {a['channels']} LR condition channels, text {a['text_dim']}",
        f"parameters {p['total']:,} ({'LoRA rank ' + str(plan['lora_rank']) if plan['lora_rank'] else 'full fine-tune'}"
        f": {p['trainable']:,} trainable) — counted on the meta device",
        f"stage      \"{s['stage']}\" (the largest): {s['frames']} frames {s['width']}×{s['height']} → latent "
        f"{'×'.join(map(str, s['latent']))} ({s['vae']}) → {s['tokens_per_frame']:,} tokens per latent frame",
        f"           {s['tokens']:,} tokens per sample" + (" incl. " + " / ".join(refs) if refs else "") +
        f"; {s['text_tokens']} text tokens",
        f"run        {plan['sharding']} × {plan['world_size']} rank(s), {plan['batch_per_forward']} sample(s) per "
        f"forward, {plan['mixed_precision']} autocast over float32 weights (the trainer loads the parent as float32)",
        "",
        f"{'memory ' + unit:<44}{'checkpointing on':>18}{'off':>12}",
    ]
    rows = [("weights (fp32)", "weights"), ("gradients (fp32)", "gradients"), ("DDP gradient buckets", "ddp_buckets"),
            ("AdamW state (2 × fp32)", "optimizer"), ("EMA (fp32)", "ema"),
            ("FSDP all-gathered blocks + root", "fsdp_working_set"), ("activations (see below)", "activations"),
            ("AdamW step temporaries", "optimizer_step_temp")]
    for label, key in rows:
        if on["memory"][key] or off["memory"][key]:
            lines.append(f"  {label:<42}{on['memory'][key] / GiB:>15.2f} GiB{off['memory'][key] / GiB:>8.2f} GiB")
    lines.append(f"  {'total (training peak)':<42}{on['memory']['train_peak'] / GiB:>15.2f} GiB"
                 f"{off['memory']['train_peak'] / GiB:>8.2f} GiB")
    for label, key in (("  of which saved tensors", "saved"), ("  autocast's cached bf16 weights", "autocast_cache"),
                       ("  largest block (its recomputation)", "block_max")):
        lines.append(f"  {label:<42}{on['activations'][key] / GiB:>15.2f} GiB{off['activations'][key] / GiB:>8.2f} GiB")
    lines.append(f"  activations: {on['activations']['method']}; end of forward = saved ∪ autocast cache, with "
                 f"checkpointing at least saved + one block's recomputation; backward's transient gradients not "
                 f"included")
    if "host" in plan:
        h = plan["host"]
        lines += [f"  {'loading (fp32 parent dict + fp32 model)':<42}{h['load'] / GiB:>15.2f} GiB",
                  f"  {'export (LoRA merge + float16 copy)':<42}{h['export'] / GiB:>15.2f} GiB",
                  f"  {'host peak (checkpointing ' + configured + ')':<42}{h['peak'] / GiB:>15.2f} GiB"
                  f"   + the Python/torch/ComfyUI runtime"]
    elif gpu:
        lines.append("  + the CUDA context and allocator slack (~1–3 GiB). Host RAM per rank while loading: "
                     f"{8 * (p['total'] - p['lora']) / GiB:.1f} GiB (the parent as float32 + the float32 model)")
    lines += ["", f"throughput at {plan['tflops']:g} TFLOP/s sustained"
              + (" (assumed: H100 bf16 at ~40% MFU)" if gpu and plan["tflops"] == 400 else " (assumed)"),
              f"  {'TFLOP per sample (train step)':<42}{on['flops_per_sample'] / 1e12:>18.2f}"
              f"{off['flops_per_sample'] / 1e12:>12.2f}",
              f"  {'tokens/s per ' + ('GPU' if gpu else 'process'):<42}{on['tokens_per_s']:>18,.0f}"
              f"{off['tokens_per_s']:>12,.0f}",
              f"  {'s per optimizer step (global batch)':<42}{on['seconds_per_step']:>18.2f}"
              f"{off['seconds_per_step']:>12.2f}",
              "  FLOP model: 6·N·tokens for trained weights, 4·N for frozen ones (no weight gradient), attention "
              "12·L·d·n² (+4·L·d·n·text), checkpointing +1 forward of the blocks"]
    total = plan["total"]
    if gpu and total > plan["gpu_gb"] * GiB:
        lines.append("")
        lines.append(f"WARNING: {total / GiB:.1f} GiB per GPU exceeds --plan-gpu-gb {plan['gpu_gb']:g}; change one "
                     f"of: " + ("; ".join(_alternatives(cfg, arch, plan)) if cfg is not None and arch is not None
                                else "sharding = fsdp, lora_rank, gradient_checkpointing, a smaller crop"))
    return "\n".join(lines)


def main(cfg, *, preset: str | None = None, world: int = 1, target: str = "gpu", tflops: float = 400.0,
         gpu_gb: float = 80.0, json_path: str = "", out=print) -> int:
    """``train_unimmvsr.py --plan``: print the plan (and write it as JSON); no training."""
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"--plan-model {preset}: one of {', '.join(PRESETS)}")
        arch = PRESETS[preset]
    else:
        arch = architecture_from_header(cfg.path(cfg.model.parent))
    plan = make_plan(cfg, arch, world=world, target=target, tflops=tflops, gpu_gb=gpu_gb)
    out(render(plan, cfg, arch))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=1)
    return 0
