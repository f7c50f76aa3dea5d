"""MfM Pipeline Loader: an official MfM pipeline folder (LetsThink/MfM-Pipeline-2B/-8B, diffusers layout) under
``models/mfm`` as ComfyUI objects (SPEC §2). This file reads the folder; samplers/mfm_model.py makes the MODEL.

Layout: ``model_index.json``; ``transformer/config.json`` + ``*.safetensors`` (one file or shards with a
``.safetensors.index.json``); ``scheduler/scheduler_config.json`` (FlowMatchEulerDiscreteScheduler: ``shift``);
``vae/config.json``; ``text_encoder/``, ``tokenizer/``. Every size comes from these files;
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
PROMPT_SYNTAXES = ("literal (official)", "comfyui weights")
OFFICIAL_VAE_SCALE = 0.958917567       # the official pipeline always divides by this before decoding; it never reads
                                       # vae/config.json's scaling_factor (docs/mfm.md "VAE scale")
# FlowMatchEulerDiscreteScheduler settings and the values under which its schedule is ComfyUI's "normal" scheduler
# at ``shift`` (docs/mfm.md "Schedule"); anything else is refused by name rather than silently ignored
SCHEDULER_NEUTRAL = {"use_dynamic_shifting": False, "shift_terminal": None, "invert_sigmas": False,
                     "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                     "stochastic_sampling": False, "num_train_timesteps": 1000}
SCHEDULER_IGNORED = ("shift", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type")


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
    """The scheduler's shift; a setting that would make its σ grid differ from a fixed-shift FlowMatch Euler
    schedule (dynamic shifting, a terminal shift, inverted or Karras/exponential/beta σ, stochastic steps) or an
    unknown key is refused by name."""
    cfg = read_json(os.path.join(folder, "scheduler", "scheduler_config.json"), "scheduler")
    kind = cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    if kind != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"scheduler: {kind} is not the flow-matching scheduler MfM samples with")
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in SCHEDULER_NEUTRAL
                     and k not in SCHEDULER_IGNORED)
    if unknown:
        raise ValueError(f"scheduler: scheduler_config.json has setting(s) {', '.join(unknown)} the pack does not "
                         f"implement")
    changed = [f"{k} = {cfg[k]!r}" for k, neutral in SCHEDULER_NEUTRAL.items() if k in cfg and cfg[k] != neutral
               and not (neutral is None and cfg[k] in (None, 0))]
    if changed:
        raise ValueError(f"scheduler: {', '.join(changed)} changes the σ grid from the fixed-shift FlowMatch Euler "
                         f"schedule the pack reproduces (ComfyUI's 'normal' scheduler at the shift); not supported")
    return float(cfg.get("shift", 1.0))


def vae_scale(folder: str, override: float = 0.0) -> float:
    """The latent scale of decode/encode: the official pipeline's constant (``override`` > 0 replaces it, for
    checkpoints that are not the official MfM). A different ``scaling_factor`` in vae/config.json is logged and
    not used, as the official pipeline never reads it."""
    if override > 0:
        log.info("MfM: VAE latent scale %s (override; the official pipeline uses %s)", override, OFFICIAL_VAE_SCALE)
        return float(override)
    cfg = read_json(os.path.join(folder, "vae", "config.json"), "vae")
    configured = cfg.get("scaling_factor")
    if configured is not None and abs(float(configured) - OFFICIAL_VAE_SCALE) > 1e-9:
        log.info("MfM: vae/config.json says scaling_factor %s; using the official pipeline's %s (it never reads the "
                 "config's value; set vae_scale_override for other checkpoints)", configured, OFFICIAL_VAE_SCALE)
    return OFFICIAL_VAE_SCALE


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


def load_pipeline_model(name: str, vae_scale_override: float = 0.0):
    folder = resolve_folder(name)
    check_components(folder)
    return load_transformer(folder, scheduler_shift(folder), vae_scale(folder, vae_scale_override))


def load_pipeline(name: str, vae_scale_override: float = 0.0, literal_prompts: bool = True) -> tuple:
    """(MODEL, CLIP, VAE) of a pipeline folder."""
    from .mfm_text_encoder import load_text_encoder
    from .mfm_vae import load_vae

    folder = resolve_folder(name)
    check_components(folder)
    model = load_transformer(folder, scheduler_shift(folder), vae_scale(folder, vae_scale_override))
    clip = load_text_encoder(folder, literal_prompts)
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
                                   tooltip="A folder under models/mfm holding model_index.json."),
                    io.Combo.Input("prompt_syntax", options=list(PROMPT_SYNTAXES), default=PROMPT_SYNTAXES[0],
                                   optional=True,
                                   tooltip="literal (default, as the official pipeline): the prompt's text is "
                                           "tokenised as written — lower-cased, cut at 77 tokens — so (word:1.2) "
                                           "or embedding: are plain text. comfyui weights: ComfyUI's (word:1.2) "
                                           "weighting and embeddings apply (output differs from the official)."),
                    io.Float.Input("vae_scale_override", default=0.0, min=0.0, max=10.0, step=0.0001, optional=True,
                                   tooltip=f"0 (default): the official latent scale {OFFICIAL_VAE_SCALE}, whatever "
                                           "vae/config.json says (the official pipeline never reads it). Set a "
                                           "value only for a checkpoint trained with another scale. Range 0–10.")],
            outputs=[io.Model.Output(tooltip="The MfM transformer (flow, the pipeline's shift)."),
                     io.Clip.Output(tooltip="The pipeline's T5 (77 tokens, prompt lower-cased, its attention mask "
                                            "carried to the DiT): use it with CLIPTextEncode."),
                     io.Vae.Output(tooltip="The pipeline's CogVideoX-class VAE (8× spatial, 4× temporal, 16 "
                                           "channels) for VAEEncode / VAEDecode and their tiled variants.")],
        )

    @classmethod
    def execute(cls, pipeline, prompt_syntax=PROMPT_SYNTAXES[0], vae_scale_override=0.0) -> io.NodeOutput:
        if prompt_syntax not in PROMPT_SYNTAXES:
            raise ValueError(f"prompt_syntax: one of {', '.join(PROMPT_SYNTAXES)}, not {prompt_syntax!r}")
        return io.NodeOutput(*load_pipeline(pipeline, vae_scale_override, prompt_syntax == PROMPT_SYNTAXES[0]))
