"""The trainer's model against the sampler's (UniMMVSR §3.2; issue "One model, two users"): the trainer's forward,
turned into x0 by ComfyUI's own formula, equals what the sampling path's model call returns, bit for bit, with
and without references; the trainer's parent loading, LoRA merge and export round-trip through the loader."""
import os

import pytest
import torch

from harness.paths import REPO
from harness.tiny_models import WAN_VARIANTS, WAN22_TI2V, build_wan


@pytest.fixture
def parent(tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path / "parent.safetensors")
    save_file({k: v.contiguous() for k, v in build_wan(seed=0).state_dict().items()}, path)
    return path


def model_config(pack, parent):
    return pack("training.unimmvsr.config").ModelConfig(parent=parent, vae="")


def give_trained_values(wan, seed=1):
    """Non-zero LR channels and augmentation embedding, so every UniMMVSR part takes part in the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = wan.patch_embedding.weight
        w[:, w.shape[1] // 2:] = torch.randn(w[:, w.shape[1] // 2:].shape, generator=g) * 0.05
        aug = wan.unimmvsr_aug_embedding.linear_2
        aug.weight.copy_(torch.randn(aug.weight.shape, generator=g) * 0.05)


def train_module_and_loss_args(pack, parent):
    """The tiny parent loaded for training with trained-looking UniMMVSR parts: (patcher, TrainModule, the positional
    arguments flow_matching_loss(es) takes after the module, latents and draw)."""
    model_mod = pack("training.unimmvsr.model")
    patcher, _, _ = model_mod.load_for_training(parent, model_config(pack, parent), torch.device("cpu"))
    wan = patcher.model.diffusion_model
    give_trained_values(wan)
    module = model_mod.TrainModule(wan).eval()
    args = (patcher.model.process_latent_in, patcher.get_model_object("model_sampling").timestep, 20, 30,
            torch.device("cpu"), torch.float32)
    return patcher, module, args


@pytest.mark.parametrize("with_references", [False, True])
def test_trainer_forward_equals_the_sampling_forward_bitwise(pack, parent, with_references):
    import comfy.model_management
    model_mod = pack("training.unimmvsr.model")
    keys = pack("samplers.unimmvsr_model")
    from core.unimmvsr.forward import reference_tokens
    patcher, meta, _ = model_mod.load_for_training(parent, model_config(pack, parent), torch.device("cpu"))
    wan = patcher.model.diffusion_model
    give_trained_values(wan)
    module = model_mod.TrainModule(wan, gradient_checkpointing=True).eval()
    g = torch.Generator().manual_seed(3)
    z0, noise, lr = (torch.randn(1, 16, 2, 6, 8, generator=g) for _ in range(3))
    context = torch.randn(1, 12, 4096, generator=g)
    sigma = torch.tensor([0.7])
    zt = (1 - sigma) * z0 + sigma * noise
    refs = None
    if with_references:
        raw = [("id_image", torch.randn(1, 16, 1, 6, 8, generator=g)),
               ("reference_video", torch.randn(1, 16, 2, 6, 8, generator=g))]
        refs = reference_tokens(raw, 2, 20, 30, patcher.model.process_latent_in)
    timestep = patcher.get_model_object("model_sampling").timestep(sigma)
    with torch.no_grad():
        ours = module(torch.cat([zt, lr], 1), timestep, context, torch.tensor([400.0]), refs)
        comfy.model_management.load_models_gpu([patcher])
        options = {"wrappers": patcher.wrappers, keys.AUG_T_KEY: 400.0, keys.REFERENCES_KEY: refs}
        sampled_x0 = patcher.model.apply_model(zt, sigma, c_concat=lr, c_crossattn=context,
                                               transformer_options=options)
    trained_x0 = patcher.model.model_sampling.calculate_denoised(sigma, ours, zt)
    assert torch.equal(trained_x0, sampled_x0)
    # and the comparison can fail: another augmentation timestep changes the prediction
    with torch.no_grad():
        other = module(torch.cat([zt, lr], 1), timestep, context, torch.tensor([200.0]), refs)
    assert (other - ours).abs().max() > 1e-5


def gradients(model_mod, wan, seed: int, checkpointing: bool) -> dict:
    """Every parameter's gradient of a squared-output loss through the TrainModule on a fixed random input."""
    g = torch.Generator().manual_seed(seed)
    x, context = torch.randn(1, 32, 2, 6, 8, generator=g), torch.randn(1, 12, 4096, generator=g)
    module = model_mod.TrainModule(wan, gradient_checkpointing=checkpointing).train()
    wan.zero_grad(set_to_none=True)
    module(x, torch.tensor([500.0]), context, torch.tensor([300.0])).square().mean().backward()
    return {n: p.grad.clone() for n, p in wan.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(pack, parent):
    model_mod = pack("training.unimmvsr.model")
    patcher, _, _ = model_mod.load_for_training(parent, model_config(pack, parent), torch.device("cpu"))
    wan = patcher.model.diffusion_model
    give_trained_values(wan)
    # (enabling is for good: without first, then with)
    grads = [gradients(model_mod, wan, seed=4, checkpointing=checkpointing) for checkpointing in (False, True)]
    assert all("forward" in b.__dict__ for b in wan.blocks)  # the blocks do recompute
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name


def eager_rope1(x, freqs):
    """Wan's RoPE written out (RoFormer's rotation of adjacent channel pairs), in float64: each pair (a, b) becomes
    (a·cos − b·sin, a·sin + b·cos), cos and sin read from the host's (cos, −sin; sin, cos) blocks."""
    cos, sin = freqs[..., 0, 0].double(), freqs[..., 1, 0].double()
    pairs = x.double().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(x.shape).to(x.dtype)


def test_gradients_through_the_hosts_wan_rope_equal_the_eager_formula(pack, parent, monkeypatch):
    """The trainer backpropagates through the host's own Wan on every supported ComfyUI (newer ones route RoPE
    through a comfy-kitchen op without a backward unless the trainer asks for the differentiable path): its
    gradients equal those of the same model with RoPE replaced by the formula written out above, with and without
    gradient checkpointing — and differ when RoPE is left out, so the comparison can fail."""
    import comfy.ldm.wan.model as wan_model
    model_mod = pack("training.unimmvsr.model")
    patcher, _, _ = model_mod.load_for_training(parent, model_config(pack, parent), torch.device("cpu"))
    wan = patcher.model.diffusion_model
    give_trained_values(wan)
    host = gradients(model_mod, wan, seed=5, checkpointing=False)
    host_checkpointed = gradients(model_mod, wan, seed=5, checkpointing=True)
    monkeypatch.setattr(wan_model, "apply_rope1", eager_rope1)
    eager = gradients(model_mod, wan, seed=5, checkpointing=True)
    monkeypatch.setattr(wan_model, "apply_rope1", lambda x, freqs: x)
    unrotated = gradients(model_mod, wan, seed=5, checkpointing=True)
    assert host.keys() == eager.keys() == host_checkpointed.keys() and len(host) > 10
    for name in host:
        assert torch.allclose(host[name], eager[name], atol=1e-6, rtol=1e-4), name
        assert torch.allclose(host_checkpointed[name], eager[name], atol=1e-6, rtol=1e-4), name
    q_weight = "blocks.0.self_attn.q.weight"
    assert (unrotated[q_weight] - eager[q_weight]).abs().max() > 1e-4 * eager[q_weight].abs().max()


def test_compiled_blocks_train_like_eager_ones_and_keep_the_checkpoint_layout(pack, parent, tmp_path, monkeypatch):
    """[training] compile: torch.compile'd blocks (with gradient checkpointing, as the trainer sets them up) give the
    eager loss and gradients to float tolerance, with the same parameter names (so the same checkpoint); without a
    C++ compiler on the PATH the option is refused with the reason."""
    model_mod = pack("training.unimmvsr.model")
    runs = []
    for compiled in (False, True):
        patcher, _, _ = model_mod.load_for_training(parent, model_config(pack, parent), torch.device("cpu"))
        wan = patcher.model.diffusion_model
        give_trained_values(wan)
        module = model_mod.TrainModule(wan, gradient_checkpointing=True).train()
        if compiled:
            model_mod.compile_blocks(wan, torch.device("cpu"))
            assert all(b._compiled_call_impl is not None for b in wan.blocks)
        g = torch.Generator().manual_seed(4)
        x, context = torch.randn(2, 32, 2, 6, 8, generator=g), torch.randn(2, 12, 4096, generator=g)
        loss = module(x, torch.tensor([500.0, 120.0]), context, torch.tensor([300.0, 0.0])).square().mean()
        loss.backward()
        runs.append((loss.item(), {n: p.grad.clone() for n, p in wan.named_parameters() if p.grad is not None},
                     list(module.state_dict())))
    (eager_loss, eager_grads, eager_keys), (loss, grads, keys) = runs
    assert keys == eager_keys
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    assert grads.keys() == eager_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        assert grad.abs().max() > 0 or eager_grads[name].abs().max() == 0, name
        assert torch.allclose(grad, eager_grads[name], atol=1e-6, rtol=1e-3), name
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match=r"compile = true needs a C\+\+ compiler"):
        model_mod.compile_blocks(wan, torch.device("cpu"))


def test_a_parent_that_is_not_wan_is_refused(pack, tmp_path):
    from safetensors.torch import save_file

    from harness.tiny_models import build_sd3
    path = str(tmp_path / "sd3.safetensors")
    save_file({k: v.contiguous() for k, v in build_sd3().state_dict().items()}, path)
    model_mod = pack("training.unimmvsr.model")
    with pytest.raises(ValueError, match="parent sd3.safetensors: not a Wan diffusion model"):
        model_mod.load_for_training(path, model_config(pack, path), torch.device("cpu"))
    broken = str(tmp_path / "broken.safetensors")
    with open(broken, "wb") as f:
        f.write(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot read this safetensors file"):
        model_mod.load_for_training(broken, model_config(pack, broken), torch.device("cpu"))


@pytest.mark.parametrize("variant", ["wan2.1", "wan2.2"])
def test_lora_merge_and_export_load_through_the_loader(pack, tmp_path, variant):
    from safetensors.torch import save_file
    model_mod = pack("training.unimmvsr.model")
    loader = pack("model_loaders.unimmvsr")
    kwargs = WAN_VARIANTS[WAN22_TI2V] if variant == "wan2.2" else {}
    parent = str(tmp_path / "parent.safetensors")
    save_file({k: v.contiguous() for k, v in build_wan(seed=5, **kwargs).state_dict().items()}, parent)
    patcher, meta, _ = model_mod.load_for_training(parent, model_config(pack, parent), torch.device("cpu"))
    wan = patcher.model.diffusion_model
    model_mod.add_lora(wan, rank=4, alpha=8)
    trainable = [n for n, p in wan.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith(("patch_embedding.", "unimmvsr_aug_embedding."))
                             for n in trainable)
    with torch.no_grad():  # a LoRA that learnt something (B starts at zero)
        for n, p in wan.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    c = 48 if variant == "wan2.2" else 16
    g = torch.Generator().manual_seed(6)
    x, context = torch.randn(1, 2 * c, 2, 4, 4, generator=g), torch.randn(1, 12, 4096, generator=g)
    module = model_mod.TrainModule(wan).eval()
    with torch.no_grad():
        live = module(x, torch.tensor([500.0]), context, torch.tensor([300.0]))
    path = str(tmp_path / "exported.safetensors")
    sd = {k[len("wan."):]: v for k, v in module.state_dict().items()}
    model_mod.export(sd, meta, path, lora_scale=8 / 4, dtype=torch.float32)
    loaded = loader.load_unimmvsr(path, "exported.safetensors")
    from core.unimmvsr.forward import unimmvsr_forward
    dm = loaded.model.diffusion_model
    with torch.no_grad():
        merged = unimmvsr_forward(dm, dm.unimmvsr_aug_embedding, x, torch.tensor([500.0]), context, aug_t=300.0)
    assert torch.allclose(live, merged, atol=1e-4)
    assert not any("lora" in k for k in loaded.model.diffusion_model.state_dict())


def test_a_micro_batch_runs_as_one_forward_per_shape_with_each_samples_own_loss(pack, parent):
    """The trainer stacks a micro-batch's samples of one shape into one forward (training.micro_batch): each keeps
    its σ, t_aug, noise seed, prompt and references, so the per-sample losses equal one-by-one forwards."""
    import types
    trainer = pack("training.unimmvsr.trainer")
    LatentSample = pack("training.unimmvsr.encoding").LatentSample
    _, module, args = train_module_and_loss_args(pack, parent)
    g = torch.Generator().manual_seed(5)

    def sample(refs, context_len=12, frames=2):
        raw = [(kind, torch.randn(1, 16, n, 6, 8, generator=g)) for kind, n in refs]
        return LatentSample(torch.randn(1, 16, frames, 6, 8, generator=g),
                            torch.randn(1, 16, frames, 6, 8, generator=g),
                            raw, torch.randn(1, context_len, 4096, generator=g))

    def draw(i):
        return types.SimpleNamespace(sigma=0.1 + 0.13 * i, aug_t=100.0 + 37 * i, noise_seed=11 + i)

    drawn = [(draw(0), sample([])), (draw(1), sample([("id_image", 1)])), (draw(2), sample([])),
             (draw(3), sample([("id_image", 1)])), (draw(4), sample([], context_len=7)),
             (draw(5), sample([("reference_video", 2)])), (draw(6), sample([("id_image", 1)]))]
    groups = trainer.group_by_shape(drawn)
    assert [[drawn.index(d) for d in grp] for grp in groups] == [[0, 2], [1, 3, 6], [4], [5]]
    assert [len(grp) for grp in trainer.group_by_shape(drawn, batched=False)] == [1] * 7
    with torch.no_grad():
        for noise in ("gaussian", "lr"):
            one_by_one = {id(d): float(trainer.flow_matching_loss(module, lat, d, *args, noise=noise))
                          for d, lat in drawn}
            for grp in groups:
                batched = trainer.flow_matching_losses(module, grp, *args, noise=noise)
                assert batched.shape == (len(grp),)
                for (d, _), value in zip(grp, batched.tolist()):
                    assert value == pytest.approx(one_by_one[id(d)], rel=1e-5, abs=1e-7)
            assert len({round(v, 6) for v in one_by_one.values()}) == len(drawn)  # the comparison can fail
        with pytest.raises(ValueError, match="mixes reference layouts"):
            trainer.flow_matching_losses(module, [drawn[0], drawn[1]], *args)


def test_text_tokens_zero_pads_prompts_to_one_length_so_their_samples_share_a_forward(pack, tmp_path):
    """[data] text_tokens: every prompt's embedding gets zero tokens appended up to that length (Wan's own UMT5
    padding), so samples whose prompts encode to different lengths fall into one shape group; 0 keeps them as
    encoded, and a prompt longer than the setting is an error naming it."""
    import types
    encoding = pack("training.unimmvsr.encoding")
    trainer = pack("training.unimmvsr.trainer")
    g = torch.Generator().manual_seed(2)
    encoded = {"a short prompt": torch.randn(1, 7, 4096, generator=g), "": torch.randn(1, 12, 4096, generator=g),
               "a longer prompt": torch.randn(1, 12, 4096, generator=g)}
    for prompt, context in encoded.items():
        encoding.TextEncoder(None, str(tmp_path)).write(prompt, context)
    as_encoded = encoding.TextEncoder(None, str(tmp_path))
    padded = encoding.TextEncoder(None, str(tmp_path), tokens=16)
    for prompt, context in encoded.items():
        assert torch.equal(as_encoded(prompt), context)
        out = padded(prompt)
        assert out.shape == (1, 16, 4096)
        assert torch.equal(out[:, :context.shape[1]], context) and not out[:, context.shape[1]:].any()

    def drawn(text):
        hr = torch.zeros(1, 16, 2, 6, 8)
        return [(types.SimpleNamespace(prompt=p), encoding.LatentSample(hr, hr, [], text(p))) for p in encoded]
    assert [len(grp) for grp in trainer.group_by_shape(drawn(as_encoded))] == [1, 2]
    assert [len(grp) for grp in trainer.group_by_shape(drawn(padded))] == [3]
    with pytest.raises(ValueError,
                       match=r"'a longer prompt' encodes to 12 tokens, more than \[data\] text_tokens = 10"):
        encoding.TextEncoder(None, str(tmp_path), tokens=10)("a longer prompt")


def test_the_loss_option_is_the_squared_or_absolute_velocity_error_recomputed_by_hand(pack, parent):
    """training.loss: "mse" (the flow-matching objective) and "l1" are the mean squared / absolute difference between
    the model's output and ε − z_HR, here recomputed from a direct model call (noise = lr, σ = 1, t_aug = 0: the
    input is the LR latent twice and the target the residual the LR lacks); an unknown loss name is refused."""
    import types
    trainer = pack("training.unimmvsr.trainer")
    config = pack("training.unimmvsr.config")
    LatentSample = pack("training.unimmvsr.encoding").LatentSample
    _, module, args = train_module_and_loss_args(pack, parent)
    process_in, timestep_of = args[0], args[1]
    g = torch.Generator().manual_seed(9)
    hr, lr = torch.randn(1, 16, 2, 6, 8, generator=g), torch.randn(1, 16, 2, 6, 8, generator=g)
    context = torch.randn(1, 12, 4096, generator=g)
    draw = types.SimpleNamespace(sigma=1.0, aug_t=0.0, noise_seed=3)
    with torch.no_grad():
        z_lr, z_hr = process_in(lr), process_in(hr)
        pred = module(torch.cat([z_lr, z_lr], dim=1), timestep_of(torch.tensor([1.0])), context,
                      torch.tensor([0.0]), None)
        diff = (pred - (z_lr - z_hr)).double()
        sample = LatentSample(hr, lr, [], context)
        mse = float(trainer.flow_matching_loss(module, sample, draw, *args, noise="lr", loss="mse"))
        l1 = float(trainer.flow_matching_loss(module, sample, draw, *args, noise="lr", loss="l1"))
    assert mse == pytest.approx(float(diff.pow(2).mean()), rel=1e-5)
    assert l1 == pytest.approx(float(diff.abs().mean()), rel=1e-5)
    assert abs(l1 - mse) > 1e-3  # the two objectives differ on this sample, so each comparison can fail
    with pytest.raises(ValueError, match="loss must be mse or l1"):
        trainer.flow_matching_loss(module, sample, draw, *args, noise="lr", loss="huber")
    with pytest.raises(config.ConfigError, match="loss: mse or l1"):
        config.load(os.path.join(REPO, "configs", "unimmvsr", "demo.toml"), {"training.loss": "huber"})
