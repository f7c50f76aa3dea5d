"""Tiny MfM pipeline folders in the official diffusers layout (model_index.json, config.json + safetensors per
component), built at test time from core.mfm's transformer with random weights; plus broken variants."""
from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MFM = "MfM-tiny"                      # plain block layout
MFM_SHIPPED = "MfM-Pipeline-2B"       # the name the shipped workflows use (the fixture carries the real name)
MFM_CHUNKED = "MfM-tiny-chunked"      # num_block_chunks 2: transformer_blocks.<c>.module.<j>
MFM_NO_VAE = "MfM-tiny-no-vae"
MFM_MISMATCH = "MfM-tiny-mismatch"    # config.json says 3 layers, the weights have 2
MFM_PICKLE = "MfM-tiny-pickle"        # transformer weights only as a .bin
MFM_TRUNCATED = "MfM-tiny-truncated"
MFM_BY_SHIFT = {12.0: "MfM-tiny-shift12", 3.0: "MfM-tiny-shift3"}   # scheduler shift 12 / 3 (the σ-grid tests)
SHIFT, VAE_SCALE = 5.0, 0.7
CONFIG = {"_class_name": "Transformer3DModel", "num_attention_heads": 2, "attention_head_dim": 32,
          "in_channels": 16, "out_channels": 16, "num_layers": 2, "cross_attention_dim": 4096, "patch_size": 2,
          "patch_size_t": 1, "sample_size": [32, 32], "use_rope": True, "add_motion_score": True,
          "use_depth_cond": True, "activation_fn": "gelu-approximate", "norm_type": "ada_norm_zero",
          "adaln_norm_type": "legacy", "attention_bias": False, "num_block_chunks": 1,
          "condition_type": "inpaint_mask"}


def transformer_weights(config: dict, seed: int = 0) -> dict:
    sys.path.insert(0, REPO)
    from core.mfm.transformer import MfMTransformer3D

    torch.manual_seed(seed)
    model = MfMTransformer3D(**{k: v for k, v in config.items() if not k.startswith("_")})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


WORDS = ("a red cat runs blue car corgi on beach the in green field dog #fps: 16. #task: image-to-video "
         "text-to-video after").split()
T5_CONFIG = {"architectures": ["T5EncoderModel"], "d_model": 4096, "d_ff": 32, "d_kv": 8, "num_heads": 2,
             "num_layers": 1, "feed_forward_proj": "gated-gelu", "model_type": "t5", "layer_norm_epsilon": 1e-6,
             "relative_attention_num_buckets": 32}


def write_tokenizer(folder: str) -> int:
    """A T5-style tokenizer (Unigram, ▁-prefixed pieces, </s> = 1, <pad> = 0) as tokenizer.json; its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    os.makedirs(folder, exist_ok=True)
    tk.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>", "extra_ids": 0}, f)
    return len(pieces)


def write_text_encoder(folder: str, vocab: int, seed: int = 0) -> None:
    """HF T5EncoderModel layout: config.json + model.safetensors (ComfyUI's T5 class has the same names)."""
    import comfy.text_encoders.t5

    config = {**T5_CONFIG, "vocab_size": vocab}
    torch.manual_seed(seed)
    t5 = comfy.text_encoders.t5.T5({**config, "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True},
                                   dtype=torch.float32, device="cpu", operations=torch.nn)
    with torch.no_grad():
        for p in t5.parameters():
            p.normal_(0, 0.5)
    sd = {k: v.contiguous() for k, v in t5.state_dict().items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()   # T5EncoderModel saves the tied copy too
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(sd, os.path.join(folder, "model.safetensors"))


def write_pipeline(folder: str, config: dict = CONFIG, *, weights: dict | None = None, skip: tuple = (),
                   pickle_only: bool = False, truncate: bool = False, shift: float = SHIFT) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "MfMPipeline", "transformer": ["mfm", "Transformer3DModel"],
                   "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                   "vae": ["diffusers", "AutoencoderKLCogVideoX"], "text_encoder": ["transformers", "T5EncoderModel"],
                   "tokenizer": ["transformers", "T5Tokenizer"]}, f)
    for name in ("transformer", "scheduler", "vae", "text_encoder", "tokenizer"):
        if name not in skip:
            os.makedirs(os.path.join(folder, name), exist_ok=True)
    tdir = os.path.join(folder, "transformer")
    with open(os.path.join(tdir, "config.json"), "w") as f:
        json.dump(config, f)
    sd = weights if weights is not None else transformer_weights(config)
    path = os.path.join(tdir, "diffusion_pytorch_model.safetensors")
    if pickle_only:
        torch.save(sd, os.path.join(tdir, "diffusion_pytorch_model.bin"))
    else:
        save_file(sd, path)
        if truncate:
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": shift,
                   "use_dynamic_shifting": False}, f)
    if "tokenizer" not in skip:
        vocab = write_tokenizer(os.path.join(folder, "tokenizer"))
        if "text_encoder" not in skip:
            write_text_encoder(os.path.join(folder, "text_encoder"), vocab)
    if "vae" not in skip:
        write_vae(os.path.join(folder, "vae"))


def write_vae(folder: str, seed: int = 0) -> None:
    """A tiny diffusers AutoencoderKLCogVideoX (4 levels: 8× spatial, 4× temporal, 16 latent channels)."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=16,
                                 norm_num_groups=32, scaling_factor=VAE_SCALE)
    vae.save_pretrained(folder, safe_serialization=True)


def write_mfm_fixtures(base: str) -> None:
    root = os.path.join(base, "models", "mfm")
    write_pipeline(os.path.join(root, MFM))
    write_pipeline(os.path.join(root, MFM_SHIPPED))
    write_pipeline(os.path.join(root, MFM_CHUNKED), {**CONFIG, "num_block_chunks": 2})
    write_pipeline(os.path.join(root, MFM_NO_VAE), skip=("vae",))
    write_pipeline(os.path.join(root, MFM_MISMATCH), {**CONFIG, "num_layers": 3}, weights=transformer_weights(CONFIG))
    write_pipeline(os.path.join(root, MFM_PICKLE), pickle_only=True)
    write_pipeline(os.path.join(root, MFM_TRUNCATED), truncate=True)
    for shift, name in MFM_BY_SHIFT.items():
        write_pipeline(os.path.join(root, name), shift=shift)
