"""Pyramid Reflection (UniVid §2.4, Alg. 1, A.5, A.6) in plain Python/PyTorch, without ComfyUI.

Keyframe retrieval on cached frame embeddings (expand / MMR shrink), the Actor/Evaluator/Reflector loop with its
fallbacks, our own prompt texts for the A.5 instructions, tolerant JSON reading, the content cache and an
OpenAI-compatible chat client. Models reach the loop through the small ``ChatBackend`` interface.
"""
