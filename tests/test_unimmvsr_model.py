"""UniMMVSR's model parts in-process on ComfyUI's real Wan classes: reference-token RoPE positions and the
guider's combination of the three predictions (A.3 eq. 2) on predictions recorded in a real sampling run."""
import pytest
import torch

from harness.tiny_models import build_wan


@pytest.fixture(scope="module")
def unimmvsr(pack, tmp_path_factory):
    from safetensors.torch import save_file

    from core.unimmvsr.checkpoint import init_from_t2v
    loader = pack("model_loaders.unimmvsr")
    sd, meta = init_from_t2v({k: v.float() for k, v in build_wan(seed=0).state_dict().items()})
    # a trained upscaler has non-zero LR weights and augmentation embedding: give them values
    g = torch.Generator().manual_seed(1)
    sd["patch_embedding.weight"][:, 16:] = torch.randn(sd["patch_embedding.weight"][:, 16:].shape, generator=g) * 0.05
    sd["unimmvsr.aug_embedding.linear_2.weight"] = torch.randn(128, 128, generator=g) * 0.05
    path = str(tmp_path_factory.mktemp("unimmvsr") / "m.safetensors")
    save_file(sd, path, metadata=meta)
    return loader.load_unimmvsr(path, "m.safetensors")


def test_reference_tokens_get_their_own_temporal_rope_and_the_normal_spatial_grid(pack, unimmvsr):
    model_mod = pack("samplers.unimmvsr_model")
    from core.unimmvsr.reference_layout import layout
    dm = unimmvsr.model.diffusion_model
    lay = layout(3, [1, 1], [2])
    freqs = model_mod.reference_freqs(dm, 3, 8, 10, lay, torch.device("cpu"), torch.float32)
    # independent: explicit (t, h, w) ids for every token, through Wan's own rope embedder
    temporal = [0, 1, 2, 20, 21, 30, 31]
    ids = torch.tensor([[t, h, w] for t in temporal for h in range(4) for w in range(5)], dtype=torch.float32)
    want = dm.rope_embedder(ids[None]).movedim(1, 2)
    assert freqs.shape == want.shape
    assert torch.allclose(freqs, want, atol=1e-6)


def test_guider_combines_the_three_predictions_as_equation_2(pack, unimmvsr):
    import comfy.samplers

    from core.unimmvsr.references import Reference
    guider_node = pack("nodes.unimmvsr_guider").UniMMVSRGuider
    LRCondition = pack("nodes.unimmvsr_upsampler").LRCondition
    keys = pack("samplers.unimmvsr_model")
    g = torch.Generator().manual_seed(2)
    lr = LRCondition(torch.randn(1, 16, 2, 6, 8, generator=g), 600.0)
    refs = [Reference("id_image", torch.randn(1, 16, 1, 6, 8, generator=g)),
            Reference("reference_video", torch.randn(1, 16, 2, 6, 8, generator=g))]
    positive = [[torch.randn(1, 12, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 12, 4096, generator=g), {}]]
    guider = guider_node.execute(unimmvsr, positive, negative, lr, 3.0, 1.0, 1, 0, 0, 16, 0, 4, refs).result[0]
    recorded = []

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        options = extra_args["model_options"]
        for i in range(len(sigmas) - 1):
            sigma = sigmas[i] * x.new_ones([x.shape[0]])
            denoised = model(x, sigma, **extra_args)
            # the three predictions, computed here from the processed conds
            preds = {}
            for name, conds, with_refs in (("full", "positive", True), ("no_text", "negative", True),
                                           ("no_ref", "positive", False)):
                o = dict(options)
                to = dict(o.get("transformer_options", {}))
                to[keys.AUG_T_KEY] = 600.0
                to[keys.REFERENCES_KEY] = guider._reference_tokens(2) if with_refs else None
                o["transformer_options"] = to
                preds[name] = comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds[conds]], x, sigma, o)[0]
            recorded.append((denoised, preds))
            x = denoised + (x - denoised) * (sigmas[i + 1] / sigmas[i])
        return x

    sigmas = torch.tensor([1.0, 0.6, 0.0])
    noise = torch.randn(1, 16, 2, 6, 8, generator=g)
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(sample), sigmas, seed=0)
    (d0, p0), (d1, p1) = recorded
    want0 = p0["full"] + 3.0 * (p0["full"] - p0["no_text"]) + 1.0 * (p0["full"] - p0["no_ref"])  # s_ref on
    want1 = p1["full"] + 3.0 * (p1["full"] - p1["no_text"])                                       # N_ref = 1: off
    assert torch.allclose(d0, want0, atol=1e-5) and torch.allclose(d1, want1, atol=1e-5)
    assert (p0["full"] - p0["no_ref"]).abs().max() > 1e-4  # the references matter to the prediction


def test_wan22_48_channel_upscaler_samples_with_references(pack, tmp_path):
    import comfy.samplers
    from safetensors.torch import save_file

    from core.unimmvsr.checkpoint import init_from_t2v
    from core.unimmvsr.references import Reference
    from harness.tiny_models import WAN_VARIANTS, WAN22_TI2V
    sd, meta = init_from_t2v({k: v.float() for k, v in build_wan(seed=3, **WAN_VARIANTS[WAN22_TI2V]).state_dict().items()})
    path = str(tmp_path / "wan22.safetensors")
    save_file(sd, path, metadata=meta)
    model = pack("model_loaders.unimmvsr").load_unimmvsr(path, "wan22.safetensors")
    LRCondition = pack("nodes.unimmvsr_upsampler").LRCondition
    g = torch.Generator().manual_seed(4)
    lr = LRCondition(torch.randn(1, 48, 2, 4, 4, generator=g), 600.0)
    refs = [Reference("id_image", torch.randn(1, 48, 1, 4, 4, generator=g))]
    cond = [[torch.randn(1, 12, 4096, generator=g), {}]]
    guider = pack("nodes.unimmvsr_guider").UniMMVSRGuider.execute(model, cond, cond, lr, 3.0, 1.0, 1, 0, 0, 16, 0, 4,
                                                                  refs).result[0]
    noise = torch.randn(1, 48, 2, 4, 4, generator=g)
    out = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                        torch.linspace(1, 0, 3), seed=0)
    assert out.shape == (1, 48, 2, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="latent channels"):
        pack("nodes.unimmvsr_guider").UniMMVSRGuider.execute(
            model, cond, cond, LRCondition(torch.zeros(1, 16, 2, 4, 4), 600.0), 3.0, 1.0, 1, 0, 0, 16, 0, 4, refs)
