"""Resumable training state in safetensors + JSON only (nothing is ever unpickled).

``<output>/checkpoints/step_<N>/``: ``trainable.safetensors`` (the trained parameters by name), ``optimizer.safetensors``
(AdamW's per-parameter tensors as ``<param>/<key>``) with its hyper-parameters in ``state.json``, ``ema.safetensors``
when EMA is on. The data stream is a pure function of the step (curriculum.sample_rng), so the step is the whole
data-loader state. Works for one rank, DDP and FSDP2 through torch.distributed.checkpoint's state-dict API (full
tensors gathered to CPU; every rank loads them back).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil

import torch

STATE = "state.json"


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def trainable_names(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def gather(module, optimizer) -> tuple[dict, dict]:
    """Full (unsharded, CPU) trainable parameters and optimizer state, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    names = set(trainable_names(module))
    model_sd = {k: v for k, v in get_model_state_dict(module, options=_options()).items() if k in names}
    optim_sd = get_optimizer_state_dict(module, optimizer, options=_options())
    return model_sd, optim_sd


def save(directory: str, step: int, module, optimizer, ema: dict | None, info: dict, is_main: bool,
         keep_last: int = 0) -> str | None:
    """Every rank must call (gathering is collective); rank 0 writes, then deletes all but the ``keep_last`` newest
    step folders (0 keeps all). Returns the folder written."""
    from safetensors.torch import save_file
    model_sd, optim_sd = gather(module, optimizer)
    ema_full = None
    if ema is not None:
        ema_full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().contiguous()
                    for k, v in ema.items()}
    if not is_main:
        return None
    folder = os.path.join(directory, f"step_{step:08d}")
    tmp = folder + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model_sd.items()}, os.path.join(tmp, "trainable.safetensors"))
    tensors, scalars = {}, {}
    for name, state in optim_sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().contiguous()
            else:
                scalars[f"{name}/{key}"] = value
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    if ema_full is not None:
        save_file(ema_full, os.path.join(tmp, "ema.safetensors"))
    with open(os.path.join(tmp, STATE), "w", encoding="utf-8") as f:
        json.dump({"step": step, "param_groups": optim_sd["param_groups"], "optimizer_scalars": scalars, **info}, f,
                  indent=1)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    if keep_last > 0:
        for old in steps(directory)[:-keep_last]:
            shutil.rmtree(old)
    return folder


def steps(directory: str) -> list[str]:
    """The complete step folders under ``directory``, oldest first (a ``.tmp`` one is an interrupted write)."""
    return sorted(p for p in glob.glob(os.path.join(directory, "step_*")) if re.fullmatch(r"step_\d+", os.path.basename(p)))


def latest(directory: str) -> str | None:
    found = steps(directory)
    return found[-1] if found else None


def load(folder: str, module, optimizer, ema: dict | None) -> dict:
    """Restore parameters, optimizer and EMA from ``folder`` on every rank; returns state.json."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    with open(os.path.join(folder, STATE), encoding="utf-8") as f:
        info = json.load(f)
    params = load_file(os.path.join(folder, "trainable.safetensors"))
    missing = sorted(set(trainable_names(module)) - set(params))
    if missing:
        raise ValueError(f"{folder}: the checkpoint lacks trained parameter(s) {', '.join(missing[:5])} — was it made "
                         f"with another [training] lora_rank or model?")
    set_model_state_dict(module, params, options=_options(strict=False))
    tensors = load_file(os.path.join(folder, "optimizer.safetensors"))
    state: dict[str, dict] = {}
    for key, value in tensors.items():
        name, _, field = key.rpartition("/")
        state.setdefault(name, {})[field] = value
    for key, value in info.get("optimizer_scalars", {}).items():
        name, _, field = key.rpartition("/")
        state.setdefault(name, {})[field] = value
    set_optimizer_state_dict(module, optimizer, {"state": state, "param_groups": info["param_groups"]},
                             options=_options())
    if ema is not None:
        path = os.path.join(folder, "ema.safetensors")
        if os.path.isfile(path):
            saved = load_file(path)
            for k, v in ema.items():
                if hasattr(v, "full_tensor"):
                    from torch.distributed.tensor import distribute_tensor
                    v.copy_(distribute_tensor(saved[k].to(v.dtype), v.device_mesh, v.placements))
                else:
                    v.copy_(saved[k])
    return info
