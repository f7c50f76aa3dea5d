"""UniMMVSR's pure parts against independent recomputations: separated RoPE ranges (A.5.7), independent CFG with
the reference guidance threshold (A.3 eq. 2–3), noise augmentation, and the tiling blend."""
import pytest
import torch

from core.unimmvsr import augmentation, guidance, tiling
from core.unimmvsr.reference_layout import ID_IMAGE, REFERENCE_VIDEO, layout

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out


def test_paper_rope_ranges():
    # 77-frame target = 20 latent frames; 3 ID images; one 77-frame reference video (20 latent frames)
    lay = layout(20, [1, 1, 1], [20])
    assert lay.temporal_positions() == list(range(20)) + [20, 21, 22] + list(range(30, 50))
    assert [(s.category, s.start, s.frames) for s in lay.spans] == [
        (ID_IMAGE, 20, 1), (ID_IMAGE, 21, 1), (ID_IMAGE, 22, 1), (REFERENCE_VIDEO, 30, 20)]
    assert lay.reference_frames == 23


def test_each_reference_its_own_range_and_custom_starts():
    lay = layout(5, [1, 1], [3, 2], id_start=8, video_start=12)
    assert lay.temporal_positions() == [0, 1, 2, 3, 4, 8, 9, 12, 13, 14, 15, 16]


@pytest.mark.parametrize("args", [
    dict(target_frames=25, id_image_frames=[1]),                     # target 0..24 over IDs at 20
    dict(target_frames=20, id_image_frames=[1] * 11, reference_video_frames=[5]),  # IDs 20..30 over 30
    dict(target_frames=20, reference_video_frames=[5], video_start=18),
])
def test_overlapping_ranges_are_refused(args):
    with pytest.raises(ValueError, match="RoPE ranges overlap"):
        layout(**args)


def test_independent_cfg_equation_and_threshold():
    full, no_txt, no_ref = torch.tensor(2.0), torch.tensor(0.5), torch.tensor(1.25)
    got = guidance.combine(full, no_txt, no_ref, 3.0, 1.0)
    assert float(got) == pytest.approx(2.0 + 3.0 * 1.5 + 1.0 * 0.75)
    assert float(guidance.combine(full, no_txt, None, 3.0, 0.0)) == pytest.approx(2.0 + 4.5)
    # eq. 3: the reference term is on for the first N_ref = 15 of 50 steps, by the trajectory's progress u
    on = [guidance.reference_on(i / 50, guidance.DEFAULT_REFERENCE_END) for i in range(50)]
    assert on == [True] * 15 + [False] * 35
    with pytest.raises(ValueError):
        guidance.combine(full, no_txt, None, 3.0, 1.0)


def test_noise_augmentation_is_the_forward_flow_in_the_models_latent_space():
    z = torch.ones(1, 4, 2, 3, 3)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(augmentation.augment(z, 600, noise), 0.4 * z + 0.6 * noise)
    assert torch.equal(augmentation.augment(z, 0, noise), z)
    assert torch.equal(augmentation.augmentation_noise(z.shape, 0), noise)
    with pytest.raises(ValueError):
        augmentation.augment(z, 1200, noise)
    with pytest.raises(ValueError, match="does not match"):
        augmentation.augment(z, 600, noise[:, :2])
    # normalisation first, noise after: μ/σ of the latent format never touch ε
    mean, std = (torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1, 1),
                 torch.tensor([2.0, 0.5, 1.0, 4.0]).view(1, 4, 1, 1, 1))
    raw = mean + std * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    got = augmentation.lr_condition(raw, lambda x: (x - mean) / std, 200, noise)
    assert torch.allclose(got, 0.8 * (raw - mean) / std + 0.2 * noise)


def test_reference_padding_is_zero_in_the_vaes_pixel_space():
    from core.unimmvsr.references import pad_to
    frames = torch.rand(2, 10, 20, 3) * 0.2 + 0.7
    out = pad_to(frames, 32, 16)
    assert out.shape == (2, 16, 32, 3)
    assert torch.equal(out[:, 3:13, 6:26], frames)               # centred, unscaled
    border = torch.ones(16, 32, dtype=torch.bool)
    border[3:13, 6:26] = False
    vae_input = out[:, border] * 2 - 1                           # ComfyUI's Wan VAE input range [−1, 1]
    assert torch.equal(vae_input, torch.zeros_like(vae_input))  # the paper's zeros: mid-grey, not black


def test_bilinear_upscale_by_hand():
    from core.unimmvsr.upsampling import upscale_frames
    frame = torch.tensor([[0.0, 1.0], [1.0, 0.0]])[None, :, :, None].repeat(1, 1, 1, 3)
    out = upscale_frames(frame, 4, 4)[0, :, :, 0]
    # half-pixel centres (align_corners=False): output x' samples input x = (x' + 0.5)/2 − 0.5, clamped at edges
    def sample(y, x):
        def coords(v):
            v = min(max((v + 0.5) / 2 - 0.5, 0.0), 1.0)
            return v
        yy, xx = coords(y), coords(x)
        a = [[0.0, 1.0], [1.0, 0.0]]
        return ((1 - yy) * (1 - xx) * a[0][0] + (1 - yy) * xx * a[0][1] + yy * (1 - xx) * a[1][0] + yy * xx * a[1][1])
    want = torch.tensor([[sample(y, x) for x in range(4)] for y in range(4)])
    assert torch.allclose(out, want, atol=1e-6)


def test_tiles_cover_with_equal_sizes_and_blend_exactly():
    wins = tiling.windows(9, 50, 70, 5, 24, 24, 2, 8, 8)
    assert {(w.t1 - w.t0, w.y1 - w.y0, w.x1 - w.x0) for w in wins} == {(5, 24, 24)}
    assert tiling.starts(70, 24, 8) == [0, 16, 32, 46]
    field = torch.randn(1, 2, 9, 50, 70)
    blend = tiling.Blender(field.shape)
    for w in wins:
        blend.add(w, field[(slice(None), slice(None)) + w.slices()], tiling.weights(w, 9, 50, 70, 2, 8, 8))
    assert torch.allclose(blend.result(), field, atol=1e-6)  # the same content everywhere → unchanged


def test_feather_weights_ramp_only_at_shared_borders():
    w = tiling.weights(tiling.Window(0, 1, 0, 24, 16, 40), 1, 50, 70, 0, 8, 8)
    assert torch.all(w[0, :, -1] < 0.2) and torch.all(w[0, :, 0] < 0.2)   # both x borders shared
    assert torch.all(w[0, 0, 10:14] == 1.0)  # top border is the frame edge: not feathered


def test_blend_of_disagreeing_tiles_has_no_step():
    """Tiles that disagree (each a different constant) blend into ramps, never a jump at a tile edge: a hard cut
    would put the whole difference (1.0 here) between two neighbouring columns."""
    frames, height, width = 1, 20, 40
    wins = tiling.windows(frames, height, width, 1, 12, 16, 0, 4, 6)
    blend = tiling.Blender((1, 1, frames, height, width))
    for k, w in enumerate(wins):
        value = torch.full((1, 1, w.t1 - w.t0, w.y1 - w.y0, w.x1 - w.x0), float(k % 2))
        blend.add(w, value, tiling.weights(w, frames, height, width, 0, 4, 6))
    out = blend.result()
    step_x = (out[..., 1:] - out[..., :-1]).abs().max()
    step_y = (out[..., 1:, :] - out[..., :-1, :]).abs().max()
    assert step_x < 0.5 and step_y < 0.5, (step_x, step_y)
