"""Runs the Triton kernel under Triton's CPU interpreter and prints the results as JSON (one line).

Triton decides at import whether its own library functions (tl.max, tl.sum …) are interpreted, so the
interpreter needs TRITON_INTERPRET=1 before triton is first imported: a process of its own, started by
tests/test_attention_kernels.py. It checks every reference case, that γ and the RoPE matter, and one block of a
real ComfyUI Wan model (UniMMVSR reference RoPE at t = 20 and 30, TMA α = 1.3) against ComfyUI's default path."""
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from harness.paths import pack_module, use_comfy_in_process  # noqa: E402


def main():
    use_comfy_in_process()
    import comfy.model_management  # noqa: F401
    import torch
    from harness import attention_reference as ar

    results = {"cases": {}}
    for name in ar.FP32_CASES + ar.LOW_CASES:
        case = ar.make_case(name, pack_module)
        results["cases"][name] = ar.run_case(pack_module, case, "triton", block_m=16, block_n=16)

    # bfloat16: against the emulation of the kernel's own roundings (the interpreter truncates where a GPU rounds
    # to nearest)
    case = ar.make_case("unimmvsr_self_bf16", pack_module)
    spec = pack_module("core.attention.rope3d").RopeSpec(case["axes"], 10000.0, case["pairing"])
    q, k, v = (case[n].to(case["dtype"]) for n in "qkv")
    out, lse = pack_module("core.attention.fused").rope_attention(
        "triton", q, k, v, q_positions=case["q_pos"], k_positions=case["k_pos"], rope=spec, groups=case["groups"],
        block_m=16, block_n=16)
    results["bf16"] = ar.bf16_report(pack_module, case, out, lse, block_n=16)

    fused = pack_module("core.attention.fused")
    case = ar.make_case("taca_joint_fp32", pack_module)
    rope = pack_module("core.attention.rope3d").wan_rope_spec(64)

    def kernel(groups, spec):
        return fused.rope_attention("triton", case["q"], case["k"], case["v"], q_positions=case["q_pos"],
                                    k_positions=case["k_pos"], rope=spec, groups=groups, block_m=16, block_n=16)[0]
    full = kernel(case["groups"], rope)
    results["without_gamma"] = (full - kernel(fused.GroupTable.uniform(), rope)).abs().max().item()
    results["without_rope"] = (full - kernel(case["groups"], None)).abs().max().item()

    # one Wan block: self-attention with RoPE in the kernel (references at t = 20, 30), cross-attention with TMA α
    ab = pack_module("samplers.attention_backends")
    from harness.tiny_models import WAN21_T2V
    model = ar.load(WAN21_T2V)
    dm = model.model.diffusion_model
    freqs = ar.unimmvsr_freqs(pack_module, dm)
    x = torch.randn(1, 45, dm.dim, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 6, dm.dim, generator=torch.Generator().manual_seed(2))
    boosted = ar.tma(pack_module, model, 1.3)
    want = ar.run_block(boosted, x, freqs, context, ar.tma_state(pack_module, 1.3))
    patched, chosen, message = ar.backend(pack_module, boosted, "fused (Triton)")
    calls = ab.Calls()
    got = ar.run_block(patched, x, freqs, context, {**ar.tma_state(pack_module, 1.3), ab.CALLS_KEY: calls})
    plain = ar.run_block(model, x, freqs, context)
    results["block"] = {"backend": chosen, "message": message, "err": (got - want).abs().max().item(),
                        "tma_effect": (plain - want).abs().max().item(),
                        "calls": [calls.fused_self, calls.fused_cross, calls.default_self, calls.default_cross]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
