"""UniMMVSR through the real server on tiny Wan 2.1 models (UniMMVSR §3; docs/design.md §2–3)."""
import pytest
import torch

from conftest import load_latent
from harness.graph import Graph
from harness.tiny_models import (UMT5, UNIMMVSR, UNIMMVSR_DELTA, UNIMMVSR_PLAIN_WAN, UNIMMVSR_SHIFT3,
                                 UNIMMVSR_TRAINED, UNIMMVSR_TRUNCATED, UNIMMVSR_WAN22, WAN21_T2V, WAN21_VAE,
                                 WAN22_TI2V)

pytestmark = pytest.mark.server


def text(g, prompt):
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name=UMT5)
    return g.node("CLIPTextEncode", clip=clip[0], text=prompt), g.node("CLIPTextEncode", clip=clip[0], text="")


def test_zero_initialised_upscaler_equals_its_t2v_parent_bitwise(comfy):
    for name, loader in (("parent", ("UNETLoader", dict(unet_name=WAN21_T2V, weight_dtype="default"))),
                         ("full", ("UniCascadeUniMMVSRLoader", dict(unimmvsr_name=UNIMMVSR))),
                         ("delta", ("UniCascadeUniMMVSRLoader", dict(unimmvsr_name=UNIMMVSR_DELTA)))):
        g = Graph()
        model = g.node(loader[0], **loader[1])
        if name == "parent":  # the upscaler samples with its checkpoint's shift, 1.0; give the parent the same
            model = g.node("ModelSamplingSD3", model=model[0], shift=1.0)
        pos, neg = text(g, "a red cat runs")
        latent = g.node("EmptyHunyuanLatentVideo", width=64, height=48, length=5, batch_size=1)
        out = g.node("KSampler", model=model[0], seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="simple",
                     positive=pos[0], negative=neg[0], latent_image=latent[0], denoise=1.0)
        g.node("SaveLatent", samples=out[0], filename_prefix=f"{comfy.prefix}_{name}")
        comfy.run(g.prompt())
    parent = load_latent(comfy, f"{comfy.prefix}_parent")
    assert torch.equal(parent, load_latent(comfy, f"{comfy.prefix}_full"))
    assert torch.equal(parent, load_latent(comfy, f"{comfy.prefix}_delta"))


def test_wan22_48_channel_upscaler_equals_its_parent_bitwise(comfy):
    for name, loader in (("parent", ("UNETLoader", dict(unet_name=WAN22_TI2V, weight_dtype="default"))),
                         ("up", ("UniCascadeUniMMVSRLoader", dict(unimmvsr_name=UNIMMVSR_WAN22)))):
        g = Graph()
        model = g.node(loader[0], **loader[1])
        if name == "parent":
            model = g.node("ModelSamplingSD3", model=model[0], shift=1.0)
        pos, neg = text(g, "a red cat runs")
        vae = g.node("VAELoader", vae_name=WAN21_VAE)  # only gives Wan22ImageToVideoLatent its VAE input
        latent = g.node("Wan22ImageToVideoLatent", vae=vae[0], width=64, height=64, length=5, batch_size=1)
        out = g.node("KSampler", model=model[0], seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="simple",
                     positive=pos[0], negative=neg[0], latent_image=latent[0], denoise=1.0)
        g.node("SaveLatent", samples=out[0], filename_prefix=f"{comfy.prefix}_{name}")
        comfy.run(g.prompt())
    parent = load_latent(comfy, f"{comfy.prefix}_parent")
    assert parent.shape[1] == 48 and torch.equal(parent, load_latent(comfy, f"{comfy.prefix}_up"))


def cascade_graph(comfy, prefix, *, references=True, ref_size=(64, 48), steps=4, tile=None, lr_frames=5,
                  hr_size=(64, 48), model=None, reference_scale=1.0, reference_end=0.5, unimmvsr=UNIMMVSR,
                  split_at=None, denoise=1.0, lr_source="images", lr_color=0x3366AA, augmentation=600, rgba=False,
                  multi=None, sampler_name="ipndm", noise_seed=3):
    """Upsampler → Guider → SamplerCustomAdvanced (one call, or two over SplitSigmas) → SaveLatent.
    ``lr_source``: images (LR frames), latent (a VAE-encoded LR latent) or decoded (that latent through core
    VAEDecode, then as frames)."""
    g = Graph()
    pos, neg = text(g, "a red cat runs")
    vae = g.node("VAELoader", vae_name=WAN21_VAE)
    lr = g.node("EmptyImage", width=32, height=24, batch_size=lr_frames, color=lr_color)

    def with_alpha(images):  # an RGBA IMAGE of the same pixels (alpha from the red channel, one per frame)
        return g.node("JoinImageWithAlpha", image=images[0],
                      alpha=g.node("ImageToMask", image=images[0], channel="red")[0])

    if rgba:
        lr = with_alpha(lr)
    lr_inputs = dict(lr_images=lr[0])
    if lr_source != "images":
        lr_latent = g.node("VAEEncode", pixels=lr[0], vae=vae[0])
        lr_inputs = dict(lr_latent=lr_latent[0])
        if lr_source == "decoded":
            lr_inputs = dict(lr_images=g.node("VAEDecode", samples=lr_latent[0], vae=vae[0])[0])
    up = g.node("UniCascadeUniMMVSRUpsampler", vae=vae[0], width=hr_size[0], height=hr_size[1],
                augmentation=augmentation, seed=0, **lr_inputs)
    model = model or g.node("UniCascadeUniMMVSRLoader", unimmvsr_name=unimmvsr)
    guider_inputs = dict(model=model[0], positive=pos[0], negative=neg[0], lr_condition=up[0], text_scale=3.0,
                         reference_scale=reference_scale, reference_end=reference_end, tile_width=0,
                         tile_height=0, tile_overlap=16, chunk_frames=0, chunk_overlap=4)
    if tile:
        guider_inputs.update(tile_width=tile[0], tile_height=tile[1])
    if references:
        ident = g.node("EmptyImage", width=ref_size[0], height=ref_size[1], batch_size=2, color=0xCC8844)
        video = g.node("EmptyImage", width=ref_size[0], height=ref_size[1], batch_size=5, color=0x22AA55)
        if rgba:
            ident, video = with_alpha(ident), with_alpha(video)
        w, h = tile if tile else hr_size
        refs = g.node("UniCascadeUniMMVSRReferences", vae=vae[0], width=w, height=h, id_image_1=ident[0],
                      reference_video_1=video[0])
        guider_inputs["references"] = refs[0]
    guider = g.node("UniCascadeUniMMVSRGuider", **guider_inputs)
    if multi is not None:  # the UniMMVSR Multi-GPU node between the guider and the sampler
        guider = g.node("UniCascadeUniMMVSRMultiGPU", guider=guider[0], **multi)
    sigmas = g.node("BasicScheduler", model=model[0], scheduler="simple", steps=steps, denoise=denoise)
    sampler = g.node("KSamplerSelect", sampler_name=sampler_name)
    noise = g.node("RandomNoise", noise_seed=noise_seed)
    if split_at is None:
        out = g.node("SamplerCustomAdvanced", noise=noise[0], guider=guider[0], sampler=sampler[0], sigmas=sigmas[0],
                     latent_image=up[1])
    else:
        split = g.node("SplitSigmas", sigmas=sigmas[0], step=split_at)
        first = g.node("SamplerCustomAdvanced", noise=noise[0], guider=guider[0], sampler=sampler[0],
                       sigmas=split[0], latent_image=up[1])
        out = g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise")[0], guider=guider[0],
                     sampler=sampler[0], sigmas=split[1], latent_image=first[0])
    g.node("SaveLatent", samples=out[0], filename_prefix=prefix)
    return g


def unimmvsr_records(comfy):
    return [r for r in comfy.trace.records() if r.get("event") == "unimmvsr"]


def test_cascade_with_references_three_then_two_evaluations(comfy):
    comfy.run(cascade_graph(comfy, comfy.prefix, steps=4, reference_end=0.5).prompt())
    latent = load_latent(comfy, comfy.prefix)
    assert latent.shape == (1, 16, 2, 6, 8)  # 5 frames → 2 latent frames; no reference frames in the output
    assert [r["evaluations"] for r in unimmvsr_records(comfy)] == [3, 3, 2, 2]


@pytest.mark.parametrize("unimmvsr, shift", [(UNIMMVSR, 1.0), (UNIMMVSR_SHIFT3, 3.0)])
def test_a_loaded_upscaler_samples_with_its_checkpoints_shift(comfy, unimmvsr, shift):
    """Issue 9.2: BasicScheduler fed straight from the loader gives the σ of the checkpoint's shift (default 1.0,
    not ComfyUI's Wan 8.0), recomputed here from the flow-shift formula."""
    comfy.run(cascade_graph(comfy, comfy.prefix, steps=4, references=False, unimmvsr=unimmvsr).prompt())
    got = [r["sigma"] for r in unimmvsr_records(comfy)]
    want = [shift * t / (1 + (shift - 1) * t) for t in (1.0, 0.75, 0.5, 0.25)]
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("split_at", [1, 2, 3])
def test_reference_threshold_counts_progress_over_split_sigmas(comfy, split_at):
    """Issue 9.4: the same guider in two SamplerCustomAdvanced calls over SplitSigmas switches the reference term
    off once for the whole trajectory (first half of 4 steps), wherever the split is."""
    comfy.run(cascade_graph(comfy, comfy.prefix, steps=4, reference_end=0.5, split_at=split_at).prompt())
    records = unimmvsr_records(comfy)
    assert [r["evaluations"] for r in records] == [3, 3, 2, 2]
    assert [r["u"] for r in records] == pytest.approx([0.0, 0.25, 0.5, 0.75], abs=1e-4)
    assert load_latent(comfy, comfy.prefix).shape == (1, 16, 2, 6, 8)


def test_reference_threshold_with_denoise_below_one(comfy):
    """denoise 0.5: the 2 steps are the second half of the trajectory, past N_ref / steps = 0.5: no reference term."""
    comfy.run(cascade_graph(comfy, comfy.prefix, steps=2, reference_end=0.5, denoise=0.5).prompt())
    records = unimmvsr_records(comfy)
    assert [r["evaluations"] for r in records] == [2, 2]
    assert [r["u"] for r in records] == pytest.approx([0.5, 0.75], abs=1e-4)


def test_lr_latent_input_is_decoded_upscaled_in_pixels_and_encoded(comfy):
    """Issue 9.5: an LR latent gives exactly what its core VAEDecode frames give (decode → bilinear → encode), and
    the LR video matters to a trained upscaler's result."""
    for name, source, color in (("latent", "latent", 0x3366AA), ("decoded", "decoded", 0x3366AA),
                                ("other", "latent", 0xAA3322)):
        comfy.run(cascade_graph(comfy, f"{comfy.prefix}_{name}", references=False, steps=2, unimmvsr=UNIMMVSR_TRAINED,
                                lr_source=source, lr_color=color).prompt())
    latent = load_latent(comfy, f"{comfy.prefix}_latent")
    assert torch.equal(latent, load_latent(comfy, f"{comfy.prefix}_decoded"))
    assert (latent - load_latent(comfy, f"{comfy.prefix}_other")).abs().max() > 1e-3


def test_rgba_inputs_lose_their_alpha_with_a_log_line(comfy):
    """Issue 9.11: the pack's one RGBA rule on the Upsampler's and the References' IMAGE inputs."""
    comfy.run(cascade_graph(comfy, comfy.prefix + "_rgb", steps=2, unimmvsr=UNIMMVSR_TRAINED).prompt())
    comfy.run(cascade_graph(comfy, comfy.prefix + "_rgba", steps=2, unimmvsr=UNIMMVSR_TRAINED, rgba=True).prompt())
    assert torch.equal(load_latent(comfy, comfy.prefix + "_rgb"), load_latent(comfy, comfy.prefix + "_rgba"))
    log = comfy.log_text()
    for name, node in (("lr_images", "UniMMVSR Upsampler"), ("id_image_1", "UniMMVSR References"),
                       ("reference_video_1", "UniMMVSR References")):
        assert f"UniCascade: {node}: {name} is RGBA; its alpha channel is dropped" in log


def test_augmentation_timestep_changes_a_trained_upscalers_result(comfy):
    for t in (200, 600):
        comfy.run(cascade_graph(comfy, f"{comfy.prefix}_{t}", references=False, steps=2, unimmvsr=UNIMMVSR_TRAINED,
                                augmentation=t).prompt())
    assert (load_latent(comfy, f"{comfy.prefix}_200") - load_latent(comfy, f"{comfy.prefix}_600")).abs().max() > 1e-3


def test_references_change_the_result_and_no_references_runs_as_t2v_vsr(comfy):
    comfy.run(cascade_graph(comfy, comfy.prefix + "_refs").prompt())
    comfy.trace.clear()
    comfy.run(cascade_graph(comfy, comfy.prefix + "_none", references=False).prompt())
    assert {r["evaluations"] for r in comfy.trace.records() if r.get("event") == "unimmvsr"} == {2}
    assert "no references are connected: running as T2V-VSR" in comfy.log_text()
    assert (load_latent(comfy, comfy.prefix + "_refs") - load_latent(comfy, comfy.prefix + "_none")).abs().max() > 0


def test_references_of_another_aspect_ratio_are_padded(comfy):
    comfy.run(cascade_graph(comfy, comfy.prefix, ref_size=(80, 20)).prompt())
    assert load_latent(comfy, comfy.prefix).shape == (1, 16, 2, 6, 8)
    assert "scaled to fit and zero-padded to 64x48" in comfy.log_text()


@pytest.mark.parametrize("case, message", [
    ("plain_wan_model", "this is not a UniMMVSR model"),
    ("plain_wan_checkpoint", "plain Wan checkpoint, not a UniMMVSR upscaler"),
    ("truncated", "cannot read this safetensors file"),
    ("lr_frames", "this VAE needs 4n+1"),
])
def test_bad_input_is_reported_and_the_server_goes_on(comfy, case, message):
    if case == "plain_wan_model":
        g = cascade_graph(comfy, comfy.prefix, model=None)
        g.nodes["plain"] = {"class_type": "UNETLoader", "inputs": {"unet_name": WAN21_T2V, "weight_dtype": "default"}}
        guider = next(k for k, v in g.nodes.items() if v["class_type"] == "UniCascadeUniMMVSRGuider")
        g.nodes[guider]["inputs"]["model"] = ["plain", 0]
    elif case in ("plain_wan_checkpoint", "truncated"):
        g = cascade_graph(comfy, comfy.prefix)
        loader = next(k for k, v in g.nodes.items() if v["class_type"] == "UniCascadeUniMMVSRLoader")
        g.nodes[loader]["inputs"]["unimmvsr_name"] = UNIMMVSR_PLAIN_WAN if case == "plain_wan_checkpoint" \
            else UNIMMVSR_TRUNCATED
    else:
        g = cascade_graph(comfy, comfy.prefix, lr_frames=6)
    error = comfy.run_expecting_error(g.prompt())
    assert message in error["exception_message"], error["exception_message"]
    assert error["exception_type"] == "ValueError"  # a message, not the pack's install path as a type
    comfy.run(cascade_graph(comfy, comfy.prefix + "_ok", references=False, steps=2).prompt())
