"""UniCascade Attention through the real ComfyUI server on tiny Wan models (issue 13): the flex backend samples
the same latents as the default one — Wan T2V, TMA on top, UniMMVSR with references (RoPE from t = 20 and 30) —
and every self- and cross-attention call of every model call ran on the kernel (the trace counts them).
FlexAttention compiles inside the server on its first calls (Inductor C++; tens of seconds on 2 cores)."""
import os

import pytest

from conftest import load_latent
from harness.graph import Graph
from harness.paths import COMFY_DIR
from harness.tiny_models import SD3, UMT5
from harness.wan_graphs import wan_t2v_graph
from test_unimmvsr_server import cascade_graph, unimmvsr_records

pytestmark = pytest.mark.server

NODE = "UniCascadeAttentionBackend"
TOL = 1e-4
TMA = dict(lambda_txt=0.3, lambda_img=0.3, schedule="cosine", txt_window_end=0.4, img_window_start=0.6,
           progress="global (from sigma)")


def backend_records(comfy):
    return [r for r in comfy.trace.records() if r.get("event") == "attention_backend"]


def assert_all_fused(records, blocks=2):
    assert records, "no model call ran through the attention backend"
    for r in records:
        assert (r["backend"], r["fused_self"], r["fused_cross"], r["default_self"], r["default_cross"]) == \
            ("flex", blocks, blocks, 0, 0), r


def t2v(comfy, name, **kwargs):
    prefix = f"{comfy.prefix}_{name}"
    comfy.run(wan_t2v_graph(prefix, steps=3, **kwargs))
    return load_latent(comfy, prefix)


def test_wan_t2v_flex_equals_default_with_and_without_tma(comfy):
    plain = t2v(comfy, "default", attention="default")
    assert not backend_records(comfy)
    comfy.trace.clear()
    flex = t2v(comfy, "flex", attention="flex")
    assert_all_fused(backend_records(comfy))
    assert (flex - plain).abs().max() <= TOL
    boosted = t2v(comfy, "tma", tma=TMA)
    comfy.trace.clear()
    boosted_flex = t2v(comfy, "tma_flex", tma=TMA, attention="flex")
    assert_all_fused(backend_records(comfy))
    assert any(r.get("alpha_txt", 1.0) > 1.0 for r in comfy.trace.records())  # TMA was on
    assert (boosted_flex - boosted).abs().max() <= TOL
    assert (boosted - plain).abs().max() > 1e-3  # and it mattered


def with_attention(g: Graph, backend: str) -> Graph:
    """The cascade graph with UniCascade Attention between the UniMMVSR loader and everything it fed."""
    loader = next(k for k, v in g.nodes.items() if v["class_type"] == "UniCascadeUniMMVSRLoader")
    node = g.node(NODE, model=[loader, 0], backend=backend)
    for key, spec in g.nodes.items():
        if key != node.id:
            for name, value in spec["inputs"].items():
                if value == [loader, 0]:
                    spec["inputs"][name] = node[0]
    return g


def test_unimmvsr_with_references_flex_equals_default(comfy):
    latents = {}
    for backend in ("default", "flex"):
        prefix = f"{comfy.prefix}_{backend}"
        comfy.trace.clear()
        comfy.run(with_attention(cascade_graph(comfy, prefix, steps=3, reference_end=0.5), backend).prompt())
        latents[backend] = load_latent(comfy, prefix)
    assert [r["evaluations"] for r in unimmvsr_records(comfy)] == [3, 3, 2]  # the reference term ran
    assert_all_fused(backend_records(comfy))
    assert (latents["flex"] - latents["default"]).abs().max() <= TOL


def test_a_non_wan_model_keeps_default_attention_with_a_message(comfy):
    g = Graph()
    model = g.node("UNETLoader", unet_name=SD3, weight_dtype="default")
    patched = g.node(NODE, model=model[0], backend="flex")
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name=UMT5)
    pos = g.node("CLIPTextEncode", clip=clip[0], text="x")
    latent = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    out = g.node("KSampler", model=patched[0], seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                 positive=pos[0], negative=pos[0], latent_image=latent[0], denoise=1.0)
    g.node("SaveLatent", samples=out[0], filename_prefix=comfy.prefix)
    comfy.run(g.prompt())
    choice = [r for r in comfy.trace.records() if r.get("event") == "attention_backend_choice"]
    assert choice and choice[-1]["backend"] == "default"
    assert "Wan 2.1/2.2" in choice[-1]["message"] and "SD3" in choice[-1]["message"]
    assert "UniCascade Attention (flex): the fused kernels serve Wan 2.1/2.2 models" in comfy.log_text()
    assert load_latent(comfy, comfy.prefix).shape[1] == 16


def with_builtin_backend(prompt: dict, where: str) -> dict:
    """``prompt`` with ComfyUI's own attention-backend node ("pytorch attention") before or after UniCascade
    Attention."""
    ours = next(k for k, v in prompt.items() if v["class_type"] == NODE)
    builtin = str(max(int(k) for k in prompt if k.isdigit()) + 1000)
    if where == "before":
        prompt[builtin] = {"class_type": "ModelAttentionBackend",
                           "inputs": {"model": prompt[ours]["inputs"]["model"], "attention": "pytorch attention"}}
        prompt[ours]["inputs"]["model"] = [builtin, 0]
    else:
        prompt[builtin] = {"class_type": "ModelAttentionBackend",
                           "inputs": {"model": [ours, 0], "attention": "pytorch attention"}}
        for key, spec in prompt.items():
            if key != builtin and spec["inputs"].get("model") == [ours, 0]:
                spec["inputs"]["model"] = [builtin, 0]
    return prompt


def test_the_builtin_attention_backend_node_composes_with_ours_in_either_order(comfy):
    """Hosts with ComfyUI's attention-backend node (0.33+), before or after UniCascade Attention: the built-in
    node's function is what runs — ours finds it on the model and hands the calls to it (self-attention counted on
    the default path, the reason naming the built-in override), in either order — and the latents are the
    default attention's."""
    if "ModelAttentionBackend" not in comfy.object_info():
        pytest.skip("this ComfyUI has no built-in attention-backend node (added after 0.3.75)")
    plain = t2v(comfy, "builtin_plain", attention="default")
    results = {}
    for where in ("before", "after"):
        prefix = f"{comfy.prefix}_builtin_{where}"
        comfy.trace.clear()
        comfy.run(with_builtin_backend(wan_t2v_graph(prefix, steps=3, attention="flex"), where))
        results[where] = (load_latent(comfy, prefix), backend_records(comfy))
    before, before_records = results["before"]
    after, after_records = results["after"]
    assert (before - plain).abs().max() <= TOL and (after - plain).abs().max() <= TOL
    for records in (before_records, after_records):              # ours defers to the built-in function, saying so
        assert records and all(
            r["fused_self"] == r["fused_cross"] == 0 and r["default_self"] == 2
            and any("set_model_optimized_attention" in reason for reason in r["reasons"]) for r in records), \
            records[:1]


def with_rotated_query_patch(prompt: dict) -> dict:
    """``prompt`` with the fixture's attn1_patch (it reads Wan's rotated q) right after the loader's shift node."""
    shift = next(k for k, v in prompt.items() if v["class_type"] == "ModelSamplingSD3")
    patch = str(max(int(k) for k in prompt if k.isdigit()) + 1000)
    prompt[patch] = {"class_type": "UniCascadeTestRotatedQueryPatch", "inputs": {"model": [shift, 0]}}
    for key, spec in prompt.items():
        if key != patch and spec["inputs"].get("model") == [shift, 0]:
            spec["inputs"]["model"] = [patch, 0]
    return prompt


def test_an_attn1_patch_that_reads_the_rotated_queries_gets_them(comfy):
    """Newer ComfyUI's Wan hands each ``attn1_patch`` the rotated q/k of its self-attention, which the fused kernel
    never forms: with such a patch on the model, self-attention takes Wan's own forward (counted, the reason naming
    attn1_patch) and the latents are the default attention's with the patch. On a host whose Wan ignores
    attn1_patch (0.3.75) the patch changes nothing either way."""
    plain = t2v(comfy, "attn1_plain", attention="default")
    latents = {}
    for backend in ("default", "flex"):
        prefix = f"{comfy.prefix}_attn1_{backend}"
        comfy.trace.clear()
        comfy.run(with_rotated_query_patch(wan_t2v_graph(prefix, steps=3, attention=backend)))
        latents[backend] = load_latent(comfy, prefix)
    records = backend_records(comfy)
    # self-attention took Wan's forward, whose attention call (rotated q/k) still runs on the kernel: 2 + 2
    assert records and all(r["default_self"] == 2 and r["fused_self"] == 0 and r["fused_cross"] == 4
                           and any("attn1_patch" in reason for reason in r["reasons"]) for r in records), records[:1]
    assert (latents["flex"] - latents["default"]).abs().max() <= TOL
    host_runs_the_patch = (latents["default"] - plain).abs().max() > 1e-3
    assert host_runs_the_patch == wan_runs_attn1_patch()


def wan_runs_attn1_patch() -> bool:
    """Whether the host's Wan self-attention calls ``attn1_patch`` (read from its source: 0.33 does, 0.3.75 not)."""
    with open(os.path.join(COMFY_DIR, "comfy", "ldm", "wan", "model.py"), encoding="utf-8") as f:
        return "attn1_patch" in f.read()
