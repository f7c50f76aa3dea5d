"""The pack's own socket types (one name per type; ComfyUI matches sockets by the string)."""
from comfy_api.latest import io

DEPTH = io.Custom("UNICASCADE_DEPTH")                    # depth frames [T, H, W] in [0, 1] (Depth Estimator)
DEPTH_MODEL = io.Custom("UNICASCADE_DEPTH_MODEL")        # a loaded Depth Anything V2
MFM_CONDITION = io.Custom("UNICASCADE_MFM_CONDITION")    # an MfM task's pixel + depth + mask condition
LR_CONDITION = io.Custom("UNIMMVSR_LR")                  # the UniMMVSR upsampler's LR condition (LRCondition)
REFERENCES = io.Custom("UNIMMVSR_REFERENCES")            # UniMMVSR reference latents
SIGLIP = io.Custom("UNICASCADE_SIGLIP")                  # a SigLIP2 retriever (Pyramid Reflection)
LLM = io.Custom("UNICASCADE_LLM")                        # a chat backend: local transformers or an HTTP endpoint
