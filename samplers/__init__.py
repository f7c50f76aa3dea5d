"""Sampling-time machinery that plugs into ComfyUI's model patching (patches, wrappers, guiders)."""
