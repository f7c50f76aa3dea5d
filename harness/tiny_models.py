"""Tiny, randomly initialised instances of the real architectures, written where ComfyUI's loaders read them.

Built at test time from ComfyUI's own classes (never downloaded, never committed): Wan 2.1 T2V / I2V / VACE and
a Wan 2.2-layout 48-channel diffusion model (dim 128: ComfyUI derives heads = dim // 128), a Wan 2.1 VAE of
width 4, and a tiny UMT5 text encoder. File names are those of the real releases so shared workflows run as
they are; only CLIPLoader is swapped for the fixture loader (tests/fixture_nodes).
"""
from __future__ import annotations

import io
import json
import os
import sys

import torch
from safetensors.torch import save_file

FIXTURE_NODES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixture_nodes")

WAN21_T2V = "wan2.1_t2v_1.3B_fp16.safetensors"
WAN21_I2V = "wan2.1_i2v_480p_14B_fp16.safetensors"
WAN21_VACE = "wan2.1_vace_1.3B_fp16.safetensors"
WAN22_TI2V = "wan2.2_ti2v_5B_fp16.safetensors"
WAN21_VAE = "wan_2.1_vae.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
SD3 = "sd3_medium.safetensors"
UNIMMVSR = "unimmvsr_wan2.1_1.3B.safetensors"              # full checkpoint, zero-initialised from WAN21_T2V
UNIMMVSR_DELTA = "unimmvsr_wan2.1_1.3B_delta.safetensors"  # the same as a delta over WAN21_T2V
UNIMMVSR_TRUNCATED = "unimmvsr_truncated.safetensors"
UNIMMVSR_WAN22 = "unimmvsr_wan2.2_5B.safetensors"          # from the 48-channel Wan 2.2 TI2V-layout parent
UNIMMVSR_TRAINED = "unimmvsr_wan2.1_trained.safetensors"   # non-zero LR weights + augmentation embedding
UNIMMVSR_SHIFT3 = "unimmvsr_wan2.1_shift3.safetensors"     # delta over WAN21_T2V asking for sampling shift 3.0
# an MM-DiT that is neither Wan nor Flux: for "unsupported model" errors
UNIMMVSR_PLAIN_WAN = "plain_wan_in_unimmvsr_folder.safetensors"

WAN_VARIANTS = {
    WAN21_T2V: dict(model_type="t2v", in_dim=16, out_dim=16),
    WAN21_I2V: dict(model_type="i2v", in_dim=36, out_dim=16),
    WAN21_VACE: dict(model_type="vace", in_dim=16, out_dim=16),
    WAN22_TI2V: dict(model_type="t2v", in_dim=48, out_dim=48),
}


def _seeded(seed: int):
    torch.manual_seed(seed)


def build_wan(model_type: str = "t2v", in_dim: int = 16, out_dim: int = 16, dim: int = 128, num_layers: int = 2,
              ffn_dim: int = 256, seed: int = 0):
    """A Wan DiT from ComfyUI's classes with PyTorch's default random init (float32)."""
    from comfy.ldm.wan.model import VaceWanModel, WanModel

    _seeded(seed)
    kwargs = dict(model_type=model_type, patch_size=(1, 2, 2), text_len=512, in_dim=in_dim, dim=dim,
                  ffn_dim=ffn_dim, freq_dim=256, text_dim=4096, out_dim=out_dim, num_heads=dim // 128,
                  num_layers=num_layers, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                  operations=torch.nn)
    if model_type == "vace":
        model = VaceWanModel(vace_layers=1, vace_in_dim=96, **{**kwargs, "model_type": "t2v"})
    else:
        model = WanModel(**kwargs)
    # ComfyUI's Wan zero-inits nothing we rely on; make the modulation tables non-trivial like trained ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                p.normal_(0, 0.1)
    return model.float().eval()


def build_sd3(seed: int = 0):
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    _seeded(seed)
    return MMDiT(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=2, adm_in_channels=64,
                 context_embedder_config={"target": "torch.nn.Linear",
                                          "params": {"in_features": 4096, "out_features": 128}},
                 pos_embed_max_size=16, num_patches=256, pos_embed_scaling_factor=None, operations=torch.nn).eval()


def build_wan_vae(dim: int = 4, seed: int = 0):
    from comfy.ldm.wan.vae import WanVAE

    _seeded(seed)
    vae = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    return init_parameters(vae).float().eval()


def init_parameters(model: torch.nn.Module) -> torch.nn.Module:
    """Defined random values for classes built with ComfyUI's no-init ops (their tensors start as torch.empty):
    fan-in scaled weights, zero biases, unit norm gains."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "scale") or (p.ndim == 1 and "norm" in name and leaf == "weight"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / fan_in ** 0.5)
    return model


def _sentencepiece_model(vocab_size: int = 64) -> bytes:
    import sentencepiece

    words = ("a red cat runs across the green field at sunset while blue birds fly over tall trees and a small "
             "dog sleeps near the old wooden house by the river under bright clouds slow motion camera video "
             "cinematic portrait of a woman walking in rain city lights night ocean waves mountain snow").split()
    lines = [" ".join(words[(i * 7) % len(words):] + words[:(i * 7) % len(words)]) for i in range(200)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                             model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
                                             bos_id=-1, minloglevel=2)
    return model.getvalue()


def build_tiny_umt5(path: str, seed: int = 0) -> None:
    sys.path.insert(0, os.path.join(FIXTURE_NODES, "unicascade_test_fixtures"))
    try:
        import tiny_text_encoder as tte
    finally:
        sys.path.pop(0)
    import comfy.text_encoders.t5

    spm = _sentencepiece_model()
    import sentencepiece
    vocab = sentencepiece.SentencePieceProcessor(model_proto=spm).get_piece_size()
    config = tte.tiny_config(vocab)
    _seeded(seed)
    t5 = comfy.text_encoders.t5.T5(config, dtype=torch.float32, device="cpu", operations=torch.nn)
    with torch.no_grad():
        for p in t5.parameters():
            p.normal_(0, 0.5)
    sd = {k: v.contiguous() for k, v in t5.state_dict().items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(spm), dtype=torch.uint8).clone()
    save_file(sd, path, metadata={"unicascade_tiny_umt5_config": json.dumps(config)})


def save_model(model: torch.nn.Module, path: str, dtype=torch.float16) -> None:
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, path)


def write_fixture_models(models_dir: str) -> dict[str, str]:
    """Write every tiny model under ``models_dir`` (ComfyUI layout). Returns name -> path."""
    paths = {}
    dm_dir = os.path.join(models_dir, "diffusion_models")
    os.makedirs(dm_dir, exist_ok=True)
    for i, (name, variant) in enumerate(WAN_VARIANTS.items()):
        paths[name] = os.path.join(dm_dir, name)
        if not os.path.exists(paths[name]):
            save_model(build_wan(seed=i, **variant), paths[name])
    paths[SD3] = os.path.join(dm_dir, SD3)
    if not os.path.exists(paths[SD3]):
        save_model(build_sd3(), paths[SD3])
    write_unimmvsr_fixtures(models_dir, paths[WAN21_T2V], paths[WAN22_TI2V])
    vae_dir = os.path.join(models_dir, "vae")
    os.makedirs(vae_dir, exist_ok=True)
    paths[WAN21_VAE] = os.path.join(vae_dir, WAN21_VAE)
    if not os.path.exists(paths[WAN21_VAE]):
        save_model(build_wan_vae(), paths[WAN21_VAE])
    te_dir = os.path.join(models_dir, "text_encoders")
    os.makedirs(te_dir, exist_ok=True)
    paths[UMT5] = os.path.join(te_dir, UMT5)
    if not os.path.exists(paths[UMT5]):
        build_tiny_umt5(paths[UMT5])
    return paths


DEMO_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo",
                               "unimmvsr_demo_s2d.safetensors")


def write_unimmvsr_fixtures(models_dir: str, t2v_path: str, wan22_path: str) -> None:
    """UniMMVSR checkpoints made from the tiny T2V parent the way users make theirs (scripts/unimmvsr_init.py), and
    the committed trained demo checkpoint (demo/), which its shipped workflow names."""
    import shutil

    from safetensors.torch import load_file

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from core.unimmvsr.checkpoint import init_from_t2v, to_delta

    folder = os.path.join(models_dir, "unimmvsr")
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(DEMO_CHECKPOINT):
        shutil.copy(DEMO_CHECKPOINT, os.path.join(folder, os.path.basename(DEMO_CHECKPOINT)))
    full_path = os.path.join(folder, UNIMMVSR)
    if os.path.exists(full_path):
        return
    parent = load_file(t2v_path)
    sd, meta = init_from_t2v(parent)
    save_file(sd, full_path, metadata=meta)
    delta, delta_meta = to_delta(sd, meta, parent, os.path.basename(t2v_path))
    save_file(delta, os.path.join(folder, UNIMMVSR_DELTA), metadata=delta_meta)
    with open(full_path, "rb") as f:
        data = f.read()
    with open(os.path.join(folder, UNIMMVSR_TRUNCATED), "wb") as f:
        f.write(data[: len(data) // 2])
    shutil.copy(t2v_path, os.path.join(folder, UNIMMVSR_PLAIN_WAN))
    sd22, meta22 = init_from_t2v(load_file(wan22_path))
    save_file(sd22, os.path.join(folder, UNIMMVSR_WAN22), metadata=meta22)
    save_file(as_trained(sd), os.path.join(folder, UNIMMVSR_TRAINED), metadata=meta)
    sd3, meta3 = init_from_t2v(parent, shift=3.0)
    delta3, delta3_meta = to_delta(sd3, meta3, parent, os.path.basename(t2v_path))
    save_file(delta3, os.path.join(folder, UNIMMVSR_SHIFT3), metadata=delta3_meta)


def as_trained(sd: dict, seed: int = 1, scale: float = 0.05) -> dict:
    """A zero-initialised UniMMVSR state dict with random values where training would put them: the LR input
    channels of ``patch_embedding`` and the augmentation embedding's output layer."""
    g = torch.Generator().manual_seed(seed)
    out = dict(sd)
    w = sd["patch_embedding.weight"]
    c = w.shape[1] // 2
    lr = (torch.randn(w[:, c:].shape, generator=g) * scale).to(w.dtype)
    out["patch_embedding.weight"] = torch.cat([w[:, :c], lr], dim=1).contiguous()
    for key in ("unimmvsr.aug_embedding.linear_2.weight", "unimmvsr.aug_embedding.linear_2.bias"):
        out[key] = (torch.randn(sd[key].shape, generator=g) * scale).to(sd[key].dtype).contiguous()
    return out


EXAMPLE_IMAGE = "unicascade_example.png"
EXAMPLE_VIDEO = "unicascade_example.mp4"


def write_example_inputs(input_dir: str) -> None:
    """The input files the shared workflows name: a synthetic 320×192 image, a 9-frame 160×96 video, and the trained
    UniMMVSR demo's 64×64 crop inputs (animated PNGs of real carphone frames, as scripts/demo_unimmvsr.py writes)."""
    import av
    import numpy as np
    from PIL import Image

    os.makedirs(input_dir, exist_ok=True)
    yy, xx = np.mgrid[0:192, 0:320]
    image = np.stack([xx * 255 // 319, yy * 255 // 191, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(input_dir, EXAMPLE_IMAGE))
    with av.open(os.path.join(input_dir, EXAMPLE_VIDEO), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(9):
            frame = np.roll(image[::2, ::2], 8 * i, axis=1).copy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    write_demo_inputs(input_dir)


def write_demo_inputs(input_dir: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "scripts"))
    try:
        import demo_unimmvsr
    finally:
        sys.path.pop(0)
    crop = demo_unimmvsr.eval_crops(max_crops=1)[0]
    for key, name in demo_unimmvsr.INPUT_NAMES.items():
        demo_unimmvsr.save_frames(crop[key], os.path.join(input_dir, name))
