"""MfM Pipeline Loader: an official MfM pipeline folder (LetsThink/MfM-Pipeline-2B/-8B, diffusers layout) under
``models/mfm`` as ComfyUI objects (SPEC §2). This file reads the folder; samplers/mfm_model.py makes the MODEL.

Layout: ``model_index.json``; ``transformer/config.json`` + ``*.safetensors`` (one file or shards with a
``.safetensors.index.json``); ``scheduler/scheduler_config.json`` (FlowMatchEulerDiscreteScheduler: ``shift``);
``vae/config.json`` (``scaling_factor``); ``text_encoder/``, ``tokenizer/``. Every size comes from these files;
weights load from safetensors only (a folder with only ``.bin``/``.pt`` files is refused: unpickling runs code).
"""
from __future__ import annotations

import json
import logging
import os

from comfy_api.latest import io

from ..nodes.naming import category, node_id

log = logging.getLogger("UniCascade")
COMPONENTS = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer")
DEFAULT_VAE_SCALE = 0.958917567        # what the official pipeline divides by when vae/config.json has none


def pipeline_folders() -> list[str]:
    """Names (relative to a registered ``models/mfm`` folder) of sub-folders holding a model_index.json."""
    import folder_paths

    names = set()
    for base in folder_paths.get_folder_paths("mfm"):
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base):
            if "model_index.json" in files:
                names.add(os.path.relpath(root, base))
                dirs[:] = []
    return sorted(names)


def resolve_folder(name: str) -> str:
    import folder_paths

    for base in folder_paths.get_folder_paths("mfm"):
        path = os.path.realpath(os.path.join(base, name))
        if os.path.isfile(os.path.join(path, "model_index.json")) and \
                os.path.commonpath([path, os.path.realpath(base)]) == os.path.realpath(base):
            return path
    raise ValueError(f"pipeline: '{name}' is not a folder with a model_index.json under models/mfm")


def read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what}: {os.path.basename(path)} is missing") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {os.path.basename(path)} is not valid JSON ({e})") from None


def check_components(folder: str) -> dict:
    index = read_json(os.path.join(folder, "model_index.json"), "pipeline")
    missing = [c for c in COMPONENTS if c not in index or not os.path.isdir(os.path.join(folder, c))]
    if missing:
        raise ValueError(f"pipeline {os.path.basename(folder)}: missing component(s) {', '.join(missing)} "
                         f"(model_index.json and a sub-folder each)")
    return index


def safetensors_files(component_dir: str, what: str) -> list[str]:
    """The component's weight files: the shards an index names, or every .safetensors file."""
    files = sorted(os.listdir(component_dir))
    index = [f for f in files if f.endswith(".safetensors.index.json")]
    if index:
        shards = sorted(set(read_json(os.path.join(component_dir, index[0]), what)["weight_map"].values()))
        absent = [s for s in shards if not os.path.isfile(os.path.join(component_dir, s))]
        if absent:
            raise ValueError(f"{what}: shard(s) {', '.join(absent)} named by {index[0]} are missing")
        return [os.path.join(component_dir, s) for s in shards]
    weights = [os.path.join(component_dir, f) for f in files if f.endswith(".safetensors")]
    if not weights:
        pickled = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise ValueError(f"{what}: no .safetensors weights" + (f" (only pickle files {', '.join(pickled)}: convert them "
                         f"to safetensors; the pack never unpickles)" if pickled else ""))
    return weights


def load_state_dict(component_dir: str, what: str) -> dict:
    import comfy.utils

    sd = {}
    for path in safetensors_files(component_dir, what):
        try:
            sd.update(comfy.utils.load_torch_file(path, safe_load=True))
        except Exception as e:
            raise ValueError(f"{what}: cannot read {os.path.basename(path)} ({type(e).__name__}: {e})") from e
    return sd


def scheduler_shift(folder: str) -> float:
    cfg = read_json(os.path.join(folder, "scheduler", "scheduler_config.json"), "scheduler")
    kind = cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    if kind != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"scheduler: {kind} is not the flow-matching scheduler MfM samples with")
    if cfg.get("use_dynamic_shifting"):
        raise ValueError("scheduler: use_dynamic_shifting is on; the MfM pipeline samples with a fixed shift")
    return float(cfg.get("shift", 1.0))


def vae_scale(folder: str) -> float:
    cfg = read_json(os.path.join(folder, "vae", "config.json"), "vae")
    scale = cfg.get("scaling_factor")
    if scale is None:
        log.info("MfM: vae/config.json has no scaling_factor; using the official pipeline's %s", DEFAULT_VAE_SCALE)
        return DEFAULT_VAE_SCALE
    return float(scale)


def load_transformer(folder: str, shift: float, scale: float):
    """A ModelPatcher around core.mfm's transformer with the folder's weights, sized by its config.json."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils

    from ..samplers.mfm_model import MfMConfig

    config = read_json(os.path.join(folder, "transformer", "config.json"), "transformer")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    sd = load_state_dict(os.path.join(folder, "transformer"), "transformer")
    model_config = MfMConfig(config, shift, scale)
    load_device = comfy.model_management.get_torch_device()
    params = comfy.utils.calculate_parameters(sd)
    dtype = comfy.model_management.unet_dtype(model_params=params, supported_dtypes=model_config.supported_inference_dtypes,
                                              weight_dtype=comfy.utils.weight_dtype(sd))
    model_config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(
        dtype, load_device, model_config.supported_inference_dtypes))
    try:
        model = model_config.get_model(sd, "")
    except (ValueError, TypeError) as e:
        raise ValueError(f"transformer: {e}") from e
    model = model.to(comfy.model_management.unet_offload_device())
    expected = model.diffusion_model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError("transformer: the weights do not match config.json — "
                         + (f"missing {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}" if missing else "")
                         + ("; " if missing and unexpected else "")
                         + (f"unexpected {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}"
                            if unexpected else ""))
    for key, tensor in sd.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"transformer: {key} is {tuple(tensor.shape)} in the weights but "
                             f"{tuple(expected[key].shape)} by config.json")
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                            offload_device=comfy.model_management.unet_offload_device())


def load_pipeline_model(name: str):
    folder = resolve_folder(name)
    check_components(folder)
    return load_transformer(folder, scheduler_shift(folder), vae_scale(folder))


def load_pipeline(name: str) -> tuple:
    """(MODEL, CLIP, VAE) of a pipeline folder."""
    from .mfm_text_encoder import load_text_encoder
    from .mfm_vae import load_vae

    folder = resolve_folder(name)
    check_components(folder)
    model = load_transformer(folder, scheduler_shift(folder), vae_scale(folder))
    clip = load_text_encoder(folder)
    text_dim = model.model.diffusion_model.config.text_dim
    width = clip.cond_stage_model.mfm_t5.transformer.shared.weight.shape[1]
    if width != text_dim:
        raise ValueError(f"text_encoder: T5 is {width} wide but the transformer's cross_attention_dim is {text_dim}")
    vae = load_vae(folder)
    if vae.latent_channels != model.model.diffusion_model.in_channels:
        raise ValueError(f"vae: {vae.latent_channels} latent channels, the transformer takes "
                         f"{model.model.diffusion_model.in_channels}")
    try:
        fit_preview_factors(model, vae)
    except Exception as e:   # previews are a convenience: never a reason to refuse a pipeline
        log.warning("MfM: no latent previews (fitting the preview factors failed: %s: %s)", type(e).__name__, e)
    return model, clip, vae


def fit_preview_factors(model, vae) -> float:
    """Latent → RGB preview factors for ComfyUI's sampler previews (0.3.75 ships none for this latent space),
    fitted to this pipeline's own VAE on a few probe images (core/latent_rgb.py). Returns the fit's R²."""
    from ..core.latent_rgb import fit_latent_rgb, probe_images

    images = probe_images()
    latent_format = model.model.latent_format
    latents = latent_format.process_in(vae.encode_images(images))
    latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias, r2 = fit_latent_rgb(latents, images)
    log.info("MfM: latent preview factors fitted to the pipeline's VAE (R² %.3f on %d probe images)", r2, len(images))
    return r2


class MfMPipelineLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("MfMPipelineLoader"),
            display_name="MfM Pipeline Loader",
            category=category("loaders"),
            description="Loads an official MfM pipeline folder (LetsThink/MfM-Pipeline-2B or -8B, diffusers layout) "
                        "from models/mfm: the transformer with its light adapter as a MODEL that samples with the "
                        "scheduler's shift (core KSampler / SamplerCustomAdvanced), its T5 as a CLIP for "
                        "CLIPTextEncode and its VAE for VAEDecode. Sizes come from the folder's "
                        "config files; weights from safetensors only.",
            inputs=[io.Combo.Input("pipeline", options=pipeline_folders(),
                                   tooltip="A folder under models/mfm holding model_index.json.")],
            outputs=[io.Model.Output(tooltip="The MfM transformer (flow, the pipeline's shift)."),
                     io.Clip.Output(tooltip="The pipeline's T5 (77 tokens, prompt lower-cased, its attention mask "
                                            "carried to the DiT): use it with CLIPTextEncode."),
                     io.Vae.Output(tooltip="The pipeline's CogVideoX-class VAE (8× spatial, 4× temporal, 16 "
                                           "channels) for VAEEncode / VAEDecode and their tiled variants.")],
        )

    @classmethod
    def execute(cls, pipeline) -> io.NodeOutput:
        return io.NodeOutput(*load_pipeline(pipeline))
