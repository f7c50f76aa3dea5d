"""TMA end to end through the real ComfyUI server with tiny Wan models (UniVid §2.3)."""
import math

import pytest
import torch

from conftest import load_latent
from harness.comfy_server import assert_combo_refused, flagged_inputs
from harness.tiny_models import SD3, WAN21_I2V, WAN22_TI2V
from harness.wan_graphs import wan_t2v_graph
from harness.graph import Graph

pytestmark = pytest.mark.server

TMA = "UniCascadeTemperatureModalityAlignment"

TMA_DEFAULTS = dict(lambda_txt=0.3, lambda_img=0.3, schedule="cosine", txt_window_end=0.4, img_window_start=0.6,
                    progress="global (from sigma)")
SHIFT = 8.0  # ModelSamplingSD3 in wan_t2v_graph


def tma(**overrides):
    return {**TMA_DEFAULTS, **overrides}


def run_latent(comfy, name, **kwargs):
    prefix = f"{comfy.prefix}_{name}"
    comfy.run(wan_t2v_graph(prefix, **kwargs))
    return load_latent(comfy, prefix)


def expected_u(sigma):
    """Global progress of a shifted flow σ, inverted by hand: σ = s·t / (1 + (s−1)·t), u = 1 − t."""
    t = sigma / (SHIFT - (SHIFT - 1) * sigma)
    return 1.0 - t


def expected_alpha_txt(u, lam=0.3, end=0.4):
    return 1 + lam / 2 * (1 + math.cos(math.pi * u / end)) if u <= end else 1.0


def test_lambda_zero_is_identical_and_lambda_boost_differs(comfy):
    plain = run_latent(comfy, "plain")
    zero = run_latent(comfy, "zero", tma=tma(lambda_txt=0.0, lambda_img=0.0))
    boosted = run_latent(comfy, "boosted", tma=tma())
    assert torch.equal(plain, zero)
    assert (boosted - plain).abs().max() > 1e-3


def test_both_branches_of_a_step_see_the_same_alpha(comfy):
    # an area on the negative keeps ComfyUI from batching it with the positive: two model calls per step
    run_latent(comfy, "trace", tma=tma(), steps=6, separate_branches=True)
    records = comfy.trace.records()
    assert records, "no TMA trace was written"
    by_sigma = {}
    for r in records:
        by_sigma.setdefault(round(r["sigma"], 7), []).append(r)
    assert len(by_sigma) == 6
    for sigma, rs in by_sigma.items():
        assert sorted(tuple(r["cond_or_uncond"]) for r in rs) == [(0,), (1,)]  # two separate calls
        assert len({r["alpha_txt"] for r in rs}) == 1
        assert rs[0]["u"] == pytest.approx(expected_u(sigma), abs=1e-6)
        assert rs[0]["alpha_txt"] == pytest.approx(expected_alpha_txt(expected_u(sigma)), abs=1e-6)
    alphas = [by_sigma[s][0]["alpha_txt"] for s in sorted(by_sigma, reverse=True)]
    assert alphas[0] == pytest.approx(1.3) and alphas[-1] == 1.0


def test_sampler_custom_advanced_matches_ksampler(comfy):
    a = run_latent(comfy, "ksampler", tma=tma())
    b = run_latent(comfy, "sca", tma=tma(), sampler_node="SamplerCustomAdvanced")
    assert torch.allclose(a, b, atol=1e-5)
    assert comfy.trace.records()


def test_split_sigmas_follow_global_progress(comfy):
    whole = run_latent(comfy, "whole", tma=tma(), sampler_node="SamplerCustomAdvanced", steps=6)
    whole_alphas = [(round(r["sigma"], 6), r["alpha_txt"]) for r in comfy.trace.records()]
    comfy.trace.clear()
    split = run_latent(comfy, "split", tma=tma(), steps=6, split_at=2)
    split_alphas = [(round(r["sigma"], 6), r["alpha_txt"]) for r in comfy.trace.records()]
    assert sorted(set(split_alphas)) == sorted(set(whole_alphas))
    assert torch.allclose(whole, split, atol=1e-4)
    # the per-call step index restarts in the second sampler: that source gives other factors there
    comfy.trace.clear()
    run_latent(comfy, "split_steps", tma=tma(progress="sampler steps"), steps=6, split_at=2)
    step_alphas = {round(r["sigma"], 6): r["alpha_txt"] for r in comfy.trace.records()}
    assert any(step_alphas[s] != a for s, a in split_alphas)


@pytest.mark.parametrize("unet", [WAN22_TI2V])
def test_wan22_48_channel_model(comfy, unet):
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    patched = g.node("UniCascadeTemperatureModalityAlignment", model=model[0], **tma())
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    pos = g.node("CLIPTextEncode", clip=clip[0], text="a red cat")
    neg = g.node("CLIPTextEncode", clip=clip[0], text="")
    vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
    latent = g.node("Wan22ImageToVideoLatent", vae=vae[0], width=64, height=64, length=5, batch_size=1)
    for name, m in (("plain", model), ("tma", patched)):
        g.node("KSampler", node_id=f"s_{name}", model=m[0], seed=3, steps=3, cfg=4.0, sampler_name="euler",
               scheduler="simple", positive=pos[0], negative=neg[0], latent_image=latent[0], denoise=1.0)
        g.node("SaveLatent", samples=[f"s_{name}", 0], filename_prefix=f"{comfy.prefix}_{name}")
    comfy.run(g.prompt())
    plain, boosted = load_latent(comfy, f"{comfy.prefix}_plain"), load_latent(comfy, f"{comfy.prefix}_tma")
    assert plain.shape[1] == 48
    assert (plain - boosted).abs().max() > 1e-3


def test_wan_i2v_image_boost_is_late(comfy):
    g = Graph()
    model = g.node("UNETLoader", unet_name=WAN21_I2V, weight_dtype="default")
    model = g.node("UniCascadeTemperatureModalityAlignment", model=model[0], **tma(lambda_txt=0.0))
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    pos = g.node("CLIPTextEncode", clip=clip[0], text="a red cat")
    neg = g.node("CLIPTextEncode", clip=clip[0], text="")
    vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
    image = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0x884422)
    i2v = g.node("WanImageToVideo", positive=pos[0], negative=neg[0], vae=vae[0], width=64, height=64, length=5,
                 batch_size=1, start_image=image[0])
    out = g.node("KSampler", model=model[0], seed=3, steps=5, cfg=4.0, sampler_name="euler", scheduler="simple",
                 positive=i2v[0], negative=i2v[1], latent_image=i2v[2], denoise=1.0)
    g.node("SaveLatent", samples=out[0], filename_prefix=comfy.prefix)
    comfy.run(g.prompt())
    records = comfy.trace.records()
    assert records
    for r in records:
        assert r["alpha_txt"] == 1.0
        want = 1.0 if r["u"] <= 0.6 else 1 + 0.15 * (1 - math.cos(math.pi * (r["u"] - 0.6) / 0.4))
        assert r["alpha_img"] == pytest.approx(want, abs=1e-9)
    assert any(r["alpha_img"] > 1.0 for r in records)
    # the image branch really is scaled: λ_img = 0 gives another result
    boosted = load_latent(comfy, comfy.prefix)
    tma_node = next(k for k, v in g.nodes.items() if v["class_type"] == "UniCascadeTemperatureModalityAlignment")
    g.nodes[tma_node]["inputs"]["lambda_img"] = 0.0
    saver = next(k for k, v in g.nodes.items() if v["class_type"] == "SaveLatent")
    g.nodes[saver]["inputs"]["filename_prefix"] = comfy.prefix + "_noimg"
    comfy.run(g.prompt())
    assert (load_latent(comfy, comfy.prefix + "_noimg") - boosted).abs().max() > 1e-4


def test_unsupported_model_fails_with_its_name_and_server_goes_on(comfy):
    g = Graph()
    model = g.node("UNETLoader", unet_name=SD3, weight_dtype="default")
    g.node("UniCascadeTemperatureModalityAlignment", model=model[0], **tma())
    # an output node so the patch executes
    patched = list(g.nodes)[-1]
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    pos = g.node("CLIPTextEncode", clip=clip[0], text="x")
    latent = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    out = g.node("KSampler", model=[patched, 0], seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                 positive=pos[0], negative=pos[0], latent_image=latent[0], denoise=1.0)
    g.node("SaveLatent", samples=out[0], filename_prefix=comfy.prefix)
    error = comfy.run_expecting_error(g.prompt())
    assert "TMA works on Wan 2.1/2.2 or Flux or MfM models" in error["exception_message"]
    assert error["exception_type"] == "ValueError"  # a plain type, not the pack's module path
    assert "SD3" in error["exception_message"]
    # TACA on a Wan model is refused too
    g2 = Graph()
    wan = g2.node("UNETLoader", unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    g2.node("UniCascadeTACA", model=wan[0], gamma=1.2, until=0.1, progress="global (from sigma)")
    taca = list(g2.nodes)[-1]
    clip = g2.node("UniCascadeTestTinyTextEncoderLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    pos = g2.node("CLIPTextEncode", clip=clip[0], text="x")
    latent = g2.node("EmptyHunyuanLatentVideo", width=64, height=64, length=5, batch_size=1)
    out = g2.node("KSampler", model=[taca, 0], seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                  positive=pos[0], negative=pos[0], latent_image=latent[0], denoise=1.0)
    g2.node("SaveLatent", samples=out[0], filename_prefix=comfy.prefix + "_taca")
    error = comfy.run_expecting_error(g2.prompt())
    assert "TACA works on Flux models" in error["exception_message"] and "WAN21" in error["exception_message"]
    assert error["exception_type"] == "ValueError"
    # the server keeps serving
    assert run_latent(comfy, "after_error").shape[1] == 16


def test_out_of_range_lambda_is_rejected_at_validation(comfy):
    body = comfy.validate_error(wan_t2v_graph(comfy.prefix, tma=tma(lambda_txt=5.0)))
    text = str(body)
    assert "lambda_txt" in text and "value_bigger_than_max" in text
    assert flagged_inputs(body) == {TMA: ["lambda_txt"]}, body
    body = comfy.validate_error(wan_t2v_graph(comfy.prefix, tma=tma(schedule="exponential")))
    assert flagged_inputs(body) == {TMA: ["schedule"]}, body  # validate_inputs takes the schedule only
    assert "schedule: 'exponential' is not one of" in str(body)
    # a V3 combo: newer hosts refuse it when queued (naming only that input), 0.3.75 leaves it to the node
    assert_combo_refused(comfy, wan_t2v_graph(comfy.prefix, tma=tma(progress="percent")), TMA, "progress", "percent",
                         "progress: 'percent' is not one of global (from sigma), sampler steps")
    assert run_latent(comfy, "after_invalid").shape[1] == 16


def test_schedule_preview_matches_what_sampling_records(comfy):
    import json as _json

    g = Graph()
    model = g.node("UNETLoader", unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    model = g.node("ModelSamplingSD3", model=model[0], shift=SHIFT)
    sigmas = g.node("BasicScheduler", model=model[0], scheduler="simple", steps=6, denoise=1.0)
    preview = g.node("UniCascadeTMASchedulePreview", sigmas=sigmas[0], model=model[0], **{
        k: v for k, v in TMA_DEFAULTS.items() if k != "progress"})
    g.node("PreviewAny", node_id="table", source=preview[1])
    g.node("SaveImage", node_id="plot", images=preview[0], filename_prefix=comfy.prefix)
    entry = comfy.run(g.prompt())
    rows = _json.loads(entry["outputs"]["table"]["text"][0])
    assert len(rows) == 6 and entry["outputs"]["plot"]["images"]
    for r in rows:
        assert r["u"] == pytest.approx(expected_u(r["sigma"]), abs=1e-5)
        assert r["alpha_txt"] == pytest.approx(expected_alpha_txt(r["u"]), abs=1e-5)
    # the same schedule sampled with TMA records the same factors
    run_latent(comfy, "sampled", tma=tma(), steps=6)
    recorded = {round(r["sigma"], 5): r["alpha_txt"] for r in comfy.trace.records()}
    for r in rows:
        assert recorded[round(r["sigma"], 5)] == pytest.approx(r["alpha_txt"], abs=1e-5)


def test_denoise_and_advanced_ranges_and_two_model_split_use_global_progress(comfy):
    """denoise < 1 starts late in the schedule; KSamplerAdvanced ranges and a Wan 2.2-style two-model split
    (high-noise model, then low-noise model) see the σ-derived u of the whole schedule."""
    run_latent(comfy, "denoise", tma=tma(), steps=5, denoise=0.6)
    first = max(comfy.trace.records(), key=lambda r: r["sigma"])
    assert first["u"] == pytest.approx(expected_u(first["sigma"]), abs=1e-6) and first["u"] > 0.3
    comfy.trace.clear()
    g = Graph()
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    pos = g.node("CLIPTextEncode", clip=clip[0], text="a red cat")
    neg = g.node("CLIPTextEncode", clip=clip[0], text="")
    latent = g.node("EmptyHunyuanLatentVideo", width=64, height=64, length=5, batch_size=1)
    models = []
    for unet in ("wan2.1_t2v_1.3B_fp16.safetensors", "wan2.1_vace_1.3B_fp16.safetensors"):
        m = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
        m = g.node("ModelSamplingSD3", model=m[0], shift=SHIFT)
        models.append(g.node("UniCascadeTemperatureModalityAlignment", model=m[0], **tma()))
    common = dict(add_noise="enable", noise_seed=4, steps=8, cfg=4.0, sampler_name="euler", scheduler="simple",
                  positive=pos[0], negative=neg[0])
    high = g.node("KSamplerAdvanced", model=models[0][0], latent_image=latent[0], start_at_step=0, end_at_step=3,
                  return_with_leftover_noise="enable", **common)
    low = g.node("KSamplerAdvanced", model=models[1][0], latent_image=high[0], start_at_step=3, end_at_step=8,
                 return_with_leftover_noise="disable", **{**common, "add_noise": "disable"})
    g.node("SaveLatent", samples=low[0], filename_prefix=comfy.prefix)
    comfy.run(g.prompt())
    records = comfy.trace.records()
    sigmas = sorted({round(r["sigma"], 7) for r in records}, reverse=True)
    assert len(sigmas) == 8
    for r in records:
        assert r["u"] == pytest.approx(expected_u(r["sigma"]), abs=1e-6)
        assert r["alpha_txt"] == pytest.approx(expected_alpha_txt(r["u"]), abs=1e-6)
    assert records[-1]["u"] > 0.8  # the low-noise model ends the schedule: late progress, not a restart


def test_an_override_that_does_not_chain_is_reported_not_ignored(comfy):
    g = Graph()
    model = g.node("UNETLoader", unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    boosted = g.node("UniCascadeTemperatureModalityAlignment", model=model[0], **tma())
    foreign = g.node("UniCascadeTestReplaceAttentionOverride", model=boosted[0])
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    pos = g.node("CLIPTextEncode", clip=clip[0], text="x")
    latent = g.node("EmptyHunyuanLatentVideo", width=64, height=64, length=5, batch_size=1)
    out = g.node("KSampler", model=foreign[0], seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                 positive=pos[0], negative=pos[0], latent_image=latent[0], denoise=1.0)
    g.node("SaveLatent", samples=out[0], filename_prefix=comfy.prefix)
    error = comfy.run_expecting_error(g.prompt())
    assert "reached no attention call" in error["exception_message"]
