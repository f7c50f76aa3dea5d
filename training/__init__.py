"""Training pipelines that make the weights the pack's loaders read (no ComfyUI nodes here)."""
