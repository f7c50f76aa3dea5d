"""Loading an official MfM pipeline folder (LetsThink/MfM-Pipeline-2B/-8B, diffusers layout) under ``models/mfm``
as ComfyUI's MODEL, CLIP and VAE (docs/mfm.md). samplers/mfm_model.py makes the MODEL; the node is
nodes/mfm_pipeline.py; the folder itself is read by mfm_folder.py.

Layout: ``model_index.json``; ``transformer/config.json`` + ``*.safetensors`` (one file or shards with a
``.safetensors.index.json``); ``scheduler/scheduler_config.json`` (FlowMatchEulerDiscreteScheduler: ``shift``);
``vae/config.json``; ``text_encoder/``, ``tokenizer/``. Every size comes from these files.
"""
from __future__ import annotations

import logging
import os

from .mfm_folder import check_components, load_state_dict, read_json, resolve_folder
from .mfm_text_encoder import load_text_encoder
from .mfm_vae import load_mfm_vae

log = logging.getLogger("UniCascade")
PROMPT_SYNTAXES = ("literal (official)", "comfyui weights")
OFFICIAL_VAE_SCALE = 0.958917567       # the official pipeline always divides by this before decoding; it never reads
                                       # vae/config.json's scaling_factor (docs/mfm.md "VAE scale")
# FlowMatchEulerDiscreteScheduler settings and the values under which its schedule is ComfyUI's "normal" scheduler
# at ``shift`` (docs/mfm.md "Schedule"); anything else is refused by name rather than silently ignored
SCHEDULER_NEUTRAL = {"use_dynamic_shifting": False, "shift_terminal": None, "invert_sigmas": False,
                     "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                     "stochastic_sampling": False, "num_train_timesteps": 1000}
SCHEDULER_IGNORED = ("shift", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type")


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
    dtype = comfy.model_management.unet_dtype(model_params=params,
                                              supported_dtypes=model_config.supported_inference_dtypes,
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
    folder = resolve_folder(name)
    check_components(folder)
    model = load_transformer(folder, scheduler_shift(folder), vae_scale(folder, vae_scale_override))
    clip = load_text_encoder(folder, literal_prompts)
    text_dim = model.model.diffusion_model.config.text_dim
    width = clip.cond_stage_model.mfm_t5.transformer.shared.weight.shape[1]
    if width != text_dim:
        raise ValueError(f"text_encoder: T5 is {width} wide but the transformer's cross_attention_dim is {text_dim}")
    vae = load_mfm_vae(folder)
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
