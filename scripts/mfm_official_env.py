"""Run-time access to the official MfM code for scripts/mfm_parity.py (nothing of it is copied here).

The official repository (https://github.com/leeruibin/MfM) is checked out, untouched, in a git-ignored folder
(default ``.build/mfm-official``) and imported from there at run time. This module:

- ``import_official(path)``: puts the checkout on ``sys.path`` and imports ``MfMPipeline`` and
  ``Transformer3DModel``. The pipeline module imports ``decord`` at module level (``from decord import
  VideoReader, cpu, gpu``); decord is not installed here, so a stand-in module is placed in ``sys.modules`` first:
  its ``VideoReader`` serves frames registered with ``register_video`` under a fake ``*.mp4`` path (the official
  video tasks read their input only through ``VideoReader(path, ctx=cpu(0))``, ``len(vr)`` and
  ``vr[i].asnumpy()``); ``cpu``/``gpu`` return None. Nothing else is stubbed.
- ``write_pipeline_folder(folder, seed)``: a tiny pipeline folder in the official diffusers layout with random,
  seeded weights, every component written by its own class's ``save_pretrained`` (the official
  ``Transformer3DModel``, diffusers' ``AutoencoderKLCogVideoX`` and ``FlowMatchEulerDiscreteScheduler``,
  transformers' ``T5EncoderModel``) and the tokenizer as the T5 v1.1 ``spiece.model`` (see ``write_spiece_model``).
- ``load_official_pipeline(folder, depth_pipe)``: ``MfMPipeline`` constructed directly from its components loaded
  from that folder, plus the setup the official inference script does (``post_setup_sequence_parallel(None)``).
- ``official_vae_scale(path)``: the latent scale the official pipeline decodes with, read from its source.
- ``official_prompt_settings(path)``: the prompt additions, negative prompts and task names the official
  inference script uses, read from ``infer_mfm_pipeline.py`` with ``ast`` (not imported: it needs accelerate's
  process setup and a depth model download).
"""
from __future__ import annotations

import ast
import base64
import json
import os
import sys
import types

import numpy as np
import torch

OFFICIAL_REPO = "https://github.com/leeruibin/MfM"
OFFICIAL_COMMIT = "a45db388c6b41d986162ab75077ddb12a4573513"   # the checkout this harness was written against

# tiny sizes: DiT width 2 × 32, 2 blocks; T5 width 64 (the DiT's cross-attention width), 2 layers
TRANSFORMER_CONFIG = {"num_attention_heads": 2, "attention_head_dim": 32, "in_channels": 16, "out_channels": 16,
                      "num_layers": 2, "cross_attention_dim": 64, "patch_size": 2, "patch_size_t": 1,
                      "sample_size": 32, "use_rope": True, "add_motion_score": True, "use_depth_cond": True,
                      "activation_fn": "gelu-approximate", "norm_type": "ada_norm_zero",
                      "adaln_norm_type": "legacy", "attention_bias": False, "num_block_chunks": 1,
                      "condition_type": "inpaint_mask"}
T5_CONFIG = {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 2, "vocab_size": 32128,
             "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
             "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
             "is_encoder_decoder": False, "use_cache": False}
VAE_CONFIG = {"block_out_channels": (32, 32, 32, 32), "layers_per_block": 1, "latent_channels": 16,
              "norm_num_groups": 32}   # scaling_factor stays diffusers' default (1.15258426), as CogVideoX ships it
SCHEDULER_SHIFT = 12.0

# -- the decord stand-in ------------------------------------------------------------------------------------------
_VIDEOS: dict[str, np.ndarray] = {}


def register_video(path: str, frames: np.ndarray) -> None:
    """Frames [T, H, W, 3] uint8 that the stand-in VideoReader returns for ``path``."""
    _VIDEOS[path] = np.ascontiguousarray(frames)


class _Frame:
    def __init__(self, array: np.ndarray):
        self._array = array

    def asnumpy(self) -> np.ndarray:
        return self._array.copy()


class StandInVideoReader:
    """What the official pipeline uses of decord.VideoReader: ``len`` and ``[i].asnumpy()``."""

    def __init__(self, path, ctx=None, **_kwargs):
        if path not in _VIDEOS:
            raise FileNotFoundError(f"stand-in decord: no frames registered for {path!r}")
        self._frames = _VIDEOS[path]

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> _Frame:
        return _Frame(self._frames[index])


def install_decord_stand_in() -> None:
    if "decord" in sys.modules:
        return
    module = types.ModuleType("decord")
    module.VideoReader = StandInVideoReader
    module.cpu = lambda *args, **kwargs: None
    module.gpu = lambda *args, **kwargs: None
    module.__doc__ = "Stand-in for decord (scripts/mfm_official_env.py): serves registered in-memory frames."
    sys.modules["decord"] = module


def check_checkout(path: str) -> str:
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "mfm", "pipelines", "pipeline_mfm.py")):
        raise SystemExit(f"{path} is not a checkout of {OFFICIAL_REPO} (mfm/pipelines/pipeline_mfm.py is missing). "
                         f"Get it with: git clone {OFFICIAL_REPO} {path} && git -C {path} checkout {OFFICIAL_COMMIT}")
    return path


def import_official(path: str):
    """(MfMPipeline, Transformer3DModel) imported from the checkout at ``path``."""
    path = check_checkout(path)
    if path not in sys.path:
        sys.path.insert(0, path)
    install_decord_stand_in()
    from mfm.modeling.transformer_3d import Transformer3DModel
    from mfm.pipelines.pipeline_mfm import MfMPipeline
    return MfMPipeline, Transformer3DModel


# -- the official script's prompt settings, read with ast -------------------------------------------------------
def official_prompt_settings(path: str) -> dict:
    """From ``infer_mfm_pipeline.py``: the argparse defaults of ``--added_prompt`` and ``--negative_prompt``, the
    ``task_map`` dict (task key → ``#task:`` name) and the per-task overrides ``args.added_prompt = …`` /
    ``args.negative_prompt = …`` with the task keys of the ``if args.task in [...]`` that guards them."""
    source = open(os.path.join(check_checkout(path), "infer_mfm_pipeline.py"), encoding="utf-8").read()
    tree = ast.parse(source)
    settings = {"defaults": {}, "task_map": None, "overrides": {}}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            flag = ast.literal_eval(node.args[0]) if isinstance(node.args[0], ast.Constant) else None
            if flag in ("--added_prompt", "--negative_prompt"):
                for kw in node.keywords:
                    if kw.arg == "default":
                        settings["defaults"][flag[2:]] = ast.literal_eval(kw.value)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "task_map" for t in node.targets):
            settings["task_map"] = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
                isinstance(node.test.left, ast.Attribute) and node.test.left.attr == "task" and \
                isinstance(node.test.ops[0], ast.In):
            try:
                tasks = ast.literal_eval(node.test.comparators[0])
            except ValueError:
                continue
            for statement in node.body:
                if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Attribute) and \
                        statement.targets[0].attr in ("added_prompt", "negative_prompt"):
                    for task in tasks:
                        settings["overrides"].setdefault(task, {})[statement.targets[0].attr] = \
                            ast.literal_eval(statement.value)
    if settings["task_map"] is None or len(settings["defaults"]) != 2:
        raise SystemExit("infer_mfm_pipeline.py: could not find task_map / --added_prompt / --negative_prompt")
    return settings


def official_prompts(settings: dict, task: str, prompt: str) -> tuple[str, str]:
    """The (positive, negative) strings the official script passes to the pipeline for ``task``."""
    added = settings["overrides"].get(task, {}).get("added_prompt", settings["defaults"]["added_prompt"])
    negative = settings["overrides"].get(task, {}).get("negative_prompt", settings["defaults"]["negative_prompt"])
    return f"{prompt} {added} #task: {settings['task_map'][task]}", negative


def official_vae_scale(path: str) -> float:
    """The constant the official pipeline divides the latents by before decoding (``vae_scaling_factor = …`` in
    ``MfMPipeline.__call__``), read from pipeline_mfm.py with ``ast``."""
    source = open(os.path.join(check_checkout(path), "mfm", "pipelines", "pipeline_mfm.py"), encoding="utf-8").read()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "vae_scaling_factor"
                                                for t in node.targets):
            return float(ast.literal_eval(node.value))
    raise SystemExit("pipeline_mfm.py: no vae_scaling_factor assignment found")


# -- the tiny folder ----------------------------------------------------------------------------------------------
def write_spiece_model(path: str, tokenizer_json: str) -> None:
    """A SentencePiece model equal to T5 v1.1's ``spiece.model``, rebuilt from the ``tokenizer.json`` ComfyUI ships
    for T5 (comfy/text_encoders/t5_tokenizer): the 32000 Unigram pieces with their scores (ids 0 <pad>, 1 </s>,
    2 <unk>), the NFKC precompiled charsmap, dummy prefix and whitespace handling of T5's SentencePiece model.
    (Checked: ``SentencePieceProcessor`` on it gives the same ids as that tokenizer.json.)"""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    data = json.load(open(tokenizer_json, encoding="utf-8"))
    model = spm_pb.ModelProto()
    kinds = {"<pad>": spm_pb.ModelProto.SentencePiece.CONTROL, "</s>": spm_pb.ModelProto.SentencePiece.CONTROL,
             "<unk>": spm_pb.ModelProto.SentencePiece.UNKNOWN}
    for piece, score in data["model"]["vocab"][:32000]:      # the rest are the 100 <extra_id_n> tokenizer additions
        entry = model.pieces.add()
        entry.piece, entry.score = piece, score
        entry.type = kinds.get(piece, spm_pb.ModelProto.SentencePiece.NORMAL)
    trainer = model.trainer_spec
    trainer.model_type, trainer.vocab_size = spm_pb.TrainerSpec.UNIGRAM, 32000
    trainer.pad_id, trainer.eos_id, trainer.unk_id, trainer.bos_id = 0, 1, 2, -1
    charsmap = next(n for n in data["normalizer"]["normalizers"] if n["type"] == "Precompiled")
    normalizer = model.normalizer_spec
    normalizer.name = "nmt_nfkc"
    normalizer.precompiled_charsmap = base64.b64decode(charsmap["precompiled_charsmap"])
    normalizer.add_dummy_prefix = normalizer.remove_extra_whitespaces = normalizer.escape_whitespaces = True
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def write_tokenizer(folder: str, comfy_dir: str) -> None:
    """T5 v1.1's tokenizer folder layout: spiece.model, special_tokens_map.json, tokenizer_config.json."""
    os.makedirs(folder, exist_ok=True)
    write_spiece_model(os.path.join(folder, "spiece.model"),
                       os.path.join(comfy_dir, "comfy", "text_encoders", "t5_tokenizer", "tokenizer.json"))
    extra = [f"<extra_id_{i}>" for i in range(100)]
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "additional_special_tokens": extra}, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>", "extra_ids": 100, "additional_special_tokens": extra,
                   "model_max_length": 512, "legacy": True}, f)


def write_pipeline_folder(folder: str, comfy_dir: str, official_path: str, seed: int = 0) -> None:
    """The tiny official-layout pipeline folder, seeded: the same ``seed`` writes the same weights."""
    from diffusers import AutoencoderKLCogVideoX, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    _, Transformer3DModel = import_official(official_path)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    transformer = Transformer3DModel(**TRANSFORMER_CONFIG)
    with torch.no_grad():
        for parameter in transformer.parameters():   # no exact zeros / ones anywhere (norm weights, biases)
            parameter.add_(torch.randn_like(parameter) * 0.02)
        # torch's default conv init shrinks the signal at every layer of the light adapter, so that its output
        # would barely move the DiT (a condition change of 0.02 → 1e-5 in v): He-normal weights keep the
        # condition pathway as strong as the latent one, so condition differences show in the outputs
        for module in transformer.cond_conv.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
    transformer.save_pretrained(os.path.join(folder, "transformer"), safe_serialization=True)

    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(**VAE_CONFIG)
    vae.save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)

    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(T5Config(**T5_CONFIG))
    with torch.no_grad():   # plain seeded normal weights, as harness/tiny_mfm.py does for its T5
        for parameter in text_encoder.parameters():
            parameter.normal_(0.0, 0.3)
    text_encoder.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    write_tokenizer(os.path.join(folder, "tokenizer"), comfy_dir)

    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SCHEDULER_SHIFT).save_pretrained(
        os.path.join(folder, "scheduler"))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "MfMPipeline", "depth_pipe": [None, None],
                   "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                   "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
                   "transformer": ["mfm", "Transformer3DModel"], "vae": ["diffusers", "AutoencoderKLCogVideoX"]},
                  f, indent=2)


def load_official_pipeline(folder: str, official_path: str, depth_pipe):
    """``MfMPipeline`` from its components (each loaded from ``folder`` by its class, as
    ``MfMPipeline.from_pretrained`` would), on the CPU in float32, after the script's
    ``post_setup_sequence_parallel(None)``."""
    from diffusers import AutoencoderKLCogVideoX, FlowMatchEulerDiscreteScheduler
    from transformers import T5EncoderModel, T5Tokenizer

    MfMPipeline, Transformer3DModel = import_official(official_path)
    pipe = MfMPipeline(tokenizer=T5Tokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
                       text_encoder=T5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")),
                       vae=AutoencoderKLCogVideoX.from_pretrained(os.path.join(folder, "vae")),
                       depth_pipe=depth_pipe,
                       transformer=Transformer3DModel.from_pretrained(os.path.join(folder, "transformer")),
                       scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(os.path.join(folder, "scheduler")))
    pipe = pipe.to("cpu", dtype=torch.float32)
    pipe.transformer.post_setup_sequence_parallel(None)
    pipe.set_progress_bar_config(disable=True)
    return pipe
