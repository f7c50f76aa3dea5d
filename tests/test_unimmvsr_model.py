"""UniMMVSR's model parts in-process on ComfyUI's real Wan classes, loaded by the pack's loader: reference-token
RoPE positions, the guider's combination of the three predictions (A.3 eq. 2) on predictions recorded in a real
sampling run, the LR condition the backbone receives (forward process in the model's latent space), the
augmentation micro-condition, the checkpoint's sampling shift, and Wan 2.2 (16× VAE) tiles with references."""

import pytest
import torch

from harness.tiny_models import WAN_VARIANTS, WAN22_TI2V, as_trained, build_wan


def load_upscaler(pack, tmp_path, sd, meta, name="m.safetensors"):
    from safetensors.torch import save_file
    path = str(tmp_path / name)
    save_file(sd, path, metadata=meta)
    return pack("model_loaders.unimmvsr").load_unimmvsr(path, name)


@pytest.fixture(scope="module")
def unimmvsr(pack, tmp_path_factory):
    from core.unimmvsr.checkpoint import init_from_t2v
    sd, meta = init_from_t2v({k: v.float() for k, v in build_wan(seed=0).state_dict().items()})
    # a trained upscaler has non-zero LR weights and augmentation embedding: give them values
    return load_upscaler(pack, tmp_path_factory.mktemp("unimmvsr"), as_trained(sd), meta)


def guider_for(pack, model, lr, refs, *, reference_end=0.3, tile=(0, 0), overlap=16, cond=None):
    g = torch.Generator().manual_seed(2)
    positive = cond or [[torch.randn(1, 12, 4096, generator=g), {}]]
    negative = cond or [[torch.randn(1, 12, 4096, generator=g), {}]]
    node = pack("nodes.unimmvsr_guider").UniMMVSRGuiderNode
    return node.execute(model, positive, negative, lr, 3.0, 1.0, reference_end, tile[0], tile[1], overlap, 0, 4,
                        refs).result[0]


def capture_diffusion_inputs(model):
    """A clone of ``model`` whose diffusion model records its input x (noisy ‖ c_concat) on every call, through
    ComfyUI's own wrapper mechanism."""
    import comfy.patcher_extension
    seen = []

    def record(executor, x, *args, **kwargs):
        seen.append(x.detach().clone())
        return executor(x, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_capture", record)
    return clone, seen


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

    from core.unimmvsr import tiling
    from core.unimmvsr.references import Reference
    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    keys = pack("samplers.unimmvsr_model")
    g = torch.Generator().manual_seed(2)
    lr = LRCondition(torch.randn(1, 16, 2, 6, 8, generator=g), 600.0)
    refs = [Reference("id_image", torch.randn(1, 16, 1, 6, 8, generator=g)),
            Reference("reference_video", torch.randn(1, 16, 2, 6, 8, generator=g))]
    guider = guider_for(pack, unimmvsr, lr, refs, reference_end=0.3)
    whole = tiling.Window(0, 2, 0, 6, 0, 8)
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
                to[keys.REFERENCES_KEY] = guider.evaluator(x.shape).reference_tokens(2) if with_refs else None
                o["transformer_options"] = to
                conds_w = guider.evaluator(x.shape)._window_conds(guider.conds[conds], whole)
                preds[name] = comfy.samplers.calc_cond_batch(guider.inner_model, [conds_w], x, sigma, o)[0]
            recorded.append((denoised, preds))
            x = denoised + (x - denoised) * (sigmas[i + 1] / sigmas[i])
        return x

    sigmas = torch.tensor([1.0, 0.6, 0.0])  # shift 1.0: u = 0 (reference term on), then u = 0.4 (past 0.3: off)
    noise = torch.randn(1, 16, 2, 6, 8, generator=g)
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(sample), sigmas, seed=0)
    (d0, p0), (d1, p1) = recorded
    want0 = p0["full"] + 3.0 * (p0["full"] - p0["no_text"]) + 1.0 * (p0["full"] - p0["no_ref"])  # s_ref on
    want1 = p1["full"] + 3.0 * (p1["full"] - p1["no_text"])                                       # past the threshold
    assert torch.allclose(d0, want0, atol=1e-5) and torch.allclose(d1, want1, atol=1e-5)
    assert (p0["full"] - p0["no_ref"]).abs().max() > 1e-4  # the references matter to the prediction


def test_the_lr_condition_the_model_receives_is_the_forward_process_in_its_latent_space(pack, unimmvsr):
    """Issue 9.1: (1 − σ)·z_model + σ·ε with unit-variance ε, z_model from the latent format's own constants."""
    import comfy.latent_formats
    import comfy.samplers
    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    g = torch.Generator().manual_seed(5)
    fmt = comfy.latent_formats.Wan21()
    # a raw VAE latent with the statistics the format normalises away
    raw = fmt.latents_mean + fmt.latents_std * torch.randn(1, 16, 3, 32, 32, generator=g)
    model, seen = capture_diffusion_inputs(unimmvsr)
    guider = guider_for(pack, model, LRCondition(raw, 600.0, seed=9), None)
    noise = torch.randn(raw.shape, generator=g)
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), torch.tensor([1.0, 0.0]),
                  seed=0)
    assert len(seen) == 2 and seen[0].shape[1] == 32  # full and no-text: noisy ‖ LR condition
    received = seen[0][:, 16:].float()
    assert torch.equal(received, seen[1][:, 16:].float())
    z_model = (raw - fmt.latents_mean) * fmt.scale_factor / fmt.latents_std
    eps = (received - 0.4 * z_model) / 0.6
    per_channel_mean = eps.mean(dim=(0, 2, 3, 4))
    per_channel_std = eps.std(dim=(0, 2, 3, 4))
    assert per_channel_mean.abs().max() < 0.1, per_channel_mean
    assert (per_channel_std - 1).abs().max() < 0.1, per_channel_std
    # and ε is the seeded noise of the one augmentation function the trainer shares
    from core.unimmvsr.augmentation import augmentation_noise
    assert torch.allclose(eps, augmentation_noise(raw.shape, 9), atol=1e-4)


def test_augmentation_micro_condition(pack, tmp_path):
    """Issue 9.5: a non-zero embedding of t_aug changes the prediction, different t_aug differ, and the zero-initialised
    embedding leaves the prediction exactly as without it."""
    import comfy.samplers
    from core.unimmvsr.checkpoint import init_from_t2v
    keys = pack("samplers.unimmvsr_model")
    sd, meta = init_from_t2v({k: v.float() for k, v in build_wan(seed=0).state_dict().items()})
    trained = as_trained(sd)
    zero_embedding = dict(trained)
    for k in ("linear_2.weight", "linear_2.bias"):
        zero_embedding["unimmvsr.aug_embedding." + k] = torch.zeros_like(trained["unimmvsr.aug_embedding." + k])
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 2, 6, 8, generator=g)
    concat = torch.randn(1, 16, 2, 6, 8, generator=g)
    context = torch.randn(1, 12, 4096, generator=g)

    def predict(model, aug_t):
        import comfy.model_management
        import comfy.model_patcher
        comfy.model_management.load_models_gpu([model])  # applies the model's object patches, as sampling does
        options = comfy.model_patcher.create_model_options_clone(model.model_options)
        to = options.setdefault("transformer_options", {})
        to[keys.AUG_T_KEY] = aug_t
        to["wrappers"] = model.wrappers  # as CFGGuider.outer_sample hands them to the model
        with torch.no_grad():  # BaseModel.apply_model: ComfyUI's path from c_concat to the diffusion model
            return model.model.apply_model(x, torch.tensor([0.7]), c_concat=concat, c_crossattn=context,
                                           transformer_options=to)

    m_trained = load_upscaler(pack, tmp_path, trained, meta, "trained.safetensors")
    m_zero = load_upscaler(pack, tmp_path, zero_embedding, meta, "zero.safetensors")
    a, b = predict(m_trained, 200.0), predict(m_trained, 600.0)
    assert (a - b).abs().max() > 1e-4                      # different t_aug, different outputs
    z200, z600 = predict(m_zero, 200.0), predict(m_zero, 600.0)
    assert torch.equal(z200, z600)                          # the zero embedding adds exactly nothing …
    assert (a - z200).abs().max() > 1e-4                    # … and a non-zero one changes the output
    # the zero embedding equals the same weights run as a plain Wan model (no UniMMVSR wrapper at all)
    import comfy.patcher_extension
    plain = m_zero.clone()
    plain.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, keys.WRAPPER_KEY)
    assert not plain.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {}).get(keys.WRAPPER_KEY)
    assert torch.equal(z200, predict(plain, 200.0))


def test_loaded_upscaler_samples_with_the_checkpoints_shift(pack, tmp_path):
    """Issue 9.2: σ of the `simple` schedule recomputed here from the flow shift formula."""
    import comfy.samplers
    from core.unimmvsr.checkpoint import init_from_t2v
    wan = {k: v.float() for k, v in build_wan(seed=0).state_dict().items()}

    def expected(shift, steps):
        t = [1.0 - i / steps for i in range(steps)]
        return [shift * u / (1 + (shift - 1) * u) for u in t] + [0.0]

    for shift, name in ((None, "default.safetensors"), (3.0, "shift3.safetensors")):
        sd, meta = init_from_t2v(wan) if shift is None else init_from_t2v(wan, shift=shift)
        if shift is None:
            meta.pop("unimmvsr_shift")  # an older file without the key: the paper's 1.0
        model = load_upscaler(pack, tmp_path, sd, meta, name)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
        assert sigmas.tolist() == pytest.approx(expected(shift or 1.0, 4), abs=1e-5)
    assert expected(8.0, 4)[1] == pytest.approx(0.96, abs=1e-3)  # what ComfyUI's Wan default would have given


def test_wan22_16x_vae_tiles_with_references(pack, tmp_path):
    """Issue 9.3: pixel tile sizes become latent sizes by the VAE's own factor (16 for Wan 2.2), so references
    encoded at the tile size fit every window."""
    import comfy.samplers

    from core.unimmvsr.checkpoint import init_from_t2v
    from core.unimmvsr.references import Reference
    sd, meta = init_from_t2v({k: v.float()
                              for k, v in build_wan(seed=3, **WAN_VARIANTS[WAN22_TI2V]).state_dict().items()})
    model = load_upscaler(pack, tmp_path, sd, meta, "wan22.safetensors")
    model, seen = capture_diffusion_inputs(model)
    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    g = torch.Generator().manual_seed(4)
    # what the Upsampler makes with a 16× VAE at 128×96 pixels and 5 frames; references encoded at the 64×64 tile
    lr = LRCondition(torch.randn(1, 48, 2, 6, 8, generator=g), 600.0, spatial_factor=16, temporal_factor=4)
    refs = [Reference("id_image", torch.randn(1, 48, 1, 4, 4, generator=g))]
    cond = [[torch.randn(1, 12, 4096, generator=g), {}]]
    guider = guider_for(pack, model, lr, refs, tile=(64, 64), overlap=32, cond=cond)
    assert guider.tile == (2, 4, 4) and guider.overlap == (1, 2, 2)
    noise = torch.randn(1, 48, 2, 6, 8, generator=g)
    out = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                        torch.linspace(1, 0, 3), seed=0)
    assert out.shape == (1, 48, 2, 6, 8) and torch.isfinite(out).all()
    # every model call ran on a 4×4-latent window (64 px / 16), the size the references were encoded at
    assert seen and {tuple(x.shape[2:]) for x in seen} == {(2, 4, 4)}
    assert {x.shape[1] for x in seen} == {96}
    with pytest.raises(ValueError, match="latent channels"):
        guider_for(pack, model, LRCondition(torch.zeros(1, 16, 2, 4, 4), 600.0), refs)
    with pytest.raises(ValueError, match="multiple of this VAE's 16"):
        guider_for(pack, model, lr, refs, tile=(72, 72))


def test_start_from_lr_gives_the_lr_latent_in_the_models_space(pack, unimmvsr):
    """The NOISE of "UniMMVSR Start From LR" (for upscalers trained with noise = "lr"): the LR latent normalised by
    the latent format's own constants; a latent of another size is refused."""
    import comfy.latent_formats
    node = pack("nodes.unimmvsr_start_from_lr").UniMMVSRStartFromLR
    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    raw = torch.randn(1, 16, 2, 6, 8, generator=torch.Generator().manual_seed(7)) * 3 + 1
    noise = node.execute(unimmvsr, LRCondition(raw, 0.0)).result[0]
    fmt = comfy.latent_formats.Wan21()
    got = noise.generate_noise({"samples": torch.zeros_like(raw)})
    assert torch.allclose(got, (raw - fmt.latents_mean) * fmt.scale_factor / fmt.latents_std, atol=1e-6)
    with pytest.raises(ValueError, match="sample the Upsampler's hr_latent"):
        noise.generate_noise({"samples": torch.zeros(1, 16, 2, 6, 6)})
