"""UniCascade core: pure-PyTorch/NumPy code with no ComfyUI imports.

Readable and testable on its own; the ComfyUI nodes in ``nodes/`` and ``samplers/`` are thin layers over it.
"""
