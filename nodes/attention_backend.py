"""UniCascade Attention: the pack's fused attention kernels (RoPE in the kernel, group logit scales) as a
MODEL → MODEL patch for Wan models."""
from __future__ import annotations

from comfy_api.latest import io

from ..distributed.recipe import records_recipe
from ..samplers.attention_backends import CHOICES, apply_attention_backend
from ..kit import category, choice_error, first_error, node_id


class AttentionBackend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("AttentionBackend"),
            display_name="UniCascade Attention",
            category=category("sampling"),
            description=(
                "Runs a Wan 2.1/2.2 model's self- and cross-attention on the pack's fused kernels: 3D RoPE applied "
                "inside the kernel from each token's (t, h, w) position (UniMMVSR reference frames included), and "
                "TMA's α applied to the logits in the same pass. Composes with TMA Attention Boost, UniMMVSR and "
                "other packs' attention overrides. Inference only; anything the kernels cannot serve keeps "
                "ComfyUI's default attention, with a message in the log."),
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1/2.2 model (T2V, I2V, VACE, 5B, 14B, UniMMVSR). Other "
                                                "models are passed through unchanged with a message."),
                io.Combo.Input("backend", options=list(CHOICES), default="auto",
                               tooltip="Default: auto — the Triton kernel on a CUDA GPU when Triton imports, else "
                                       "ComfyUI's default attention. 'default': no change. 'fused (Triton)': the "
                                       "Triton kernel (CUDA; falls back with a message elsewhere). 'flex': PyTorch "
                                       "FlexAttention, compiled (any device, CPUs included; the first run compiles, "
                                       "~25 s on a CPU)."),
            ],
            outputs=[io.Model.Output(tooltip="A patched clone; the input model is unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, backend=None):
        return first_error(choice_error("backend", backend, CHOICES))

    @classmethod
    @records_recipe
    def execute(cls, model, backend) -> io.NodeOutput:
        patched, _, _ = apply_attention_backend(model, backend)
        return io.NodeOutput(patched)
