"""How a worker rebuilds rank 0's model: the pack's MODEL nodes record what they did (node id + widget values)
in ``model_options`` — their ``execute`` is wrapped by ``records_recipe``, the one place a step is written —; a
worker replays the loader and each patch node with ComfyUI's own loaders, then compares the patch signature of its
model with rank 0's — a model patched by anything the recipe does not explain (a LoRA, another pack's patch) is
refused by name instead of being sampled with different weights on some tiles."""
from __future__ import annotations

import functools
import inspect

RECIPE_KEY = "unicascade_recipe"


def record(model, node: str, **inputs) -> None:
    """Append one step to ``model``'s recipe (call on the clone a node returns)."""
    steps = list(model.model_options.get(RECIPE_KEY, []))
    steps.append({"node": node, "inputs": inputs})
    model.model_options[RECIPE_KEY] = steps


def records_recipe(execute):
    """Wraps a MODEL node's ``execute`` (below its @classmethod): the MODEL it returns (its first output) gets one
    recipe step, the node's id and every input except ``model`` (a worker's ``replay`` calls ``execute`` with them
    and the model rebuilt so far)."""
    parameters = inspect.signature(execute)

    @functools.wraps(execute)
    def wrapper(cls, *args, **kwargs):
        output = execute(cls, *args, **kwargs)
        bound = parameters.bind(cls, *args, **kwargs)
        bound.apply_defaults()
        inputs = dict(list(bound.arguments.items())[1:])
        inputs.pop("model", None)
        record(output.result[0], cls.define_schema().node_id, **inputs)
        return output
    return wrapper


def recipe_of(model) -> list[dict]:
    steps = list(model.model_options.get(RECIPE_KEY, []))
    if not steps or steps[0]["node"] != "UniCascadeUniMMVSRLoader":
        raise ValueError("model: the multi-GPU workers rebuild the model from the UniMMVSR Loader; this model did "
                         "not come from it")
    return steps


def signature(model) -> list[str]:
    """What is patched on a ModelPatcher: weight patches, object patches, wrappers, callbacks and
    transformer-option patches by name (values are functions and cannot be compared across processes)."""
    out = []
    if model.patches:
        out.append(f"weight patches on {len(model.patches)} tensors")
    out += [f"object patch {k}" for k in sorted(model.object_patches)]
    opts = model.model_options
    to = opts.get("transformer_options", {})
    for label, table in (("wrapper", "wrappers"), ("callback", "callbacks")):
        merged: dict = {}
        for source in (getattr(model, table, {}), to.get(table, {})):   # the patcher's own and the options'
            for kind, by_key in source.items():
                for k, fns in by_key.items():
                    if fns:
                        merged.setdefault(f"{label} {kind}/{k}", 0)
                        merged[f"{label} {kind}/{k}"] += len(fns)
        out += [f"{name} ×{n}" for name, n in sorted(merged.items())]
    for name, fns in sorted(to.get("patches", {}).items()):
        out.append(f"patch {name} ×{len(fns)}")
    for name, by_block in sorted(to.get("patches_replace", {}).items()):
        out += [f"patches_replace {name}/{k}" for k in sorted(map(str, by_block))]
    out += [f"model option {k}" for k in sorted(opts) if k not in ("transformer_options", RECIPE_KEY)
            and opts[k] is not None]
    return out


def replay(steps: list[dict], node_classes: dict):
    """Run the recorded nodes in order (the loader first) and return the MODEL."""
    model = None
    for step in steps:
        cls = node_classes.get(step["node"])
        if cls is None:
            raise ValueError(f"the recipe names node {step['node']}, which this worker's pack does not have "
                             f"(same pack version on every machine?)")
        inputs = dict(step["inputs"])
        if model is not None:
            inputs["model"] = model
        model = cls.execute(**inputs).result[0]
    return model
