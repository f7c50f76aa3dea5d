"""What the official MfM pipeline does around the transformer (issue 30), recomputed here from its rules: the σ
grid of the shipped workflows, the official canvases, fitting and portrait rule, the output assembly, the default
motion score, the literal tokenisation and the VAE's tiled decode — through the real server where a workflow runs."""
import os
import sys

import numpy as np
import pytest
import torch

from harness.graph import Graph
from harness.paths import REPO
from harness.tiny_mfm import MFM, MFM_BY_SHIFT
from harness.workflows import load

from core.mfm import assembly, fitting
from core.mfm.condition import build_condition
from core.mfm.tasks import TASK_LABELS, TASKS

sys.path.insert(0, os.path.join(REPO, "scripts"))
from ui_workflow import ui_to_api  # noqa: E402


def official_sigmas(shift: float, steps: int) -> list[float]:
    """The official sampler's σ (diffusers FlowMatchEulerDiscreteScheduler.set_timesteps(steps), fixed shift), from
    its formula: σ(t) = s·t / (1 + (s − 1)·t) on 1000 training steps, the N timesteps evenly spaced from σ_max to
    σ_min of that table, shifted once more, then 0."""
    def shifted(t):
        return shift * t / (1 + (shift - 1) * t)
    sigma_max, sigma_min = shifted(1.0), shifted(1 / 1000)
    return [shifted(t / 1000) for t in np.linspace(sigma_max * 1000, sigma_min * 1000, steps)] + [0.0]


def mfm_calls(comfy) -> list[float]:
    return [r["timestep"][0] / 1000 for r in comfy.trace.records() if r.get("event") == "mfm_call"]


@pytest.mark.server
@pytest.mark.parametrize("shift", sorted(MFM_BY_SHIFT))
def test_the_shipped_t2v_workflow_samples_on_the_official_sigma_grid(comfy, shift):
    """example_workflows/mfm_t2v.json as shipped (its KSampler's scheduler untouched), on a tiny pipeline whose
    scheduler has shift 12 or 3, at 25, 30 and 50 steps: the σ of every model call is the official schedule's (within
    float32)."""
    workflow = load(os.path.join(REPO, "example_workflows", "mfm_t2v.json"))
    prompt = ui_to_api(workflow, comfy.object_info())
    by_type = {v["class_type"]: v for v in prompt.values()}
    assert by_type["KSampler"]["inputs"]["scheduler"] == "normal"
    by_type["UniCascadeMfMPipelineLoader"]["inputs"]["pipeline"] = MFM_BY_SHIFT[shift]
    by_type["UniCascadeMfMCondition"]["inputs"].update(width=64, height=48, frames=5)
    for steps in (25, 30, 50):
        by_type["KSampler"]["inputs"].update(steps=steps, seed=steps)
        comfy.trace.clear()
        comfy.run(prompt)
        got = mfm_calls(comfy)
        want = official_sigmas(shift, steps)[:-1]
        assert len(got) == steps, (steps, len(got))
        assert np.allclose(got, want, rtol=2e-6, atol=2e-7), (steps, np.abs(np.array(got) - want).max())
    # "simple", what the workflows used before, is another grid: its last σ is far from the official one
    simple_last = shift * (1 / 30) / (1 + (shift - 1) / 30)
    assert abs(simple_last - official_sigmas(shift, 30)[-2]) > 0.05


def test_image_tasks_use_the_official_canvases_and_keep_res_fits_without_padding():
    image = torch.rand(1, 300, 200, 3)                       # portrait
    for key, size in (("t2i", (1024, 1024)), ("icolor", (1024, 1024)), ("isr", (1280, 1280))):
        cond = build_condition(TASKS[key], "x", 640, 352, 97, image=None if key == "t2i" else image)
        assert cond.frames == 1 and cond.motion_score == 0.0
        if key == "t2i":
            assert cond.pixels.shape[1:3] == (size[1], size[0])
    # keep_res: the fitted size is the canvas (1280×720 into 640×352: 624×352), nothing to generate around it
    p = fitting.plan(1280, 720, 640, 352, "keep_res")
    assert (p.canvas_width, p.canvas_height, p.left, p.top, p.width, p.height) == (624, 352, 0, 0, 624, 352)
    cond = build_condition(TASKS["i2v"], "x", 640, 352, 5, image=torch.rand(1, 720, 1280, 3), fit="keep_res",
                           depth_mode="none")
    assert cond.pixels.shape[1:3] == (352, 624) and bool(cond.keep[0].all())


def test_every_portrait_input_swaps_the_canvas_as_the_official_code_does():
    assert fitting.box_for(720, 1280, 640, 352) == (352, 640, True)
    assert fitting.box_for(720, 1280, 352, 640) == (640, 352, True)      # a portrait box turns landscape
    assert fitting.box_for(1280, 720, 352, 640) == (352, 640, False)     # a landscape input keeps the box
    assert fitting.box_for(720, 1280, 640, 352, swap_portrait=False) == (640, 352, False)


def test_the_output_assembly_of_extension_transition_and_image_tasks():
    video, video_b = torch.rand(20, 48, 64, 3), torch.rand(14, 48, 64, 3)
    cond = build_condition(TASKS["vext"], "x", 64, 48, 13, video=video, clip_frames=8, depth_mode="none")
    generated = torch.rand(13, 48, 64, 3)
    out = assembly.assemble(cond, generated)
    # 12 source frames before the 8 conditioned ones, then the 13 generated: 25 frames (not a multiple of 4)
    assert out.shape[0] == 25 and torch.equal(out[:12], video[:12]) and torch.equal(out[12:], generated)
    cond = build_condition(TASKS["flc2v"], "x", 64, 48, 17, video=video, video_b=video_b, clip_frames=8,
                           depth_mode="none")
    generated = torch.rand(17, 48, 64, 3)
    out = assembly.assemble(cond, generated)
    # clip A's 12 frames before its last 8, the 17 generated, clip B's 6 frames after its first 8: 35 frames
    assert out.shape[0] == 35 and torch.equal(out[12:29], generated) and torch.equal(out[29:], video_b[8:])
    cond = build_condition(TASKS["vext"], "x", 64, 48, 13, video=video[:19], clip_frames=8, depth_mode="none")
    out = assembly.assemble(cond, torch.rand(13, 48, 64, 3))
    assert out.shape[0] == 24 - 3                              # 11 + 13 = 24, a multiple of 4: the first 3 dropped
    image = torch.rand(1, 30, 40, 3)
    cond = build_condition(TASKS["isr"], "x", 64, 48, 1, image=image, official_canvas=False)
    out = assembly.assemble(cond, torch.rand(1, 48, 64, 3))
    assert out.shape == (1, 120, 160, 3)                        # 4× the input, nearest
    cond = build_condition(TASKS["icolor"], "x", 64, 48, 1, image=image, official_canvas=False)
    generated = torch.rand(1, 48, 64, 3)
    out = assembly.assemble(cond, generated)
    want = torch.nn.functional.interpolate(generated.movedim(-1, 1), size=(30, 40), mode="nearest").movedim(1, -1)
    assert torch.equal(out, want)
    t2v = build_condition(TASKS["t2v"], "x", 64, 48, 5)
    frames = torch.rand(5, 48, 64, 3)
    assert assembly.assemble(t2v, frames) is frames


def test_the_pack_only_task_is_labelled_so():
    labels = [label for label, key in TASK_LABELS.items() if key == "iedit"]
    assert labels == ["image editing (iedit, pack-only)"]
    assert all("pack-only" not in label for label, key in TASK_LABELS.items() if key != "iedit")


def test_literal_prompts_tokenise_as_the_official_call_and_weights_stay_text(pack, comfy_base):
    import folder_paths
    from transformers import T5TokenizerFast

    folder_paths.add_model_folder_path("mfm", f"{comfy_base}/models/mfm")
    loader = pack("model_loaders.mfm_pipeline")
    _, literal, _ = loader.load_pipeline(MFM)
    _, weighted, _ = loader.load_pipeline(MFM, literal_prompts=False)
    text = "  A (Red:1.5) Cat  " + " runs" * 100
    official = T5TokenizerFast.from_pretrained(os.path.join(comfy_base, "models", "mfm", MFM, "tokenizer"))(
        text.lower().strip(), max_length=77, padding="max_length", truncation=True).input_ids
    tokens = [t for t, _ in literal.tokenize(text)["mfm_t5"][0]]
    assert tokens == official and len(tokens) == 77
    weights = [w for _, w in weighted.tokenize("a (red:1.5) cat")["mfm_t5"][0]]
    assert max(weights) == pytest.approx(1.5)                  # ComfyUI's syntax only when asked for
    assert {w for _, w in literal.tokenize("a (red:1.5) cat")["mfm_t5"][0]} == {1.0}


def test_the_vae_decodes_with_the_official_tiling_and_equals_the_untiled_decode(pack, comfy_base):
    """The decode is diffusers' tiled decode at its own default tiles, as the official pipeline calls it: below a
    tile it equals the untiled decode exactly; with tiles smaller than the frame it is bitwise what
    ``enable_tiling`` + ``decode`` give, and close to the untiled decode on average (a random tiny VAE normalises
    each tile with that tile's statistics, so its seams are far stronger than a trained VAE's)."""
    vae = pack("model_loaders.mfm_vae").load_mfm_vae(os.path.join(comfy_base, "models", "mfm", MFM))
    latent = torch.randn(1, 16, 2, 8, 10, generator=torch.Generator().manual_seed(0))

    def untiled():
        vae.model.disable_tiling()
        with torch.no_grad():
            return to_frames(vae.model.decode(latent.to(vae.vae_dtype)).sample)

    def to_frames(video):
        video = video[:, :, 3:] if video.shape[2] % 4 == 0 else video      # the decode's own frame rule
        return ((video.float().clamp(-1, 1) + 1) / 2).movedim(1, -1)

    assert vae.default_tiling["tile_sample_min_height"] > 64          # the frame is smaller than a default tile
    assert torch.equal(vae.decode(latent), untiled())
    vae.default_tiling.update(tile_sample_min_height=48, tile_sample_min_width=40)
    tiled = vae.decode(latent)
    vae.model.enable_tiling(**vae.default_tiling)
    with torch.no_grad():
        official = to_frames(vae.model.decode(latent.to(vae.vae_dtype)).sample)
    assert torch.equal(tiled, official)
    plain = untiled()
    assert tiled.shape == plain.shape and not torch.equal(tiled, plain)
    assert (tiled - plain).abs().mean() < 0.05, float((tiled - plain).abs().mean())


@pytest.mark.server
def test_t2v_without_a_condition_samples_with_the_official_motion_score(comfy):
    """Plain CLIPTextEncode prompts (no MfM condition attached): two runs that differ only in the motion score the
    model is given would differ; the pack's default equals an explicit t2v condition with motion 5."""
    def graph(prefix, with_condition):
        g = Graph()
        model = g.node("UniCascadeMfMPipelineLoader", pipeline=MFM)
        pos = g.node("CLIPTextEncode", clip=model[1], text="a red cat runs")
        neg = g.node("CLIPTextEncode", clip=model[1], text="")
        latent = g.node("EmptyHunyuanLatentVideo", width=64, height=48, length=5, batch_size=1)
        positive, negative = pos[0], neg[0]
        if with_condition:
            cond = g.node("UniCascadeMfMCondition", task="text-to-video (t2v)", prompt="", width=64, height=48,
                          frames=5, fit="pad", swap_portrait=True, motion_score=5.0, fps=16,
                          mask_source="input mask", mask_seed=0, depth_mode="none", clip_frames=8)
            applied = g.node("UniCascadeMfMApplyCondition", model=model[0], positive=pos[0], negative=neg[0],
                             condition=cond[0])
            positive, negative = applied[0], applied[1]
        out = g.node("KSampler", model=model[0], positive=positive, negative=negative, latent_image=latent[0],
                     seed=3, steps=2, cfg=6.0, sampler_name="euler", scheduler="normal", denoise=1.0)
        g.node("SaveLatent", samples=out[0], filename_prefix=prefix)
        return g
    from conftest import load_latent
    comfy.run(graph(f"{comfy.prefix}_plain", False).prompt())
    comfy.run(graph(f"{comfy.prefix}_cond", True).prompt())
    plain, cond = load_latent(comfy, f"{comfy.prefix}_plain"), load_latent(comfy, f"{comfy.prefix}_cond")
    assert torch.allclose(plain, cond, atol=1e-5), float((plain - cond).abs().max())
