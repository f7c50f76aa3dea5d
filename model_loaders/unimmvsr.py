"""Loading UniMMVSR: a UniMMVSR checkpoint (full, or a delta over a Wan T2V checkpoint) as a ComfyUI MODEL (the
loader node is nodes/unimmvsr_loaders.py; the trainer builds its model here too)."""
from __future__ import annotations

from ..core.unimmvsr import checkpoint


def read_checkpoint(path: str, name: str) -> tuple[dict, dict]:
    """State dict + metadata of a UniMMVSR file (a delta merged over its base from models/diffusion_models)."""
    import comfy.utils
    import folder_paths

    try:
        sd, meta = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except Exception as e:  # truncated / corrupt safetensors
        raise ValueError(f"{name}: cannot read this safetensors file ({type(e).__name__}: {e})") from e
    meta = meta or {}
    if meta.get("unimmvsr_kind") == "delta":
        base_name = meta.get("unimmvsr_base", "")
        base_path = folder_paths.get_full_path("diffusion_models", base_name)
        if base_path is None:
            raise ValueError(f"{name} is a delta over '{base_name}', which is not in models/diffusion_models")
        sd = checkpoint.merge_delta(sd, comfy.utils.load_torch_file(base_path, safe_load=True))
    return sd, meta


def build_unimmvsr(sd: dict, meta: dict, name: str, model_options: dict | None = None):
    """A ComfyUI ModelPatcher of the Wan backbone with the UniMMVSR parts installed, from a full state dict —
    the one way the loader node and the trainer make the model. ``model_options`` go to ComfyUI's loader
    (e.g. {"dtype": torch.float32} for training)."""
    import comfy.sd
    from comfy.ldm.wan.model import WanModel

    from ..core.unimmvsr.aug_embedding import AugmentationEmbedding
    from ..samplers.unimmvsr_model import UniMMVSRConfig, install

    meta = checkpoint.validate(sd, meta)
    shift = checkpoint.shift_of(meta)
    aug_sd = {k[len(checkpoint.AUG_PREFIX):]: v for k, v in sd.items() if k.startswith(checkpoint.AUG_PREFIX)}
    wan_sd = {k: v for k, v in sd.items() if not k.startswith(checkpoint.PREFIX)}
    model = comfy.sd.load_diffusion_model_state_dict(wan_sd, model_options=model_options or {})
    if model is None or not isinstance(model.model.diffusion_model, WanModel):
        raise ValueError(f"{name}: the backbone weights are not a Wan diffusion model ComfyUI can load")
    dm = model.model.diffusion_model
    aug = AugmentationEmbedding(aug_sd["linear_1.weight"].shape[1], aug_sd["linear_1.weight"].shape[0])
    aug.load_state_dict({k: v.float() for k, v in aug_sd.items()})
    if aug.linear_2.weight.shape[0] != dm.dim:
        raise ValueError(f"{name}: the augmentation embedding is {aug.linear_2.weight.shape[0]} wide, "
                         f"the model {dm.dim}")
    # the sampling shift of the checkpoint (paper 1.0), not ComfyUI's Wan default 8.0: BasicScheduler & co. read it
    sampling = model.get_model_object("model_sampling")
    sampling.set_parameters(shift=shift, multiplier=sampling.multiplier)
    install(model, aug.to(next(dm.parameters()).device), UniMMVSRConfig(
        backbone=meta["unimmvsr_backbone"], latent_channels=checkpoint.BACKBONES[meta["unimmvsr_backbone"]],
        id_start=int(meta.get("unimmvsr_id_start", 20)), video_start=int(meta.get("unimmvsr_video_start", 30))))
    return model


def load_unimmvsr(path: str, name: str):
    sd, meta = read_checkpoint(path, name)
    return build_unimmvsr(sd, meta, name)
