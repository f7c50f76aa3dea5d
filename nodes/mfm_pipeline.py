"""MfM Pipeline Loader: an official MfM pipeline folder under models/mfm as MODEL, CLIP and VAE (the folder is read
by model_loaders/mfm_pipeline.py; docs/mfm.md)."""
from __future__ import annotations

from comfy_api.latest import io

from ..kit import category, node_id
from ..model_loaders.mfm_folder import pipeline_folders
from ..model_loaders.mfm_pipeline import OFFICIAL_VAE_SCALE, PROMPT_SYNTAXES, load_pipeline


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
