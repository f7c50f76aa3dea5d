"""``train_unimmvsr.py --plan`` (training/unimmvsr/plan.py) against numbers worked out here by hand for a tiny Wan
parent (dim 128, FFN 256, 2 blocks — the harness's ComfyUI-layout parent): parameters from the architecture's
formula, weight / gradient / AdamW / EMA bytes for DDP, FSDP over 2 ranks and LoRA rank 4, tokens from frames and
size, and the fake-tensor activation measurement against a real CPU forward of the loaded model read with a saved-
tensor hook of our own."""
import hashlib
import json
import os
import struct
import subprocess

import pytest
import torch

from harness.paths import PYTHON, REPO
from harness.tiny_models import build_wan

SCRIPT = os.path.join(REPO, "scripts", "train_unimmvsr.py")
D, F, L, C, TEXT, FREQ = 128, 256, 2, 16, 4096, 256          # the harness's tiny Wan 2.1 T2V
TEXT_TOKENS = 24
CONFIG = """
[model]
parent = "parent.safetensors"
vae = "vae.safetensors"

[data]
manifest = "train.jsonl"
scale = 4
max_id_images = 2
text_tokens = {text_tokens}

[training]
batch_size = 4
micro_batch = 2
mixed_precision = "bf16"
gradient_checkpointing = true
ema_decay = 0.99
{training}

[[stages]]
name = "small"
steps = 1
frames = 5
width = 64
height = 64

[[stages]]
name = "big"
steps = 1
frames = 9
width = 128
height = 64
tasks = {{ t2v = 0.5, mi2v = 0.3, editing = 0.2 }}
"""


# -- by hand ------------------------------------------------------------------------------------------------------
def linear(i, o):
    return i * o + o


PATCH = D * (2 * C) * 1 * 2 * 2 + D                # Conv3d over noisy latent ‖ LR condition, patch 1×2×2
TEXT_EMB = linear(TEXT, D) + linear(D, D)
TIME_EMB = linear(FREQ, D) + linear(D, D)
TIME_PROJ = linear(D, 6 * D)
AUG = linear(FREQ, D) + linear(D, D)               # UniMMVSR's augmentation embedding
NORMS = 2 * D + 2 * D + 2 * D                      # q/k RMSNorms of both attentions + norm3 (weight and bias)
MODULATION = 6 * D
BLOCK = 8 * linear(D, D) + NORMS + linear(D, F) + linear(F, D) + MODULATION
HEAD = linear(D, 4 * C) + 2 * D                    # head.head to patch×C + head.modulation
TOTAL = PATCH + TEXT_EMB + TIME_EMB + TIME_PROJ + L * BLOCK + HEAD + AUG
RANK = 4
LORA = L * RANK * (8 * (D + D) + (D + F) + (F + D))           # A: r×in, B: out×r on q,k,v,o ×2, ffn.0, ffn.2
LORA_TRAINABLE = LORA + PATCH + AUG
ODD = L * MODULATION + 2 * D                       # FSDP2 shards dim 0: the [1, k, D] modulations stay whole


def fsdp2(n):
    """Elements per rank of ``n`` elements over 2 ranks when only the modulations cannot be split."""
    return (n - ODD) // 2 + ODD


def tokens(frames, width, height, references):
    t = 1 + (frames - 1) // 4                      # Wan 2.1 VAE: 4× time, 8× space; patch (1, 2, 2)
    return (t + references) * (height // 8 // 2) * (width // 8 // 2)


# -- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("plan")
    from harness.paths import use_comfy_in_process
    use_comfy_in_process()
    save_file({k: v.contiguous() for k, v in build_wan(seed=0).state_dict().items()}, str(root / "parent.safetensors"))
    return root


def config(pack, root, training: str = "", text_tokens: int = TEXT_TOKENS):
    path = root / f"plan_{hashlib.sha1(f'{training}{text_tokens}'.encode()).hexdigest()[:10]}.toml"
    path.write_text(CONFIG.format(training=training, text_tokens=text_tokens))
    return pack("training.unimmvsr.config").load(str(path)), str(path)


def plan_of(pack, root, training="", world=1, target="gpu"):
    plan = pack("training.unimmvsr.plan")
    cfg, _ = config(pack, root, training)
    arch = plan.architecture_from_header(cfg.path(cfg.model.parent))
    return plan.make_plan(cfg, arch, world=world, target=target), plan


# -- tests --------------------------------------------------------------------------------------------------------
def test_header_architecture_tokens_and_parameters_by_hand(pack, workspace):
    plan = pack("training.unimmvsr.plan")
    arch = plan.architecture_from_header(str(workspace / "parent.safetensors"))
    assert (arch.dim, arch.ffn_dim, arch.num_layers, arch.num_heads, arch.channels, arch.text_dim, arch.freq_dim) == \
        (D, F, L, D // 128, C, TEXT, FREQ)
    result, _ = plan_of(pack, workspace)
    shape = result["shape"]
    # the big stage's worst sample is editing: a reference video as long as the target (3 latent frames) beats
    # MI2V's 2 one-frame ID images
    assert shape["stage"] == "big" and shape["latent"] == [3, 8, 16] and shape["video_frames"] == [3]
    assert shape["tokens"] == tokens(9, 128, 64, 3) == 192 and shape["text_tokens"] == TEXT_TOKENS
    cfg, _ = config(pack, workspace)
    assert plan.stage_shape(cfg, cfg.stages[0], arch).tokens == tokens(5, 64, 64, 0) == 32
    p = result["parameters"]
    assert p["total"] == p["trainable"] == TOTAL
    assert p["root"] == TOTAL - L * BLOCK and p["block_max"] == BLOCK


@pytest.mark.parametrize("case", ["ddp1", "ddp2", "fsdp2", "lora"])
def test_weight_gradient_optimizer_ema_bytes_by_hand(pack, workspace, case):
    training, world = {"ddp1": ("", 1), "ddp2": ("", 2), "fsdp2": ('sharding = "fsdp"', 2),
                       "lora": (f"lora_rank = {RANK}", 1)}[case]
    result, _ = plan_of(pack, workspace, training, world)
    mem = result["scenarios"]["on"]["memory"]
    total, trainable = (TOTAL + LORA, LORA_TRAINABLE) if case == "lora" else (TOTAL, TOTAL)
    assert result["parameters"]["total"] == total and result["parameters"]["trainable"] == trainable
    if case == "fsdp2":
        assert result["batch_per_forward"] == 1        # FSDP: one forward per sample
        assert mem["weights"] == 4 * fsdp2(TOTAL)
        assert mem["gradients"] == 4 * fsdp2(TOTAL) and mem["optimizer"] == 8 * fsdp2(TOTAL)
        assert mem["ema"] == 4 * fsdp2(TOTAL)
        assert mem["fsdp_working_set"] == 4 * ((TOTAL - L * BLOCK) + 2 * BLOCK + BLOCK)
        assert mem["ddp_buckets"] == 0
    else:
        assert result["batch_per_forward"] == 2
        assert mem["weights"] == 4 * total
        assert mem["gradients"] == 4 * trainable and mem["optimizer"] == 8 * trainable and mem["ema"] == 4 * trainable
        assert mem["ddp_buckets"] == (4 * trainable if world == 2 else 0) and mem["fsdp_working_set"] == 0
    static = sum(mem[k] for k in ("weights", "gradients", "ddp_buckets", "optimizer", "ema", "fsdp_working_set"))
    assert mem["train_peak"] == static + max(mem["activations"], mem["optimizer_step_temp"])


def test_flops_by_hand(pack, workspace):
    result, _ = plan_of(pack, workspace)
    n, lt = 192, TEXT_TOKENS
    per_token = PATCH + L * (6 * linear(D, D) + linear(D, F) + linear(F, D)) + linear(D, 4 * C)
    per_text = TEXT_EMB + L * 2 * linear(D, D)        # text embedding and cross-attention k, v
    per_sample = TIME_EMB + TIME_PROJ + AUG
    attention = L * (4 * n * n * D + 4 * n * lt * D)
    full = 6 * (per_token * n + per_text * lt + per_sample) + 3 * attention
    recompute = 2 * (per_token - PATCH - linear(D, 4 * C)) * n + 2 * L * 2 * linear(D, D) * lt + attention
    assert result["scenarios"]["off"]["flops_per_sample"] == full
    assert result["scenarios"]["on"]["flops_per_sample"] == full + recompute
    assert result["scenarios"]["off"]["tokens_per_s"] == pytest.approx(n / (full / 400e12))
    # LoRA: the frozen base costs 4·N (no weight gradient), the adapters, LR channels and augmentation embedding 6·N
    lora, _ = plan_of(pack, workspace, f"lora_rank = {RANK}")
    adapters_token = L * (6 * RANK * 2 * D + 2 * RANK * (D + F))
    adapters_text = L * 2 * RANK * 2 * D
    frozen_token = per_token - PATCH
    expected = 6 * (PATCH + adapters_token) * n + 4 * frozen_token * n + 6 * adapters_text * lt + \
        4 * per_text * lt + 6 * AUG + 4 * (TIME_EMB + TIME_PROJ) + 3 * attention
    assert lora["scenarios"]["off"]["flops_per_sample"] == expected


def real_saved_bytes(pack, parent, *, lora: int, checkpointing: bool, attention: str):
    """Saved-tensor bytes (once per storage, parameters excluded) of one real CPU training forward + loss of the
    loaded parent at the big stage's editing sample, micro-batch 2, and each block's own share."""
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ldm.wan.model as wan_module
    model = pack("training.unimmvsr.model")
    forward = pack("core.unimmvsr.forward")
    layout = pack("core.unimmvsr.reference_layout").layout
    patcher, _, _ = model.load_for_training(parent, pack("training.unimmvsr.config").ModelConfig(parent=parent, vae=""),
                                            torch.device("cpu"))
    wan = patcher.model.diffusion_model
    if lora:
        model.add_lora(wan, lora, 0.0)
    module = model.TrainModule(wan, checkpointing).train()
    weights = {p.untyped_storage().data_ptr() for p in wan.parameters()}
    saved, blocks = {}, []

    def pack_hook(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for block in wan.blocks:
        block.register_forward_pre_hook(lambda m, a: blocks.append(sum(saved.values())))
        block.register_forward_hook(lambda m, a, o: blocks.append(sum(saved.values()) - blocks.pop()))
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 2 * C, 3, 8, 16, generator=g), torch.randn(2, TEXT_TOKENS, TEXT, generator=g)
    refs = forward.ReferenceTokens(torch.randn(2, C, 3, 8, 16, generator=g), layout(3, [], [3], 20, 30))
    previous = wan_module.optimized_attention
    if attention == "sdpa":
        wan_module.optimized_attention = comfy_attention.attention_pytorch
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pred = module(x, torch.tensor([500.0, 200.0]), context, torch.tensor([300.0, 400.0]), refs)
            loss = (pred.float() - x[:, :C]).pow(2).flatten(1).mean(1).sum()
        loss.backward()   # the graph is real: it trains
    finally:
        wan_module.optimized_attention = previous
    return sum(saved.values()), max(blocks)


@pytest.mark.parametrize("lora", [0, RANK])
@pytest.mark.parametrize("attention", ["sdpa", "comfy"])
def test_measured_activations_equal_a_real_forward(pack, workspace, lora, attention):
    plan = pack("training.unimmvsr.plan")
    cfg, _ = config(pack, workspace)
    arch = plan.architecture_from_header(cfg.path(cfg.model.parent))
    shape = plan.largest_shape(cfg, arch)
    parent = str(workspace / "parent.safetensors")
    kwargs = dict(lora_rank=lora, lora_alpha=0.0, autocast=True, attention=attention)
    off = plan.measure_activations(arch, shape, 2, checkpointing=False, **kwargs)
    on = plan.measure_activations(arch, shape, 2, checkpointing=True, **kwargs)
    real_off, real_block = real_saved_bytes(pack, parent, lora=lora, checkpointing=False, attention=attention)
    real_on, _ = real_saved_bytes(pack, parent, lora=lora, checkpointing=True, attention=attention)
    assert off.saved == real_off and on.saved == real_on
    assert off.block_max == real_block
    assert on.saved < off.saved / 2           # checkpointing keeps only the blocks' inputs
    # autocast's cached bf16 copies: every trainable Linear / Conv3d weight and bias, 2 bytes each (norm gains and
    # modulations are not cast)
    cast = (LORA + PATCH + AUG) if lora else (TOTAL - L * (NORMS + MODULATION) - 2 * D)
    assert on.autocast_cache == off.autocast_cache == 2 * cast
    for a in (on, off):
        assert max(a.saved, a.autocast_cache) <= a.live_end_of_forward <= a.saved + a.autocast_cache


def test_a_failing_fake_forward_falls_back_to_the_formula_and_says_so(pack, workspace, monkeypatch):
    plan = pack("training.unimmvsr.plan")

    def unsupported(*args, **kwargs):
        raise NotImplementedError("aten::some_op has no meta kernel")

    monkeypatch.setattr(plan, "measure_activations", unsupported)
    cfg, _ = config(pack, workspace)
    arch = plan.architecture_from_header(cfg.path(cfg.model.parent))
    result = plan.make_plan(cfg, arch)
    off, on = result["scenarios"]["off"]["activations"], result["scenarios"]["on"]["activations"]
    assert off["method"].startswith("formula") and "no meta kernel" in off["method"]
    n = 2 * 192                                      # micro-batch 2 × tokens
    assert off["saved"] == L * 2 * n * (plan.FORMULA_DIM * D + plan.FORMULA_FFN * F)
    assert on["saved"] == L * 4 * n * D                # the blocks' float32 inputs
    assert "formula (the fake forward failed" in plan.render(result)


def test_cpu_target_counts_loading_and_export(pack, workspace):
    result, _ = plan_of(pack, workspace, f"lora_rank = {RANK}", target="cpu")
    host, p = result["host"], result["parameters"]
    file_bytes = os.path.getsize(workspace / "parent.safetensors")
    assert abs(result["architecture"]["file_bytes"] - file_bytes) < 20_000    # the header's tensor bytes
    # the parent is float32 already: loading holds its state dict and the float32 model it is copied into
    assert host["load"] == 8 * TOTAL
    # export: the model, AdamW + EMA of the trainable ones, the LoRA-merged weights and the float16 copy
    targets = L * (8 * linear(D, D) + linear(D, F) + linear(F, D))
    assert p["lora_targets"] == targets
    assert host["export"] == 4 * (TOTAL + LORA) + 12 * LORA_TRAINABLE + 4 * targets + 2 * TOTAL
    assert host["peak"] == max(host["load"], host["export"], result["scenarios"]["on"]["memory"]["train_peak"])
    assert result["scenarios"]["on"]["memory"]["optimizer_step_temp"] == 0


def test_presets_match_a_header_of_the_released_layout(pack, tmp_path):
    """A header-only (sparse) file in Wan 2.1 1.3B's ComfyUI layout reads as the preset."""
    from harness.paths import use_comfy_in_process
    use_comfy_in_process()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    plan = pack("training.unimmvsr.plan")
    preset = plan.PRESETS["wan2.1-1.3b"]
    wan = WanModel(in_dim=16, dim=preset.dim, ffn_dim=preset.ffn_dim, out_dim=16, num_heads=preset.num_heads,
                   num_layers=preset.num_layers, operations=comfy.ops.disable_weight_init, device="meta")
    header, offset = {}, 0
    for name, p in wan.state_dict().items():
        header[name] = {"dtype": "BF16", "shape": list(p.shape), "data_offsets": [offset, offset + 2 * p.numel()]}
        offset += 2 * p.numel()
    raw = json.dumps(header).encode()
    path = tmp_path / "wan2.1_t2v_1.3B_bf16.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)                        # no data written: the plan never reads it
    arch = plan.architecture_from_header(str(path))
    fields = ("dim", "ffn_dim", "num_layers", "num_heads", "channels", "text_dim", "freq_dim")
    assert [getattr(arch, k) for k in fields] == [getattr(preset, k) for k in fields]
    assert arch.file_bytes == offset == 2 * sum(p.numel() for p in wan.parameters())
    counted = plan.count_parameters(plan.build_model(preset)).total
    assert counted == sum(p.numel() for p in wan.parameters()) + 16 * preset.dim * 4 + \
        (FREQ * preset.dim + preset.dim + preset.dim ** 2 + preset.dim)   # + LR channels + augmentation embedding


def test_cli_plan_prints_the_numbers_and_warns(pack, workspace):
    _, path = config(pack, workspace, f"lora_rank = {RANK}")
    result, _ = plan_of(pack, workspace, f"lora_rank = {RANK}")
    out = subprocess.run([PYTHON, SCRIPT, "--config", path, "--plan", "--plan-gpu-gb", "0.001",
                          "--plan-json", str(workspace / "plan.json")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    text = out.stdout
    assert f"{TOTAL + LORA:,} (LoRA rank {RANK}: {LORA_TRAINABLE:,} trainable)" in text
    assert "192 tokens per sample" in text and "reference video of 3 latent frames" in text
    on = result["scenarios"]["on"]["memory"]
    assert f"{on['weights'] / 1024 ** 3:.2f} GiB" in text and f"{on['train_peak'] / 1024 ** 3:.2f} GiB" in text
    assert "WARNING" in text and "exceeds --plan-gpu-gb 0.001" in text
    with open(workspace / "plan.json", encoding="utf-8") as f:
        assert json.load(f)["scenarios"]["on"]["memory"] == on
    quiet = subprocess.run([PYTHON, SCRIPT, "--config", path, "--plan"], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert quiet.returncode == 0 and "WARNING" not in quiet.stdout and "UniMMVSR training plan" in quiet.stdout
    assert not os.path.exists(workspace / "runs")            # nothing trained


# the --plan path of test_cli_plan_prints_the_numbers_and_warns with a preset instead of a file
@pytest.mark.host_repeat
def test_cli_plan_with_a_preset_needs_no_files(pack, tmp_path):
    path = tmp_path / "nothing_exists.toml"
    path.write_text(CONFIG.format(training='sharding = "fsdp"', text_tokens=0))
    out = subprocess.run([PYTHON, SCRIPT, "--config", str(path), "--plan", "--plan-model", "wan2.2-5b",
                          "--plan-world-size", "8"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    # Wan 2.2 VAE: 16× space → 128×64 is 8×4 latent → 4×2 tokens per frame; 512 text tokens by default
    assert "48 latent + 48 LR condition channels" in out.stdout and "fsdp × 8 rank(s), 1 sample(s)" in out.stdout
    assert f"{(3 + 3) * 4 * 2:,} tokens per sample" in out.stdout and "512 text tokens" in out.stdout
    missing = subprocess.run([PYTHON, SCRIPT, "--config", str(path), "--plan"], capture_output=True, text=True,
                             timeout=600)
    assert missing.returncode != 0 and "no such file" in missing.stderr and "--plan-model" in missing.stderr
