"""MfM's text encoder as a ComfyUI CLIP (docs/design.md §8; docs/mfm.md): the pipeline's T5 (``text_encoder/``, HF
T5EncoderModel names, which ComfyUI's own T5 class shares) and its tokenizer (``tokenizer/``), so core
``CLIPTextEncode`` works on it.

As the official pipeline: the prompt is lower-cased and stripped, tokenised to 77 tokens (EOS appended, padded,
longer prompts cut), and T5 runs without an attention mask; the mask is returned with the conditioning
(``attention_mask``) and becomes the DiT's −10000 padding bias. With ``literal`` (the default) the text is
tokenised as written by the folder's slow ``T5Tokenizer`` (``spiece.model``; the fast one from ``tokenizer.json``
when that is all there is), exactly the official call; otherwise through ComfyUI's prompt syntax
(``(word:1.2)`` weights, ``embedding:`` names), which the official pipeline does not have.
"""
from __future__ import annotations

import logging
import os

from .mfm_folder import load_state_dict, read_json

log = logging.getLogger("UniCascade")
MAX_TOKENS = 77


def t5_config(folder: str) -> dict:

    cfg = read_json(os.path.join(folder, "text_encoder", "config.json"), "text_encoder")
    need = ("d_model", "d_ff", "d_kv", "num_heads", "num_layers", "vocab_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"text_encoder: config.json lacks {', '.join(missing)} (not a T5 encoder config?)")
    proj = cfg.get("feed_forward_proj", "gated-gelu")
    gated = cfg.get("is_gated_act", proj.startswith("gated-"))
    act = cfg.get("dense_act_fn", {"gelu": "gelu_new", "relu": "relu"}.get(proj.split("-")[-1], "gelu_new"))
    return {**{k: cfg[k] for k in need}, "dense_act_fn": "gelu_pytorch_tanh" if act == "gelu_new" else act,
            "is_gated_act": gated, "model_type": cfg.get("model_type", "t5"),
            "relative_attention_num_buckets": cfg.get("relative_attention_num_buckets", 32),
            "layer_norm_epsilon": cfg.get("layer_norm_epsilon", 1e-6)}


def literal_tokenizer(tokenizer_dir: str):
    """The official tokenisation: ``tokenizer(text, max_length=77, padding="max_length", truncation=True)``."""
    from transformers import T5Tokenizer, T5TokenizerFast

    if os.path.isfile(os.path.join(tokenizer_dir, "spiece.model")):
        tokenizer = T5Tokenizer.from_pretrained(tokenizer_dir, legacy=True)
    else:
        tokenizer = T5TokenizerFast.from_pretrained(tokenizer_dir)

    def ids(text: str) -> list[int]:
        return tokenizer(text.lower().strip(), max_length=MAX_TOKENS, padding="max_length", truncation=True,
                         add_special_tokens=True).input_ids
    return ids


def clip_target(config: dict, tokenizer_dir: str, literal: bool = True):
    import comfy.sd1_clip
    import comfy.text_encoders.t5
    from transformers import T5TokenizerFast

    width = config["d_model"]

    class MfMT5Model(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, model_options={}):
            super().__init__(device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=config,
                             dtype=dtype, special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                             enable_attention_masks=False, return_attention_masks=True, zero_out_masked=False,
                             model_options=model_options)

    class MfMT5Tokenizer(comfy.sd1_clip.SDTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(tokenizer_dir, pad_with_end=False, embedding_size=width, embedding_key="mfm_t5",
                             tokenizer_class=T5TokenizerFast, has_start_token=False, pad_to_max_length=True,
                             max_length=MAX_TOKENS, min_length=MAX_TOKENS, pad_token=0, tokenizer_data=tokenizer_data)

        literal_ids = staticmethod(literal_tokenizer(tokenizer_dir)) if literal else None

        def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
            if self.literal_ids is not None:
                return [[(i, 1.0, 0) if return_word_ids else (i, 1.0) for i in self.literal_ids(text)]]
            batches = super().tokenize_with_weights(text.strip().lower(), return_word_ids, **kwargs)
            if len(batches) > 1:  # the official pipeline truncates at 77 tokens
                log.warning("MfM text encoder: the prompt is longer than %d tokens; truncated as the official "
                            "pipeline does", MAX_TOKENS)
                first = batches[0]
                if first[-1][0] != 1:
                    first[-1] = (1,) + tuple(first[-1][1:])
            return batches[:1]

    class Tokenizer(comfy.sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                             clip_name="mfm_t5", tokenizer=MfMT5Tokenizer)

    class Model(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, name="mfm_t5",
                             clip_model=MfMT5Model, **kwargs)

    class Target:
        params = {}
        clip = Model
        tokenizer = Tokenizer

    return Target


def text_encoder_dtype():
    """The official pipeline runs T5 in its own dtype, bf16 (docs/mfm.md "Text"): bf16 where the device has it, else
    float32 — not ComfyUI's float16 default for text encoders, which moves the embeddings by ~7e-3."""
    import comfy.model_management
    import torch

    device = comfy.model_management.text_encoder_device()
    return torch.bfloat16 if comfy.model_management.should_use_bf16(device) and device.type == "cuda" \
        else torch.float32


def load_text_encoder(folder: str, literal: bool = True):
    """CLIP of the pipeline's T5; a clear error names a missing or mismatching tensor."""
    import comfy.sd
    import comfy.utils


    config = t5_config(folder)
    tokenizer_dir = os.path.join(folder, "tokenizer")
    if not any(os.path.isfile(os.path.join(tokenizer_dir, f)) for f in ("tokenizer.json", "spiece.model")):
        raise ValueError("tokenizer: neither tokenizer.json nor spiece.model is in tokenizer/")
    sd = load_state_dict(os.path.join(folder, "text_encoder"), "text_encoder")
    sd.pop("encoder.embed_tokens.weight", None)   # tied to shared.weight in T5EncoderModel
    clip = comfy.sd.CLIP(clip_target(config, tokenizer_dir, literal), parameters=comfy.utils.calculate_parameters(sd),
                         model_options={"dtype": text_encoder_dtype()})
    missing, unexpected = clip.load_sd(sd)
    if missing or unexpected:
        raise ValueError(f"text_encoder: the weights do not match config.json — missing {list(missing)[:4]}, "
                         f"unexpected {list(unexpected)[:4]}")
    return clip
