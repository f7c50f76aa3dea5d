"""MfM sampler previews and memory management (issue 12: "previews during sampling work"; "the 8B model's blocks
can be offloaded block by block (ComfyUI's lowvram path)").

Previews: ComfyUI 0.3.75 ships no latent → RGB factors for MfM's CogVideoX-class latents, so the loader fits them to
the pipeline's own VAE (core/latent_rgb.py); checked against an independent least-squares solve and through a
server started with ``--preview-method auto``. Memory: ComfyUI's lowvram load of the MfM model streams every
weight-bearing module's weights (none is left behind on the offload device uncast) and samples the same numbers
(both devices are the CPU here: this checks the wiring ComfyUI relies on, not a transfer).
"""
import io
import struct

import numpy as np
import pytest
import torch

from harness.tiny_mfm import MFM


def load(pack, comfy_base):
    import folder_paths

    folder_paths.add_model_folder_path("mfm", f"{comfy_base}/models/mfm")
    return pack("model_loaders.mfm_pipeline").load_pipeline(MFM)


def test_fit_recovers_an_exactly_linear_latent_space():
    from core.latent_rgb import fit_latent_rgb

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 16, 4, 4, generator=g, dtype=torch.float64)
    factors, bias = torch.randn(16, 3, generator=g, dtype=torch.float64) * 0.1, torch.tensor([0.1, -0.2, 0.05])
    rgb = torch.einsum("nchw,ck->nkhw", latents, factors) + bias[:, None, None].double()
    images = ((rgb.repeat_interleave(8, 2).repeat_interleave(8, 3) + 1) / 2).movedim(1, -1)   # 8×8 pixels a cell
    got_f, got_b, r2 = fit_latent_rgb(latents, images)
    assert np.allclose(got_f, factors.numpy(), atol=1e-9) and np.allclose(got_b, bias.numpy(), atol=1e-9)
    assert r2 == pytest.approx(1.0, abs=1e-12)
    noisy = (images + torch.randn(images.shape, generator=g, dtype=torch.float64) * 0.2).clamp(0, 1)
    assert fit_latent_rgb(latents, noisy)[2] < 0.99


def test_preview_factors_are_the_least_squares_fit_to_the_pipelines_own_vae(pack, comfy_base):
    import latent_preview

    from core.latent_rgb import probe_images

    model, _, vae = load(pack, comfy_base)
    fmt = model.model.latent_format
    factors, bias = np.array(fmt.latent_rgb_factors), np.array(fmt.latent_rgb_factors_bias)
    assert factors.shape == (16, 3) and bias.shape == (3,)
    # independently: each probe through the VAE's video path (core VAEEncode's), scaled into model space, averaged
    # over 8×8 pixel cells, solved with numpy
    images = probe_images()
    rows, targets = [], []
    for image in images:
        z = vae.encode(image[None])[0, :, 0].double() * fmt.scale_factor                    # [16, 8, 8]
        cells = image.double().reshape(8, 8, 8, 8, 3).mean(dim=(1, 3)) * 2 - 1                # [8, 8, 3]
        rows.append(z.permute(1, 2, 0).reshape(-1, 16).numpy())
        targets.append(cells.reshape(-1, 3).numpy())
    design = np.concatenate([np.concatenate(rows), np.ones((len(images) * 64, 1))], axis=1)
    solution = np.linalg.lstsq(design, np.concatenate(targets), rcond=None)[0]
    assert np.allclose(factors, solution[:16], atol=1e-6) and np.allclose(bias, solution[16], atol=1e-6)
    # ComfyUI's own Latent2RGB previewer with these factors: first frame of a [B, C, T, h, w] latent, z·F + b
    previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)
    x0 = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    picture = np.asarray(previewer.decode_latent_to_preview(x0))
    want = x0[0, :, 0].permute(1, 2, 0).double().numpy() @ factors + bias
    want = np.clip((want + 1) / 2, 0, 1) * 255
    assert picture.shape == (4, 6, 3) and np.abs(picture.astype(float) - want).max() <= 1.0


def jpeg_sizes(frames: list[bytes]) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for frame in frames:
        event = struct.unpack(">I", frame[:4])[0]
        start = frame.find(b"\xff\xd8")
        if event in (1, 4) and start >= 0:          # PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA
            sizes.append(Image.open(io.BytesIO(frame[start:])).size)
    return sizes


@pytest.mark.server
def test_sampling_mfm_sends_a_preview_every_step(comfy_base):
    from harness.comfy_server import ComfyServer
    from test_mfm_pipeline import t2v_graph

    server = ComfyServer(comfy_base, extra_args=["--preview-method", "auto"], log_name="server_previews.log").start()
    try:
        server.run(t2v_graph("mfm_previews").prompt())   # KSampler, 3 steps, 64×64 pixels → an 8×8 latent
        # one JPEG per step, the latent's square shape scaled up to ComfyUI's preview size (--preview-size 512)
        assert jpeg_sizes(server.binary_frames) == [(512, 512)] * 3, server.log_tail()
    finally:
        server.stop()


def test_lowvram_streams_every_weight_and_samples_the_same(pack, comfy_base):
    patcher, _, _ = load(pack, comfy_base)
    model, dm = patcher.model, patcher.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 16, 2, 4, 4, generator=g), torch.randn(2, 7, 4096, generator=g)
    cond = torch.randn(2, 5, 5, 32, 32, generator=g)
    kwargs = dict(c_crossattn=ctx, mfm_condition=cond, motion_score=torch.tensor([5.0, 5.0]))
    sigma = torch.tensor([0.7, 0.7])
    patcher.load(torch.device("cpu"), full_load=True)
    with torch.no_grad():
        full = model.apply_model(x, sigma, **kwargs)
    patcher.detach()
    patcher.load(torch.device("cpu"), lowvram_model_memory=patcher.model_size() // 2)
    assert patcher.model.model_lowvram
    streamed = {n for n, m in dm.named_modules() if getattr(m, "comfy_cast_weights", False)}
    resident = {n for n, m in dm.named_modules() if getattr(m, "comfy_cast_weights", None) is False
                and list(m.parameters(recurse=False))}
    assert streamed and resident                                      # a partial load, not all or nothing
    blocks = [n for n, _ in dm.named_children() if n == "transformer_blocks"]
    assert blocks and any(n.startswith("transformer_blocks.") for n in streamed)
    assert any(n.startswith("cond_conv.") for n in streamed)          # the light adapter's convs stream too
    # a module with weights but no casting would stay on the offload device while the GPU computes: only the
    # RMSNorms (which move their weight to the input's device themselves) may lack ComfyUI's casting
    uncast = {type(m).__name__ for m in dm.modules() if list(m.parameters(recurse=False)) and
              not hasattr(m, "comfy_cast_weights")}
    assert uncast <= {"RMSNorm"}, uncast
    with torch.no_grad():
        lowvram = model.apply_model(x, sigma, **kwargs)
    patcher.detach()
    assert torch.equal(full, lowvram)


def test_a_failed_preview_fit_only_costs_the_previews(pack, comfy_base, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no probes today")

    monkeypatch.setattr(pack("core.latent_rgb"), "probe_images", broken)
    model, clip, vae = load(pack, comfy_base)
    assert model.model.latent_format.latent_rgb_factors is None and vae is not None and clip is not None
    assert "no latent previews (fitting the preview factors failed: RuntimeError: no probes today)" in caplog.text
