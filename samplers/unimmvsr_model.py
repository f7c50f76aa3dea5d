"""UniMMVSR on a ComfyUI Wan model (UniMMVSR §3.2; docs/design.md §2, §12).

The Wan backbone is ComfyUI's own (loaded by its loader, managed by its memory manager); the UniMMVSR parts are
attached to it: the augmentation-timestep embedding as a sub-module of the diffusion model (so it moves and
offloads with it), and a DIFFUSION_MODEL wrapper that runs core.unimmvsr.forward.unimmvsr_forward — the same
function the trainer calls. ``patch_embedding`` takes 2·C channels and ComfyUI's Wan ``concat_cond`` path fills the
extra ones from the conditioning's ``c_concat``. Without references the wrapper continues down ComfyUI's wrapper
chain (other packs' wrappers still run); with references the backbone runs on the joint sequence.
The guider (samplers/unimmvsr_guider.py) puts the augmentation timestep and the references for each evaluation
into ``transformer_options`` under the keys below.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.unimmvsr.aug_embedding import AugmentationEmbedding
from ..core.unimmvsr.forward import ReferenceTokens, reference_freqs, unimmvsr_forward

AUG_T_KEY = "unicascade_unimmvsr_aug_t"
REFERENCES_KEY = "unicascade_unimmvsr_references"
CONFIG_KEY = "unicascade_unimmvsr"
WRAPPER_KEY = "unicascade_unimmvsr"
AUG_MODULE = "unimmvsr_aug_embedding"

__all__ = ["ReferenceTokens", "reference_freqs", "install", "config_of", "UniMMVSRConfig"]


@dataclass(frozen=True)
class UniMMVSRConfig:
    backbone: str
    latent_channels: int
    id_start: int
    video_start: int


def diffusion_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={},
                      **kwargs):
    module = executor.class_obj

    def run_plain(x_, t_, c_, **kw):
        return executor(x_, t_, c_, kw.pop("clip_fea", None), kw.pop("time_dim_concat", None),
                        kw.pop("transformer_options", {}), **kw)

    return unimmvsr_forward(module, getattr(module, AUG_MODULE), x, timestep, context,
                            aug_t=float(transformer_options.get(AUG_T_KEY, 0.0)),
                            references=transformer_options.get(REFERENCES_KEY), run_plain=run_plain,
                            clip_fea=clip_fea, time_dim_concat=time_dim_concat,
                            transformer_options=transformer_options, **kwargs)


def install(model, aug_embedding: AugmentationEmbedding, config: UniMMVSRConfig) -> None:
    """Attach the UniMMVSR parts to a freshly loaded Wan ModelPatcher (in place)."""
    import comfy.patcher_extension

    dm = model.get_model_object("diffusion_model")
    dm.add_module(AUG_MODULE, aug_embedding)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, diffusion_wrapper)
    model.model_options.setdefault("transformer_options", {})[CONFIG_KEY] = config


def config_of(model) -> UniMMVSRConfig | None:
    return model.model_options.get("transformer_options", {}).get(CONFIG_KEY)
