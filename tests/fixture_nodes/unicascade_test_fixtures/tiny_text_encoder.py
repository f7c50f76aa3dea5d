"""A tiny UMT5 text encoder built from ComfyUI's own T5 classes (test fixture, not part of the pack).

ComfyUI's stock CLIPLoader builds umt5-xxl at its fixed full size (docs/design.md §12), so tests stand a tiny UMT5 in
its place: same classes (comfy.text_encoders.t5.T5, sd1_clip), same tokenizer class (SentencePiece), an output
width of 4096 so it feeds an unmodified Wan text embedding. Weights, config and the SentencePiece model travel
in one safetensors file (config in its metadata, the tokenizer as the ``spiece_model`` byte tensor, as
ComfyUI's own umt5 files do).
"""
from __future__ import annotations

import json

import comfy.sd
import comfy.sd1_clip
import comfy.text_encoders.t5
import comfy.utils
from comfy.text_encoders.spiece_tokenizer import SPieceTokenizer

WIDTH = 4096  # Wan's text_dim
PAD_TO = 32   # the real tokenizer pads to 512


def tiny_config(vocab_size: int) -> dict:
    return {"d_ff": 32, "d_kv": 8, "d_model": WIDTH, "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True,
            "layer_norm_epsilon": 1e-6, "model_type": "umt5", "num_heads": 2, "num_layers": 1,
            "relative_attention_num_buckets": 32, "vocab_size": vocab_size, "pad_token_id": 0, "eos_token_id": 1}


def clip_target(config: dict):
    class TinyUMT5Model(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, model_options={}):
            super().__init__(device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=config,
                             dtype=dtype, special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                             enable_attention_masks=True, zero_out_masked=True, model_options=model_options)

    class TinyUMT5Tokenizer(comfy.sd1_clip.SDTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(tokenizer_data.get("spiece_model"), pad_with_end=False, embedding_size=WIDTH,
                             embedding_key="umt5xxl", tokenizer_class=SPieceTokenizer, has_start_token=False,
                             pad_to_max_length=False, max_length=99999999, min_length=PAD_TO, pad_token=0,
                             tokenizer_data=tokenizer_data)

    class Tokenizer(comfy.sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                             clip_name="umt5xxl", tokenizer=TinyUMT5Tokenizer)

    class Model(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, name="umt5xxl",
                             clip_model=TinyUMT5Model, **kwargs)

    class Target:
        params = {}
        clip = Model
        tokenizer = Tokenizer

    return Target


def load_clip(path: str) -> comfy.sd.CLIP:
    state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    if not metadata or "unicascade_tiny_umt5_config" not in metadata:
        raise ValueError(f"{path} is not a tiny UMT5 fixture")
    config = json.loads(metadata["unicascade_tiny_umt5_config"])
    spiece = state_dict.pop("spiece_model")
    clip = comfy.sd.CLIP(clip_target(config), tokenizer_data={"spiece_model": spiece},
                         parameters=comfy.utils.calculate_parameters(state_dict))
    missing, unexpected = clip.load_sd(state_dict)
    if missing or unexpected:
        raise ValueError(f"tiny UMT5 weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return clip
