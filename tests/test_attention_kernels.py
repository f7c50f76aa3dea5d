"""The fused attention kernels (issue 13) against a plain-math reference (harness/attention_reference.py):
RoPE computed from explicit (t, h, w) positions with Wan's split, explicit logits × group table, softmax, float64.

- The Triton kernel runs under Triton's CPU interpreter (tiny shapes; 16-token blocks so every case has several key
  blocks and a masked tail) in one process of its own (harness/triton_interpreted.py: Triton decides at import
  whether its library functions are interpreted), which also runs one real ComfyUI Wan block on it.
- The FlexAttention path runs eagerly for every case and compiled (Inductor C++ on the CPU) for two of them.
- In-process wiring on the real ComfyUI Wan modules: the flex backend with UniMMVSR reference RoPE and TMA in both
  orders, another pack's override, training, and the bad inputs (Triton missing, an unsupported head dim, a
  non-Wan model) that keep the default path with a message.
Cold (empty Inductor cache) this module and test_attention_backend_server.py take ~80 s together on 2 cores.
"""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from harness.paths import REPO
from harness.attention_reference import (FP32_CASES, FP32_TOL, LOW_CASES, LOW_TOL, backend, explicit_rope, load,
                                         make_case, run_block, run_case, tma, tma_state, unimmvsr_freqs,
                                         unimmvsr_positions, wan_axes)
def test_reference_rope_is_comfyui_wans_and_positions_come_back_from_its_freqs(pack):
    """The test's explicit RoPE equals ComfyUI's own (WanModel.rope_encode + apply_rope1) on UniMMVSR's reference
    layout (UniMMVSR's reference_freqs); the pack's apply_rope too; positions_from_freqs recovers the positions."""
    from comfy.ldm.flux.math import apply_rope1
    from harness.tiny_models import build_wan

    rope3d = pack("core.attention.rope3d")
    forward = pack("core.unimmvsr.forward")
    layout = pack("core.unimmvsr.reference_layout").layout(2, [1], [2], 20, 30)
    wan = build_wan()
    freqs = forward.reference_freqs(wan, 2, 6, 6, layout, torch.device("cpu"), torch.float32)
    pos = unimmvsr_positions()
    spec = rope3d.wan_rope_spec(128)
    assert spec.axes_dim == tuple(wan.rope_embedder.axes_dim) == wan_axes(128)
    torch.manual_seed(0)
    x = torch.randn(2, pos.shape[0], 1, 128)
    comfy_rotated = apply_rope1(x, freqs)
    assert (comfy_rotated.double() - explicit_rope(x.double(), pos, wan_axes(128))).abs().max() < 2e-6
    assert (rope3d.apply_rope(x, pos, spec) - comfy_rotated).abs().max() < 2e-6
    assert torch.equal(rope3d.positions_from_freqs(freqs, spec), pos.float())
    # not a rotation table of this split (another θ): refused, not misread
    assert rope3d.positions_from_freqs(freqs, rope3d.RopeSpec(spec.axes_dim, 500.0)) is None
    # d = 64 and a rope_options-style fractional shift
    spec64 = rope3d.wan_rope_spec(64)
    from comfy.ldm.flux.layers import EmbedND
    shifted = pos.double() + torch.tensor([0.5, -1.25, 3.0], dtype=torch.float64)
    f64 = EmbedND(dim=64, theta=10000.0, axes_dim=list(wan_axes(64)))(shifted[None].float()).movedim(1, 2)
    assert (rope3d.positions_from_freqs(f64, spec64).double() - shifted).abs().max() < 1e-4


@pytest.fixture(scope="module")
def interpreted():
    """The Triton kernel's results under the interpreter, computed once in a process of its own (Triton decides
    at import whether its library functions are interpreted)."""
    script = os.path.join(REPO, "harness", "triton_interpreted.py")
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.host_independent
@pytest.mark.parametrize("name", FP32_CASES)
def test_triton_kernel_interpreted_equals_reference_fp32(interpreted, name):
    out_err, lse_err = interpreted["cases"][name]
    assert out_err <= FP32_TOL and lse_err <= FP32_TOL, (out_err, lse_err)


@pytest.mark.host_independent
def test_triton_kernel_interpreted_float16(interpreted):
    out_err, lse_err = interpreted["cases"]["unimmvsr_self_fp16"]
    assert out_err <= LOW_TOL[torch.float16] and lse_err <= 2 * LOW_TOL[torch.float16], (out_err, lse_err)


@pytest.mark.host_independent
def test_triton_kernel_interpreted_bfloat16_is_its_own_arithmetic_within_two_rounding_steps(interpreted):
    """Triton's CPU interpreter converts float32 → bfloat16 by truncation (a GPU rounds to nearest), so the
    interpreted bf16 kernel is checked against an emulation of the kernel's arithmetic with the interpreter's
    roundings (rotated q/k, probabilities, output): within two bfloat16 spacings of each value — a wrong rotation,
    scale or softmax step is hundreds of spacings off."""
    report = interpreted["bf16"]
    assert report["ulps_from_truncating_emulation"] <= 2.0, report
    assert report["lse_from_truncating_emulation"] <= 1e-4, report
    assert abs(report["kernel_error"] - report["truncating_error"]) <= 1e-2, report


@pytest.mark.host_independent
def test_round_to_nearest_bounds_the_bfloat16_error_a_gpu_must_meet(interpreted):
    """The same kernel with round-to-nearest conversions (a GPU's) is more accurate than the interpreter's
    truncating run; twice its float64 error is the bound benchmarks/gpu_suite.py holds a GPU's bf16 kernel to."""
    report = interpreted["bf16"]
    assert report["nearest_error"] < report["truncating_error"], report
    assert 1e-3 < report["nearest_error"] <= 1.2e-2, report


@pytest.mark.host_independent
def test_the_table_and_the_rope_change_the_result(interpreted):
    """Assertions that can fail: dropping γ or the RoPE moves the kernel's output far from what it was."""
    assert interpreted["without_gamma"] > 1e-3 and interpreted["without_rope"] > 1e-3


def test_one_block_on_the_interpreted_triton_kernel_equals_default(interpreted):
    """One real Wan block, UniMMVSR reference RoPE (t = 20, 30) and TMA α = 1.3, the Triton kernel interpreted:
    both attention calls ran on the kernel and the block equals ComfyUI's default path."""
    block = interpreted["block"]
    assert block["backend"] == "triton" and "interpreter" in block["message"]
    assert block["calls"] == [1, 1, 0, 0]
    assert block["err"] <= FP32_TOL
    assert block["tma_effect"] > 1e-4  # α mattered


@pytest.mark.host_independent
@pytest.mark.parametrize("name", FP32_CASES + LOW_CASES)
def test_flex_eager_equals_reference(pack, name):
    case = make_case(name, pack)
    out_err, lse_err = run_case(pack, case, "flex", compiled=False)
    tol = FP32_TOL if case["dtype"] == torch.float32 else LOW_TOL[case["dtype"]]
    assert out_err <= tol and lse_err <= 2 * tol, (out_err, lse_err)


@pytest.mark.host_independent
@pytest.mark.parametrize("name", ["unimmvsr_self_fp32", "tma_cross_fp32", "taca_joint_fp32", "multi_block_self_fp32",
                                  "multi_block_cross_fp32", "far_positions_fp32"])
def test_flex_compiled_equals_reference(pack, name):
    """Uniform tables (folded into q) and a non-uniform one (read per logit in score_mod), RoPE and none, one
    kernel block and several with ragged tails (Lq ≠ Lk)."""
    out_err, _ = run_case(pack, make_case(name, pack), "flex")  # compiled on a CPU: no log-sum-exp (checked eager)
    assert out_err <= FP32_TOL, out_err


@pytest.mark.host_independent
def test_unsupported_head_dim_and_dtype_are_named(pack):
    fused = pack("core.attention.fused")
    x = torch.zeros(1, 4, 1, 96)
    with pytest.raises(ValueError, match="head dim 96 is not supported"):
        fused.rope_attention("flex", x, x, x)
    y = torch.zeros(1, 4, 1, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        fused.rope_attention("flex", y, y, y)


# --- wiring on the real ComfyUI Wan modules (in-process) ---------------------------------------------------

@pytest.fixture(scope="module")
def wan_t2v(comfy_in_process):
    from harness.tiny_models import WAN21_T2V
    return load(WAN21_T2V)


@pytest.mark.parametrize("order", ["attention_then_tma", "tma_then_attention"])
def test_flex_backend_with_references_and_tma_in_either_order(pack, wan_t2v, order):
    ab = pack("samplers.attention_backends")
    dm = wan_t2v.model.diffusion_model
    freqs = unimmvsr_freqs(pack, dm)
    x = torch.randn(2, 45, dm.dim, generator=torch.Generator().manual_seed(3))
    context = torch.randn(2, 5, dm.dim, generator=torch.Generator().manual_seed(4))
    want = run_block(tma(pack, wan_t2v, 1.25), x, freqs, context, tma_state(pack, 1.25))
    if order == "attention_then_tma":
        patched = tma(pack, backend(pack, wan_t2v, "flex")[0], 1.25)
    else:
        patched = backend(pack, tma(pack, wan_t2v, 1.25), "flex")[0]
    calls = ab.Calls()
    got = run_block(patched, x, freqs, context, {**tma_state(pack, 1.25), ab.CALLS_KEY: calls})
    assert (calls.fused_self, calls.fused_cross, calls.default_self, calls.default_cross) == (1, 1, 0, 0), calls
    assert (got - want).abs().max() <= FP32_TOL


def test_foreign_override_keeps_working_and_self_attention_stays_rotated(pack, wan_t2v, caplog):
    """Another pack's override installed first: it still runs on every call and is handed the kernel as its
    attention function; self-attention gets q/k already rotated by Wan's own forward (logged), since that override
    expects them so."""
    ab = pack("samplers.attention_backends")
    dm = wan_t2v.model.diffusion_model
    seen = []

    def users_override(func, *args, **kwargs):
        seen.append(getattr(func, ab.KERNEL_MARK, False))
        return func(*args, **kwargs)
    model = wan_t2v.clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = users_override
    freqs = dm.rope_encode(2, 6, 6, device=torch.device("cpu"), dtype=torch.float32)
    x = torch.randn(1, 18, dm.dim, generator=torch.Generator().manual_seed(5))
    context = torch.randn(1, 4, dm.dim, generator=torch.Generator().manual_seed(6))
    want = run_block(model, x, freqs, context)
    seen.clear()
    calls = ab.Calls()
    with caplog.at_level(logging.WARNING, logger="UniCascade"):
        got = run_block(backend(pack, model, "flex")[0], x, freqs, context, {ab.CALLS_KEY: calls})
    assert seen == [True, True]  # self- then cross-attention, each handed the kernel
    assert (calls.fused_self, calls.fused_cross, calls.default_self) == (0, 2, 1)
    assert "expects rotated q/k" in caplog.text
    assert (got - want).abs().max() <= FP32_TOL


def test_default_backend_and_training_keep_the_default_path(pack, wan_t2v):
    ab = pack("samplers.attention_backends")
    patched, chosen, message = backend(pack, wan_t2v, "default")
    assert chosen == "default" and message is None and not patched.object_patches
    # re-applying "default" over "flex" turns the earlier patches off
    flex = backend(pack, wan_t2v, "flex")[0]
    off = backend(pack, flex, "default")[0]
    assert off.model_options["transformer_options"][ab.BACKEND_KEY] == "default"
    dm = wan_t2v.model.diffusion_model
    freqs = dm.rope_encode(1, 4, 4, device=torch.device("cpu"), dtype=torch.float32)
    x = torch.randn(1, 4, dm.dim)
    calls = ab.Calls()
    patched = flex
    patched.patch_model()
    try:
        with torch.enable_grad():
            dm.blocks[0].self_attn(x, freqs, transformer_options={
                **patched.model_options["transformer_options"], ab.CALLS_KEY: calls})
    finally:
        patched.unpatch_model()
    assert calls.default_self == 1 and "inference only" in next(iter(calls.reasons))


def test_bad_inputs_keep_the_default_path_with_a_message(pack, wan_t2v, monkeypatch, comfy_in_process):
    import comfy.sd
    from harness.tiny_models import WAN21_T2V, build_sd3

    # Triton missing
    monkeypatch.setitem(sys.modules, "triton", None)
    patched, chosen, message = backend(pack, wan_t2v, "fused (Triton)")
    assert chosen == "default" and "Triton does not import" in message and not patched.object_patches
    monkeypatch.undo()
    # Triton present, but a CPU model without the interpreter
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    chosen, message = pack("samplers.attention_backends").resolve_backend("fused (Triton)", wan_t2v)
    assert chosen == "default" and "needs a CUDA device" in message
    assert pack("samplers.attention_backends").resolve_backend("auto", wan_t2v)[0] == "default"
    # a head dim the kernels lack: dim 192 → one head of 192
    wide = load(WAN21_T2V, dim=192, ffn_dim=256)
    patched, chosen, message = backend(pack, wide, "flex")
    assert chosen == "default" and "head dim is 192" in message and not patched.object_patches
    # not a Wan model
    sd3 = comfy.sd.load_diffusion_model_state_dict({k: v.float() for k, v in build_sd3().state_dict().items()})
    patched, chosen, message = backend(pack, sd3, "flex")
    assert chosen == "default" and "Wan 2.1/2.2" in message and "SD3" in message
    with pytest.raises(ValueError, match="backend: 'cuda' is not one of"):
        backend(pack, wan_t2v, "cuda")


@pytest.mark.host_independent
def test_flex_serves_more_shapes_than_dynamos_default_recompile_limit(pack):
    """Each shape is a compiled variant; Dynamo's default (8 per function) would fail the ninth with fullgraph."""
    fused = pack("core.attention.fused")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for length in range(17, 27):                       # 10 shapes
            q, k, v = (torch.randn(1, length, 1, 64, generator=g) for _ in range(3))
            out, _ = fused.rope_attention("flex", q, k, v, groups=fused.GroupTable.uniform(1.1))
            ref = torch.nn.functional.scaled_dot_product_attention(
                (q * 1.1).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
            assert torch.allclose(out, ref, atol=1e-5), length


@pytest.mark.host_independent
def test_frequencies_split_into_a_short_high_part_and_a_remainder(pack):
    """The Triton kernel's angle reduction relies on ω = hi + lo with hi of at most 12 significant bits (so
    position·hi is exact in float32 for grid positions below 4096) and hi + lo equal to ω within 2^-35 of it."""
    rope3d = pack("core.attention.rope3d")
    inv, _ = rope3d.pair_frequencies(rope3d.wan_rope_spec(128))
    hi, lo = rope3d.split_frequencies(inv)
    assert hi.dtype == lo.dtype == torch.float32
    mantissa = hi.view(torch.int32) & 0x7FFFFF
    assert bool(((mantissa & 0xFFF) == 0).all())                            # the low 12 mantissa bits are zero
    assert bool(((hi.double() + lo.double() - inv).abs() <= 2.0 ** -35 * inv).all())   # 3e-8 rad at t = 1000
    positions = torch.arange(0, 4096, dtype=torch.float32)
    exact = positions.double()[:, None] * hi.double()[None, :]
    assert torch.equal((positions[:, None] * hi[None, :]).double(), exact)  # products exact in float32
    assert (lo.abs() / inv).max() < 2 ** -11


@pytest.mark.host_independent
@pytest.mark.parametrize("backend_name", ["flex", "triton"])
def test_group_ids_outside_the_table_are_refused_by_name(pack, backend_name):
    """Both backends refuse a group id the logit-scale table has no row or column for (the Triton kernel would
    read past the table), naming the side and the range."""
    fused = pack("core.attention.fused")
    x = torch.zeros(1, 5, 1, 64)
    bad_query = fused.GroupTable(torch.ones(2, 1), torch.tensor([0, 1, 2, 0, 0], dtype=torch.int32), None)
    with pytest.raises(ValueError, match="query group ids run from 0 to 2; the logit-scale table has 2 query groups"):
        fused.rope_attention(backend_name, x, x, x, groups=bad_query)
    bad_key = fused.GroupTable(torch.ones(1, 2), None, torch.tensor([0, -1, 0, 0, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="key group ids run from -1 to 0"):
        fused.rope_attention(backend_name, x, x, x, groups=bad_key)


def test_a_kernel_that_fails_to_compile_falls_back_once_per_shape(pack, wan_t2v, monkeypatch, caplog):
    """A kernel error (Triton compile/launch, an inductor build) never fails the prompt: the call takes the
    default path, one log line names the shape and the error, and that shape is not tried again; other shapes
    still run on the kernel."""
    ab = pack("samplers.attention_backends")
    dm = wan_t2v.model.diffusion_model
    real = ab.rope_attention
    attempts = []

    def failing_for_self_attention(backend_name, q, k, v, **kwargs):
        attempts.append(kwargs.get("rope") is not None)
        if kwargs.get("rope") is not None:
            raise RuntimeError("PassManager::run failed (a stand-in for a Triton compile error)")
        return real(backend_name, q, k, v, **kwargs)
    monkeypatch.setattr(ab, "rope_attention", failing_for_self_attention)
    freqs = dm.rope_encode(2, 6, 6, device=torch.device("cpu"), dtype=torch.float32)
    x = torch.randn(1, 18, dm.dim, generator=torch.Generator().manual_seed(7))
    context = torch.randn(1, 4, dm.dim, generator=torch.Generator().manual_seed(8))
    want = run_block(wan_t2v, x, freqs, context)
    patched = backend(pack, wan_t2v, "flex")[0]
    runs = []
    with caplog.at_level(logging.WARNING, logger="UniCascade"):
        for _ in range(2):
            calls = ab.Calls()
            runs.append((run_block(patched, x, freqs, context, {ab.CALLS_KEY: calls}), calls))
    for got, calls in runs:
        assert (got - want).abs().max() <= FP32_TOL
    # self-attention takes Wan's forward (whose rotated attention call runs on the kernel), cross-attention the kernel
    assert all((c.fused_self, c.default_self, c.fused_cross) == (0, 1, 2) for _, c in runs)
    assert attempts.count(True) == 1                                  # the failing shape was tried once only
    messages = [r.getMessage() for r in caplog.records if "kernel failed" in r.getMessage()]
    assert len(messages) == 1 and "(1, 18, " in messages[0] and "PassManager::run failed" in messages[0]
