"""Depth Anything V2 in plain PyTorch: the image processor's preprocessing on tensors and the depth normalisations.

The model itself is transformers' ``DepthAnythingForDepthEstimation`` (loaded in ``model_loaders/``); here is only
what surrounds it, so frames go through in micro-batches as tensors instead of PIL images one by one.
"""
