"""MfM Pipeline Loader (issue 12, loading): tiny pipeline folders in the official diffusers layout load through the
real server and sample with core KSampler; config-driven sizes, both block layouts, the scheduler's shift, the
VAE's scaling factor, and clear errors for broken folders."""
import re

import pytest
import torch

from conftest import load_latent
from harness.graph import Graph
from harness.tiny_mfm import (MFM, MFM_CHUNKED, MFM_MISMATCH, MFM_NO_VAE, MFM_PICKLE, MFM_TRUNCATED, SHIFT,
                              VAE_SCALE)
from harness.tiny_models import EXAMPLE_IMAGE, WAN21_T2V, WAN21_VAE

pytestmark = pytest.mark.server


def t2v_graph(prefix, pipeline=MFM, prompt="a red cat runs", cfg=9.0, tma=None):
    g = Graph()
    model = g.node("UniCascadeMfMPipelineLoader", pipeline=pipeline)
    sampling_model = model
    if tma is not None:
        sampling_model = g.node("UniCascadeTemperatureModalityAlignment", model=model[0], lambda_img=0.0,
                                schedule="cosine", txt_window_end=0.5, img_window_start=0.5,
                                progress="global (from sigma)", **tma)
    pos = g.node("CLIPTextEncode", clip=model[1], text=prompt)
    neg = g.node("CLIPTextEncode", clip=model[1], text="")
    latent = g.node("EmptyHunyuanLatentVideo", width=64, height=64, length=5, batch_size=1)
    out = g.node("KSampler", model=sampling_model[0], positive=pos[0], negative=neg[0], latent_image=latent[0],
                 seed=1, steps=3, cfg=cfg, sampler_name="euler", scheduler="simple", denoise=1.0)
    g.node("SaveLatent", samples=out[0], filename_prefix=prefix)
    frames = g.node("VAEDecode", samples=out[0], vae=model[2])
    g.node("SaveImage", node_id="frames", images=frames[0], filename_prefix=prefix)
    return g


def test_core_ksampler_samples_a_loaded_pipeline_and_both_block_layouts_agree(comfy):
    entry = comfy.run(t2v_graph(f"{comfy.prefix}_plain").prompt())
    images = entry["outputs"]["frames"]["images"]
    assert len(images) == 5                                 # 2 latent frames → 5 frames through the CogVideoX VAE
    from PIL import Image
    assert Image.open(comfy.output_path(images[0]["subfolder"], images[0]["filename"])).size == (64, 64)
    comfy.run(t2v_graph(f"{comfy.prefix}_chunked", MFM_CHUNKED).prompt())
    plain, chunked = load_latent(comfy, f"{comfy.prefix}_plain"), load_latent(comfy, f"{comfy.prefix}_chunked")
    assert plain.shape == (1, 16, 2, 8, 8) and torch.isfinite(plain).all() and plain.abs().max() > 0
    assert torch.equal(plain, chunked)                     # the same weights in the chunked layout
    comfy.run(t2v_graph(f"{comfy.prefix}_other", prompt="a blue car").prompt())
    assert not torch.equal(load_latent(comfy, f"{comfy.prefix}_other"), plain)   # the text reaches the DiT
    comfy.run(t2v_graph(f"{comfy.prefix}_upper", prompt="A RED Cat runs").prompt())
    assert torch.equal(load_latent(comfy, f"{comfy.prefix}_upper"), plain)       # lower-cased, as official


def test_the_t5_clip_gives_77_tokens_and_its_mask(pack, comfy_base):
    import folder_paths

    folder_paths.add_model_folder_path("mfm", f"{comfy_base}/models/mfm")
    _, clip, _ = pack("model_loaders.mfm_pipeline").load_pipeline(MFM)
    [[cond, options]] = clip.encode_from_tokens_scheduled(clip.tokenize("A red cat runs"))
    assert cond.shape == (1, 77, 4096)
    mask = options["attention_mask"]
    assert mask.shape == (1, 77) and mask[0, :5].tolist() == [1] * 5 and mask[0, 5:].sum() == 0   # 4 words + </s>
    long = " ".join(["cat"] * 200)
    [[cond_long, opts_long]] = clip.encode_from_tokens_scheduled(clip.tokenize(long))
    assert cond_long.shape == (1, 77, 4096) and int(opts_long["attention_mask"].sum()) == 77   # truncated at 77


def test_the_scheduler_shift_and_the_vae_scale_come_from_the_folder(pack, comfy_base):
    import comfy.samplers
    import folder_paths

    folder_paths.add_model_folder_path("mfm", f"{comfy_base}/models/mfm")
    model = pack("model_loaders.mfm_pipeline").load_pipeline_model(MFM)
    sampling = model.get_model_object("model_sampling")
    assert sampling.shift == SHIFT and sampling.multiplier == 1000
    for sigma in (0.9, 0.5, 0.1):                          # the transformer receives σ·1000 (official timesteps)
        assert float(sampling.timestep(torch.tensor(sigma))) == pytest.approx(sigma * 1000, rel=1e-5)
    # σ(t) = s·t / (1 + (s − 1)·t) on t = i/1000, the flow shift of the official FlowMatchEulerDiscreteScheduler
    for i in (1, 250, 500, 999, 1000):
        t = i / 1000
        assert float(sampling.sigmas[i - 1]) == pytest.approx(SHIFT * t / (1 + (SHIFT - 1) * t), rel=1e-5)
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", 4)
    assert float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
    assert all(torch.isclose(sampling.sigmas, s).any() for s in sigmas[:-1])
    # the latent scale is the official pipeline's constant, whatever vae/config.json says (it holds VAE_SCALE here)
    official = 0.958917567
    assert VAE_SCALE != official and model.model.latent_format.scale_factor == official
    lat = torch.randn(1, 16, 2, 4, 4)
    assert torch.allclose(model.model.process_latent_out(lat), lat / official)
    overridden = pack("model_loaders.mfm_pipeline").load_pipeline_model(MFM, vae_scale_override=0.5)
    assert overridden.model.latent_format.scale_factor == 0.5


def test_a_vae_config_holding_cogvideox_default_scale_does_not_change_the_latent_scale(pack, tmp_path, caplog):
    """diffusers writes scaling_factor into every vae/config.json (CogVideoX's default 1.15258426): the official
    pipeline divides by 0.958917567 regardless, so the pack must too — and say that it ignores the config."""
    import json
    import logging
    loader = pack("model_loaders.mfm_pipeline")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCogVideoX",
                                                             "scaling_factor": 1.15258426}))
    with caplog.at_level(logging.INFO, logger="UniCascade"):
        assert loader.vae_scale(str(tmp_path)) == 0.958917567
    assert "scaling_factor 1.15258426" in caplog.text and "never reads" in caplog.text
    assert loader.vae_scale(str(tmp_path), override=1.15258426) == 1.15258426


@pytest.mark.parametrize("setting, message", [
    ({"use_dynamic_shifting": True}, "use_dynamic_shifting = True"),
    ({"shift_terminal": 0.1}, "shift_terminal = 0.1"),
    ({"invert_sigmas": True}, "invert_sigmas = True"),
    ({"use_karras_sigmas": True}, "use_karras_sigmas = True"),
    ({"use_beta_sigmas": True}, "use_beta_sigmas = True"),
    ({"some_future_option": 3}, "setting(s) some_future_option the pack does not implement"),
])
def test_scheduler_settings_that_change_the_sigma_grid_are_refused_by_name(pack, tmp_path, setting, message):
    import json
    loader = pack("model_loaders.mfm_pipeline")
    (tmp_path / "scheduler").mkdir()
    base = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 7.0,
            "use_dynamic_shifting": False, "shift_terminal": None, "invert_sigmas": False,
            "use_karras_sigmas": False, "base_shift": 0.5, "max_shift": 1.15}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(base))
    assert loader.scheduler_shift(str(tmp_path)) == 7.0
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**base, **setting}))
    with pytest.raises(ValueError, match=re.escape(message)):
        loader.scheduler_shift(str(tmp_path))


@pytest.mark.parametrize("pipeline, message", [
    (MFM_NO_VAE, "missing component(s) vae"),
    (MFM_MISMATCH, "missing transformer_blocks.2."),
    (MFM_PICKLE, "only pickle files diffusion_pytorch_model.bin"),
    (MFM_TRUNCATED, "cannot read diffusion_pytorch_model.safetensors"),
])
def test_broken_folders_are_reported_and_the_server_goes_on(comfy, pipeline, message):
    error = comfy.run_expecting_error(t2v_graph(f"{comfy.prefix}_bad", pipeline).prompt())
    assert message in error["exception_message"], error["exception_message"]
    assert error["node_type"] == "UniCascadeMfMPipelineLoader"
    comfy.run(t2v_graph(f"{comfy.prefix}_good", prompt=f"after {pipeline}").prompt())


def i2v_graph(prefix, model_loader=None, vace=False):
    """MfM Condition (i2v) → CLIPTextEncode of its prompts → MfM Apply Condition → KSampler → SaveLatent."""
    g = Graph()
    image = g.node("LoadImage", image=EXAMPLE_IMAGE)
    cond = g.node("UniCascadeMfMCondition", task="image-to-video (i2v)", prompt="a corgi on a beach", image=image[0],
                  width=64, height=48, frames=5, fit="pad", swap_portrait=True, motion_score=5.0, fps=16,
                  mask_source="input mask", mask_seed=0, depth_mode="none", clip_frames=8)
    pipeline = g.node("UniCascadeMfMPipelineLoader", pipeline=MFM)
    model = model_loader(g) if model_loader else pipeline
    pos = g.node("CLIPTextEncode", clip=pipeline[1], text=cond[1])
    neg = g.node("CLIPTextEncode", clip=pipeline[1], text=cond[2])
    if vace:  # a Wan VACE condition into the MfM model
        vae = g.node("VAELoader", vae_name=WAN21_VAE)
        applied = g.node("WanVaceToVideo", positive=pos[0], negative=neg[0], vae=vae[0], width=64, height=48, length=5,
                         batch_size=1, strength=1.0, control_video=cond[6], control_masks=cond[7])
    else:
        applied = g.node("UniCascadeMfMApplyCondition", model=model[0], positive=pos[0], negative=neg[0],
                         condition=cond[0])
    out = g.node("KSampler", model=model[0], positive=applied[0], negative=applied[1], latent_image=applied[2],
                 seed=1, steps=2, cfg=9.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    g.node("SaveLatent", samples=out[0], filename_prefix=prefix)
    return g


def test_the_condition_builder_drives_the_mfm_model(comfy):
    comfy.run(i2v_graph(f"{comfy.prefix}_i2v").prompt())
    latent = load_latent(comfy, f"{comfy.prefix}_i2v")
    assert latent.shape == (1, 16, 2, 6, 8) and torch.isfinite(latent).all()


def test_the_negative_branch_gets_zero_depth_and_the_positive_the_condition(pack, comfy_base):
    import folder_paths

    from core.mfm.condition import build_condition
    from core.mfm.tasks import TASKS

    folder_paths.add_model_folder_path("mfm", f"{comfy_base}/models/mfm")
    model = pack("model_loaders.mfm_pipeline").load_pipeline_model(MFM)
    cond = build_condition(TASKS["i2v"], "x", 32, 32, 5, image=torch.rand(1, 32, 32, 3), depth_mode="none")
    cond.depth = torch.rand_like(cond.depth) + 0.5        # a depth map, as a depth model would give
    text = [[torch.zeros(1, 3, 8), {}]]
    pos, neg, latent = pack("nodes.mfm_apply").MfMApplyCondition.execute(model, text, text, cond).result
    key = pack("samplers.mfm_model").CONDITION_KEY
    want = cond.tensor()
    assert torch.equal(pos[0][1][key]["pixels"], want) and pos[0][1][key]["motion_score"] == cond.motion_score
    got_neg = neg[0][1][key]["pixels"]
    assert got_neg[:, 3].abs().max() == 0 and want[:, 3].abs().max() > 0          # channel 3 = depth: zeroed
    assert torch.equal(got_neg[:, [0, 1, 2, 4]], want[:, [0, 1, 2, 4]])           # R, G, B, mask unchanged
    assert latent["samples"].shape == (1, 16, 2, 4, 4)


@pytest.mark.parametrize("case, node_type, message", [
    ("wan_model", "UniCascadeMfMApplyCondition", "model: a WAN21 model cannot take an MfM condition"),
    ("vace_into_mfm", "KSampler", "a Wan condition (vace_frames, vace_mask"),
])
def test_conditions_of_the_other_family_are_refused(comfy, case, node_type, message):
    loader = (lambda g: g.node("UNETLoader", unet_name=WAN21_T2V, weight_dtype="default")) if case == "wan_model" \
        else None
    error = comfy.run_expecting_error(i2v_graph(f"{comfy.prefix}_bad", loader, vace=case == "vace_into_mfm").prompt())
    assert error["node_type"] == node_type and message in error["exception_message"], error["exception_message"]
    comfy.run(t2v_graph(f"{comfy.prefix}_good", prompt=f"after {case}").prompt())


def test_tma_boosts_mfms_text_cross_attention(comfy):
    comfy.run(t2v_graph(f"{comfy.prefix}_plain").prompt())
    plain = load_latent(comfy, f"{comfy.prefix}_plain")
    comfy.trace.clear()
    comfy.run(t2v_graph(f"{comfy.prefix}_neutral", tma=dict(lambda_txt=0.0)).prompt())
    assert torch.allclose(load_latent(comfy, f"{comfy.prefix}_neutral"), plain, atol=1e-6)   # α = 1: no change
    comfy.trace.clear()
    comfy.run(t2v_graph(f"{comfy.prefix}_boost", tma=dict(lambda_txt=2.0)).prompt())
    boosted = load_latent(comfy, f"{comfy.prefix}_boost")
    assert not torch.allclose(boosted, plain, atol=1e-4)
    alphas = [r["alpha_txt"] for r in comfy.trace.records() if "alpha_txt" in r]
    assert alphas and max(alphas) > 2.0                    # 1 + λ at the first step; the boost reached the model


def test_the_adapter_output_is_reused_across_steps_and_equals_the_uncached_forward(pack, comfy_base):
    import folder_paths

    from core.mfm.transformer import MfMTransformer3D

    folder_paths.add_model_folder_path("mfm", f"{comfy_base}/models/mfm")
    dm = pack("model_loaders.mfm_pipeline").load_pipeline_model(MFM).model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 16, 2, 4, 4, generator=g), torch.randn(2, 7, 4096, generator=g)
    cond = torch.randn(2, 5, 5, 32, 32, generator=g)
    ids = torch.tensor([11, 12])
    calls = []
    original = dm.cond_conv.forward
    dm.cond_conv.forward = lambda c: calls.append(1) or original(c)
    try:
        with torch.no_grad():
            outs = [dm(x, torch.tensor([900.0 - 300 * i] * 2), ctx, mfm_condition=cond, mfm_condition_id=ids)
                    for i in range(3)]
            plain = [MfMTransformer3D.forward(dm, x, torch.tensor([900.0 - 300 * i] * 2), ctx, mfm_condition=cond,
                                              attention=None) for i in range(3)]
            assert len(calls) == 1 + 3                      # once for the three cached steps, 3 uncached
            other = dm(x, torch.tensor([900.0] * 2), ctx, mfm_condition=cond * 0.5, mfm_condition_id=ids + 2)
    finally:
        dm.cond_conv.forward = original
    for a, b in zip(outs, plain):   # ComfyUI's attention vs SDPA: float-level differences only
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    assert not torch.allclose(other, outs[0], atol=1e-4)    # a new condition (new id) is not served from the cache


@pytest.mark.parametrize("task, cfg", [("text-to-video (t2v)", 9.0), ("image colorization (icolor)", 7.0),
                                       ("image super-resolution (isr)", 9.0)])
def test_the_builder_gives_the_tasks_guidance_to_wire_into_the_sampler(comfy, task, cfg):
    g = Graph()
    image = g.node("LoadImage", image=EXAMPLE_IMAGE)
    cond = g.node("UniCascadeMfMCondition", task=task, prompt="a corgi", image=image[0], video=image[0], width=64,
                  height=48, frames=5, fit="pad", swap_portrait=True, motion_score=5.0, fps=16,
                  mask_source="input mask", mask_seed=0, depth_mode="none", clip_frames=8)
    g.node("PreviewAny", node_id="cfg", source=cond[11])
    entry = comfy.run(g.prompt())
    assert float(entry["outputs"]["cfg"]["text"][0]) == cfg   # paper 9; official colorization override 7


def test_the_shipped_mfm_workflows_take_cfg_from_the_builder_and_the_papers_50_steps():
    import json
    import os

    from harness.workflows import WORKFLOW_DIR

    names = ["mfm_t2v", "mfm_i2v", "mfm_video_inpainting", "mfm_video_super_resolution", "mfm_image_super_resolution"]
    for name in names:
        with open(os.path.join(WORKFLOW_DIR, f"{name}.json"), encoding="utf-8") as f:
            wf = json.load(f)
        nodes = {n["id"]: n for n in wf["nodes"]}
        sampler = next(n for n in wf["nodes"] if n["type"] == "KSampler")
        assert sampler["widgets_values"][2] == 50, name
        assert sampler["widgets_values"][5] == "normal", name      # the official FlowMatch Euler σ grid
        link = next(i["link"] for i in sampler["inputs"] if i["name"] == "cfg")
        origin = next(lk for lk in wf["links"] if lk[0] == link)
        assert nodes[origin[1]]["type"] == "UniCascadeMfMCondition" and origin[2] == 11, name
        if name == "mfm_image_super_resolution":   # the official output: 4× the input image
            save = next(n for n in wf["nodes"] if n["type"] == "SaveImage")
            source = next(lk for lk in wf["links"] if lk[0] == save["inputs"][0]["link"])
            assert nodes[source[1]]["type"] == "UniCascadeMfMAssembleOutput", name


def test_the_schedule_preview_shows_mfms_shifted_schedule(comfy):
    import json
    import math

    steps, lam = 8, 0.3
    g = Graph()
    model = g.node("UniCascadeMfMPipelineLoader", pipeline=MFM)
    sigmas = g.node("BasicScheduler", model=model[0], scheduler="simple", steps=steps, denoise=1.0)
    preview = g.node("UniCascadeTMASchedulePreview", sigmas=sigmas[0], model=model[0], lambda_txt=lam, lambda_img=0.0,
                     schedule="cosine", txt_window_end=0.4, img_window_start=0.6)
    g.node("PreviewAny", node_id="table", source=preview[1])
    rows = json.loads(comfy.run(g.prompt())["outputs"]["table"]["text"][0])
    assert len(rows) == steps
    for i, row in enumerate(rows):
        t = 1 - i / steps                                  # "simple" on the 1000-entry table: t = 1 − i/steps
        assert row["sigma"] == pytest.approx(SHIFT * t / (1 + (SHIFT - 1) * t), abs=2e-6)   # the folder's shift
        assert row["u"] == pytest.approx(i / steps, abs=1e-3)
        want = 1 + lam / 2 * (1 + math.cos(math.pi * row["u"] / 0.4)) if row["u"] <= 0.4 else 1.0   # eq. 3
        assert row["alpha_txt"] == pytest.approx(want, abs=1e-5)


def test_sampler_custom_advanced_samples_mfm_like_ksampler(comfy):
    comfy.run(t2v_graph(f"{comfy.prefix}_ksampler").prompt())
    g = Graph()
    model = g.node("UniCascadeMfMPipelineLoader", pipeline=MFM)
    pos = g.node("CLIPTextEncode", clip=model[1], text="a red cat runs")
    neg = g.node("CLIPTextEncode", clip=model[1], text="")
    latent = g.node("EmptyHunyuanLatentVideo", width=64, height=64, length=5, batch_size=1)
    guider = g.node("CFGGuider", model=model[0], positive=pos[0], negative=neg[0], cfg=9.0)
    sigmas = g.node("BasicScheduler", model=model[0], scheduler="simple", steps=3, denoise=1.0)
    out = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=1)[0], guider=guider[0],
                 sampler=g.node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas[0], latent_image=latent[0])
    g.node("SaveLatent", samples=out[0], filename_prefix=f"{comfy.prefix}_custom")
    comfy.run(g.prompt())
    custom, ksampler = load_latent(comfy, f"{comfy.prefix}_custom"), load_latent(comfy, f"{comfy.prefix}_ksampler")
    assert custom.shape == ksampler.shape and torch.allclose(custom, ksampler, atol=1e-5)
