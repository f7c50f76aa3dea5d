"""UniMMVSR Self-Ensemble (core.unimmvsr.self_ensemble, docs/design.md §3): the space-to-depth latent's flips are
exactly the pixel flips; on the real server the committed demo upscaler with the node equals the average of single
passes over flipped/transposed inputs, flipped back (recomputed here in pixel space); a Wan VAE's condition, Gaussian
noise under a per-channel latent format, Multi-GPU and a guider of another kind are refused with the reason."""
import os
import sys

import pytest
import torch

from harness.paths import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import demo_unimmvsr  # noqa: E402

PIXEL_OPS = {"hflip": lambda v: v.flip(2), "vflip": lambda v: v.flip(1), "transpose": lambda v: v.transpose(1, 2)}


def pixel_copy(frames, ops):
    for op in ops:
        frames = PIXEL_OPS[op](frames)
    return frames.contiguous()


def pixel_back(frames, ops):
    for op in reversed(ops):
        frames = PIXEL_OPS[op](frames)
    return frames.contiguous()


def test_space_to_depth_latent_flips_are_the_pixel_flips(pack):
    s2d = pack("core.autoencoders.space_to_depth")
    ensemble = pack("core.unimmvsr.self_ensemble")
    vae = s2d.SpaceToDepthVAE(4)
    frames = torch.rand(3, 8, 12, 3, generator=torch.Generator().manual_seed(0))   # not square: transposes show
    latent = vae.encode(frames)
    for op, flip in PIXEL_OPS.items():
        assert torch.allclose(vae.decode(s2d.dihedral_latent(latent, op, 4))[0], flip(frames), atol=1e-6), op
    for name, copies in ensemble.ENSEMBLES.items():
        assert len(copies) == int(name.split(" x")[1]) and len(set(copies)) == len(copies)
        for ops in copies:
            seen = ensemble.forward(latent, ops, 4)
            assert torch.allclose(vae.decode(seen)[0], pixel_copy(frames, ops), atol=1e-6), ops
            assert torch.equal(ensemble.inverse(seen, ops, 4), latent), ops
    with pytest.raises(ValueError, match="not a space-to-depth latent of factor 4"):
        s2d.dihedral_latent(torch.zeros(1, 40, 1, 2, 2), "hflip", 4)


def test_self_ensemble_is_the_mean_of_flipped_single_passes_on_the_server(comfy):
    """The committed checkpoint, with references, through the shipped workflow (its UniMMVSR Self-Ensemble, x8)
    against 8 single passes (the same workflow without that node) on flipped/transposed LR, ID image and reference
    video, each flipped back and averaged. Outputs are 8-bit PNGs, so they agree within one grey level wherever no
    copy saturated (a clipped PNG cannot show what the ensemble averaged); the single
    passes themselves differ (the model is not flip-invariant), and the ensemble is not the first of them."""
    from core.unimmvsr.self_ensemble import ENSEMBLES
    crop = demo_unimmvsr.eval_crops(max_crops=5)[4]   # the centre of the first window: the face
    prompt = demo_unimmvsr.demo_prompt(comfy, "UniCascadeTestTinyTextEncoderLoader")
    node = next(n for n in prompt.values() if n["class_type"] == demo_unimmvsr.ENSEMBLE_NODE)
    copies = ENSEMBLES[node["inputs"]["copies"]]
    assert len(copies) == 8
    singles = []
    for k, ops in enumerate(copies):
        names = {}
        for key in ("lr", "id", "ref", "wrong"):
            names[key] = f"{comfy.prefix}_{k}_{key}.png"
            demo_unimmvsr.save_frames(pixel_copy(crop[key], ops), os.path.join(comfy.base, "input", names[key]))
        entry = comfy.run(demo_unimmvsr.configure(prompt, names, "refs", f"{comfy.prefix}_{k}", single_pass=True))
        singles.append(pixel_back(demo_unimmvsr.output_frames(comfy, entry), ops))
        if k == 0:
            plain_names = names
    comfy.trace.clear()
    entry = comfy.run(demo_unimmvsr.configure(prompt, plain_names, "refs", f"{comfy.prefix}_ensemble"))
    ensemble = demo_unimmvsr.output_frames(comfy, entry)
    expected = torch.stack(singles).mean(0)
    assert ensemble.shape == (5, 64, 64, 3)
    # where a single pass saturated, its PNG holds the clipped value while the ensemble averaged the unclipped
    # latents: compare where no copy reached 0 or 255 (nearly every pixel)
    stacked = torch.stack(singles)
    unclipped = ((stacked > 0.5 / 255) & (stacked < 254.5 / 255)).all(0)
    assert unclipped.float().mean() > 0.95
    assert (ensemble - expected)[unclipped].abs().max() <= 1.01 / 255
    assert (torch.stack(singles) - singles[0]).abs().amax(dim=(1, 2, 3, 4)).max() > 4 / 255   # copies differ
    assert (ensemble - singles[0]).abs().max() > 2 / 255                                      # so the mean moves
    records = [r for r in comfy.trace.records() if r.get("event") == "unimmvsr"]
    assert sorted(tuple(r["copy"]) for r in records) == sorted(copies)


def test_self_ensemble_refuses_a_wan_vae_condition_and_other_guiders(pack, tmp_path):
    import comfy.samplers
    from safetensors.torch import save_file

    from core.unimmvsr.checkpoint import init_from_t2v
    from harness.tiny_models import WAN22_TI2V, WAN_VARIANTS, build_wan

    sd, meta = init_from_t2v({k: v.float()
                              for k, v in build_wan(seed=3, **WAN_VARIANTS[WAN22_TI2V]).state_dict().items()})
    save_file(sd, str(tmp_path / "wan22.safetensors"), metadata=meta)
    model = pack("model_loaders.unimmvsr").load_unimmvsr(str(tmp_path / "wan22.safetensors"), "wan22.safetensors")
    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    cond = [[torch.zeros(1, 12, 4096), {}]]

    def guider(lr):
        return pack("nodes.unimmvsr_guider").UniMMVSRGuiderNode.execute(model, cond, cond, lr, 0.0, 0.0, 0.3, 0, 0, 128,
                                                                    0, 8).result[0]

    node = pack("nodes.unimmvsr_self_ensemble").UniMMVSRSelfEnsemble
    wan_vae = guider(LRCondition(torch.zeros(1, 48, 2, 4, 4), 0.0, spatial_factor=16))      # a Wan 2.2 VAE's latent
    with pytest.raises(ValueError, match="guider: its LR condition .* the self-ensemble needs the Space-to-Depth VAE"):
        node.execute(wan_vae, "flips x4")
    s2d = guider(LRCondition(torch.zeros(1, 48, 2, 4, 4), 0.0, spatial_factor=4, temporal_factor=1, space_to_depth=4))
    out = node.execute(s2d, "flips x4").result[0]
    assert out is not s2d and len(out.copies) == 4 and s2d.copies == ((),)   # the cached guider is untouched
    # exact only from the LR start (Wan 2.2's per-channel normalisation would rescale flipped Gaussian noise)
    out.check_self_ensemble(model.model.process_latent_in(out.lr_condition.latent))
    with pytest.raises(ValueError, match="connect UniMMVSR Start From LR"):
        out.check_self_ensemble(torch.randn(1, 48, 2, 4, 4, generator=torch.Generator().manual_seed(1)))
    multi_gpu = pack("nodes.unimmvsr_multi_gpu").UniMMVSRMultiGPU
    with pytest.raises(ValueError, match="cannot be combined with UniMMVSR Multi-GPU yet"):
        multi_gpu.execute(out, 2, 0, "", "auto", 30.0)
    with pytest.raises(ValueError, match="Multi-GPU, which cannot be combined with UniMMVSR Self-Ensemble yet"):
        node.execute(multi_gpu.execute(s2d, 2, 0, "", "auto", 30.0).result[0], "flips x4")
    with pytest.raises(ValueError, match="copies: 'rotate' is not one of"):
        node.execute(s2d, "rotate")
    with pytest.raises(ValueError, match="a UniMMVSR Guider is needed, got CFGGuider"):
        node.execute(comfy.samplers.CFGGuider(model), "flips x4")
