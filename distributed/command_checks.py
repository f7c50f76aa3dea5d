"""What a multi-GPU worker accepts from the rendezvous (README "4K on many GPUs" → "Who can join"; docs/design.md §13).

Only holders of the pool's secret can write commands, but every holder can (each remote machine has it), so a
worker still treats each command as input: it replays only the pack's own MODEL nodes, the loader first, with
widget values its own node schemas accept (checkpoint names that its model folders list — never a path); and it
allocates only tensors that fit the prompt's declared latent. A refused command is logged and answered; the
worker keeps serving.
"""
from __future__ import annotations

import math
import numbers

from .wire import DTYPES

LOADER = "UniCascadeUniMMVSRLoader"
PATCH_NODES = ("UniCascadeTemperatureModalityAlignment", "UniCascadeAttentionBackend")
OPS = ("load", "prompt", "step")
MAX_LATENT_ELEMENTS = 1 << 30        # a declared latent (4K, 121 frames, 48 channels is ≈ 2.5e8)
REFERENCE_FACTOR = 16                # conditions and references: at most this × the declared latent
MAX_TEXT_ELEMENTS = 4096 * 8192      # one text condition per batch item (UMT5: 512 × 4096)
MAX_SIGMAS = 10_001
MAX_STRING = 4096


class CommandRefused(ValueError):
    """The command is not one this worker runs; the message says why."""


def check_op(cmd) -> str:
    if not isinstance(cmd, dict) or cmd.get("op") not in OPS:
        op = cmd.get("op") if isinstance(cmd, dict) else type(cmd).__name__
        raise CommandRefused(f"unknown command {op!r} (expected one of {', '.join(OPS)})")
    return cmd["op"]


def check_recipe(steps, node_classes: dict) -> None:
    """The loader first and once, then the pack's patch nodes; every input one its schema accepts."""
    if not isinstance(steps, list) or not steps:
        raise CommandRefused("load: the recipe is empty")
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("node"), str) or not isinstance(step.get("inputs"),
                                                                                                 dict):
            raise CommandRefused(f"load: recipe step {i} is not {{node, inputs}}")
        node = step["node"]
        if i == 0 and node != LOADER:
            raise CommandRefused(f"load: the recipe must start with {LOADER}, not {node}")
        if i > 0 and node not in PATCH_NODES:
            raise CommandRefused(f"load: node {node} at step {i} is not replayed by workers (allowed after the "
                                 f"loader: {', '.join(PATCH_NODES)})")
        if node not in node_classes:
            raise CommandRefused(f"load: this worker's pack has no node {node} (same pack version everywhere?)")
        check_inputs(node, step["inputs"], node_classes[node].define_schema())


def check_inputs(node: str, inputs: dict, schema) -> None:
    widgets = {i.id: i for i in schema.inputs if i.id != "model"}
    extra = sorted(set(inputs) - set(widgets))
    missing = sorted(k for k, i in widgets.items() if k not in inputs and not i.optional)
    if extra or missing:
        raise CommandRefused(f"load: {node} got inputs {extra or '-'} it does not have, lacks {missing or '-'}")
    for name, value in inputs.items():
        spec = widgets[name]
        options = getattr(spec, "options", None)
        if options is not None:
            if value not in options:
                raise CommandRefused(f"load: {node}.{name} = {str(value)[:200]!r} is not one of this worker's "
                                     f"choices (checkpoints come from its model folders, never from a path)")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, numbers.Real):
            lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
            if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
                raise CommandRefused(f"load: {node}.{name} = {value} is outside {lo}–{hi}")
        elif not isinstance(value, str):
            raise CommandRefused(f"load: {node}.{name} has a {type(value).__name__} value")
        elif len(value) > MAX_STRING:
            raise CommandRefused(f"load: {node}.{name} is a string of {len(value)} characters")


def _shape(spec, what: str) -> list[int]:
    if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES:
        raise CommandRefused(f"{what}: a tensor of an unknown dtype "
                             f"{spec.get('dtype') if isinstance(spec, dict) else spec!r}")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 6
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise CommandRefused(f"{what}: shape {shape!r} is not 1–6 positive sizes")
    return shape


def declared_latent(cmd: dict) -> list[int]:
    shape = cmd.get("shape")
    if (not isinstance(shape, list) or len(shape) != 5
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise CommandRefused(f"prompt: the declared latent {shape!r} is not [B, C, T, H, W]")
    if math.prod(shape) > MAX_LATENT_ELEMENTS:
        raise CommandRefused(f"prompt: the declared latent {shape} is over {MAX_LATENT_ELEMENTS} elements")
    return shape


def check_prompt(cmd: dict) -> None:
    """Each tensor the prompt's broadcast would allocate, against its role and the declared latent."""
    latent = declared_latent(cmd)
    batch, budget = latent[0], REFERENCE_FACTOR * math.prod(latent)
    specs = cmd.get("tensors")
    if not isinstance(specs, list) or len(specs) > 256:
        raise CommandRefused("prompt: the tensor list is missing or longer than 256")
    shapes = [_shape(s, f"prompt tensor {i}") for i, s in enumerate(specs)]

    def index(value, what):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(shapes):
            raise CommandRefused(f"prompt: {what} names tensor {value!r}, not one of the {len(shapes)} sent")
        return value

    roles: dict[int, str] = {index(cmd.get("condition"), "condition"): "condition"}
    for r in cmd.get("references") or []:
        roles[index(r.get("tensor") if isinstance(r, dict) else None, "a reference")] = "reference"
    if cmd.get("sample_sigmas") is not None:
        roles[index(cmd["sample_sigmas"], "sample_sigmas")] = "sigmas"
    for side in ("positive", "negative"):
        for entry in cmd.get(side) or []:
            for name, v in (entry.get("model_conds") or {}).items() if isinstance(entry, dict) else ():
                if isinstance(v, dict) and "tensor" in v:
                    roles[index(v["tensor"], f"{side} {name}")] = "text"
    for i, shape in enumerate(shapes):
        role, n = roles.get(i), math.prod(shape)
        if role is None:
            raise CommandRefused(f"prompt: tensor {i} has no role in the prompt")
        if role == "sigmas" and (len(shape) != 1 or n > MAX_SIGMAS):
            raise CommandRefused(f"prompt: sample_sigmas of shape {shape} (1-D, at most {MAX_SIGMAS})")
        if role == "text" and n > batch * MAX_TEXT_ELEMENTS:
            raise CommandRefused(f"prompt: a text condition of shape {shape} is over {batch} × {MAX_TEXT_ELEMENTS}")
        if role in ("condition", "reference") and n > budget:
            raise CommandRefused(f"prompt: the {role} of shape {shape} is over {REFERENCE_FACTOR} × the declared "
                                 f"latent {latent}")


def check_step(cmd: dict, latent: list[int] | None) -> None:
    """A step moves exactly the declared latent and one timestep per batch item."""
    if latent is None:
        raise CommandRefused("step: no prompt declared a latent before it")
    shape = _shape({"shape": cmd.get("latent_shape"), "dtype": cmd.get("latent_dtype")}, "step latent")
    if shape != list(latent):
        raise CommandRefused(f"step: latent {shape} is not the prompt's declared {latent}")
    t = _shape({"shape": cmd.get("timestep_shape"), "dtype": cmd.get("timestep_dtype")}, "step timestep")
    if len(t) != 1 or t[0] > latent[0]:
        raise CommandRefused(f"step: timestep of shape {t} for a batch of {latent[0]}")
