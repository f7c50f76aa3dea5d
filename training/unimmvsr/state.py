"""Resumable training state in safetensors + JSON only: nothing is pickled, on disk or between ranks.

``<output>/checkpoints/step_<N>/`` holds one of two layouts, named by ``state.json``'s ``"layout"``:

- ``"whole"`` (one rank, DDP: every rank already holds the whole tensors, so rank 0 writes them and nothing is
  gathered): ``trainable.safetensors`` (the trained parameters by name), ``optimizer.safetensors`` (AdamW's
  per-parameter tensors as ``<param>/<key>``), ``ema.safetensors`` when EMA is on. A ``state.json`` without
  ``"layout"`` (written before sharded checkpoints existed) is this layout.
- ``"sharded"`` (FSDP2: parameters, AdamW moments and EMA are DTensors): every rank writes only its own shards to
  ``rank_<r>_of_<W>.safetensors`` — keys ``trainable/<param>``, ``optimizer/<param>/<key>``, ``ema/<name>`` — and no
  rank ever holds the whole model. Each file's safetensors metadata ``DCP_SHARDING_INFO`` gives every key's
  ``saved_offsets`` in the global tensor (the convention of torch.distributed.checkpoint's
  ``HuggingFaceStorageReader``, which can read these folders too). Tensors that are not sharded (AdamW's ``step``)
  are written once, by rank 0. ``state.json`` records the world size, the mesh and, per key, the global shape,
  dtype and placement.

``state.json`` also holds the step, AdamW's hyper-parameters (``param_groups``), its non-tensor per-parameter values
and what the trainer adds (skipped samples, config, data hash). The data stream is a pure function of the step
(curriculum.sample_rng), so the step is the whole data-loader state.

Writing goes to ``step_<N>.tmp`` (rank 0 clears it, all ranks write, a barrier, rank 0 writes ``state.json`` and
renames it to ``step_<N>`` atomically), so a folder without ``.tmp`` is complete; ``keep_last`` prunes older ones.

Resume reads, for every tensor the current run holds, only the rows it needs: a DTensor sharded on dim 0 of a 1-D
mesh (FSDP2's ``fully_shard``) reads its own slice, a plain tensor (one rank, DDP) the whole. So any checkpoint
resumes under any world size and either sharding — FSDP on 2 ranks into 1 rank, 3 ranks, DDP, and back — with
bitwise the same values; other placements (2-D meshes, sharding on another dim) are refused by name.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil

import torch

STATE = "state.json"
SHARD_INFO = "DCP_SHARDING_INFO"  # per-file {key: {"saved_offsets": [...]}}, as torch.distributed.checkpoint names it
WHOLE_FILES = {"trainable": "trainable.safetensors", "optimizer": "optimizer.safetensors", "ema": "ema.safetensors"}


def trainable_names(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def shard_file(rank: int, world_size: int) -> str:
    return f"rank_{rank}_of_{world_size}.safetensors"


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _rank_world()[1] > 1:
        torch.distributed.barrier()


def _is_dtensor(t) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements")


def _collect(module, optimizer, ema: dict | None) -> tuple[dict, dict, dict]:
    """Everything a checkpoint holds as {key: tensor} — the live parameters, optimizer state and EMA tensors
    (DTensors under FSDP2; nothing is gathered or copied) — plus AdamW's non-tensor per-parameter values and its
    state dict (FQN keys). An optimizer that has not stepped yet gets its state made (zero moments) first."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    params = dict(module.named_parameters())
    tensors = {f"trainable/{n}": params[n] for n in trainable_names(module)}
    osd = get_optimizer_state_dict(module, optimizer)  # default options: sharded under FSDP2, no collective
    scalars = {}
    for name, entries in osd["state"].items():
        for field, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{name}/{field}"] = value
            else:
                scalars[f"{name}/{field}"] = value
    for name, value in (ema or {}).items():
        tensors[f"ema/{name}"] = value
    return tensors, scalars, osd


def _rows(t) -> tuple[int, int] | None:
    """The global rows [start, stop) this rank's local part of DTensor ``t`` holds, None when it holds it whole
    (Replicate). FSDP2 shards dim 0 of a 1-D mesh as torch.chunk does: ceil(n / W) rows per rank, the last ones
    shorter or empty."""
    from torch.distributed.tensor import Replicate, Shard
    placements = tuple(t.placements)
    if t.device_mesh.ndim == 1 and len(placements) == 1 and type(placements[0]) is Replicate:
        return None
    if t.device_mesh.ndim != 1 or len(placements) != 1 or type(placements[0]) is not Shard or placements[0].dim != 0:
        raise ValueError(f"sharded checkpoints support FSDP2's Shard(0) on a 1-D mesh; this tensor is {placements} on "
                         f"a mesh of shape {tuple(t.device_mesh.shape)}")
    n, world, rank = t.shape[0], t.device_mesh.size(), t.device_mesh.get_local_rank()
    size = -(-n // world)
    start = min(rank * size, n)
    stop = min(start + size, n)
    if t.to_local().shape[0] != stop - start:
        raise ValueError(f"rank {rank}'s shard has {t.to_local().shape[0]} of {n} rows, not the {stop - start} of "
                         f"torch.chunk's split into {world}")
    return start, stop


def save(directory: str, step: int, module, optimizer, ema: dict | None, info: dict, is_main: bool,
         keep_last: int = 0) -> str | None:
    """Every rank must call. Under FSDP2 every rank writes its own shards (the sharded layout); otherwise rank 0
    writes the whole tensors it holds. Rank 0 then writes state.json, renames ``.tmp`` to the step folder and deletes
    all but the ``keep_last`` newest step folders (0 keeps all). Returns the folder written (rank 0), else None."""
    from safetensors.torch import save_file
    tensors, scalars, osd = _collect(module, optimizer, ema)
    sharded = any(_is_dtensor(t) for t in tensors.values())
    rank, world = _rank_world()
    folder = os.path.join(directory, f"step_{step:08d}")
    tmp = folder + ".tmp"
    layout: dict = {"layout": "whole", "world_size": world}
    if sharded:
        if is_main:  # a .tmp left by an interrupted save may hold another world size's files
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        _barrier()
        local, offsets, described = {}, {}, {}
        for key, t in tensors.items():
            rows = _rows(t) if _is_dtensor(t) else None
            described[key] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                              "placement": "whole" if rows is None else "Shard(0)"}
            if rows is None and rank != 0:
                continue  # whole on every rank: rank 0 writes it
            part = t.to_local() if _is_dtensor(t) else t
            local[key] = part.detach().to("cpu", copy=True).contiguous()
            first = 0 if rows is None else rows[0]
            offsets[key] = {"saved_offsets": [] if t.dim() == 0 else [first] + [0] * (t.dim() - 1)}
        save_file(local, os.path.join(tmp, shard_file(rank, world)),
                  metadata={SHARD_INFO: json.dumps(offsets), "format": "pt"})
        del local
        _barrier()  # every rank's file is complete before rank 0 publishes the folder
        mesh = next(t.device_mesh for t in tensors.values() if _is_dtensor(t))
        layout = {"layout": "sharded", "world_size": world, "files": [shard_file(r, world) for r in range(world)],
                  "mesh": {"shape": list(mesh.shape), "device_type": mesh.device_type}, "tensors": described}
    elif is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        whole = {kind: {} for kind in WHOLE_FILES}
        for key, t in tensors.items():
            kind, _, name = key.partition("/")
            whole[kind][name] = t.detach().cpu().contiguous()
        for kind, file in WHOLE_FILES.items():
            if whole[kind] or kind != "ema":
                save_file(whole[kind], os.path.join(tmp, file))
    if is_main:
        with open(os.path.join(tmp, STATE), "w", encoding="utf-8") as f:
            json.dump({"step": step, "param_groups": osd["param_groups"], "optimizer_scalars": scalars, **info,
                       **layout}, f, indent=1)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        if keep_last > 0:
            for old in steps(directory)[:-keep_last]:
                shutil.rmtree(old)
    if sharded:
        _barrier()  # no rank goes on (or reads latest()) before the folder is in place
    return folder if is_main else None


def steps(directory: str) -> list[str]:
    """The complete step folders under ``directory``, oldest first (a ``.tmp`` one is an interrupted write)."""
    return sorted(p for p in glob.glob(os.path.join(directory, "step_*"))
                  if re.fullmatch(r"step_\d+", os.path.basename(p)))


def latest(directory: str) -> str | None:
    found = steps(directory)
    return found[-1] if found else None


class _Source:
    """Where each key's rows lie in a step folder: {key: [(file, name in file, first row, rows)]}."""

    def __init__(self, folder: str, info: dict, stack: contextlib.ExitStack):
        from safetensors import safe_open
        self.folder, self.chunks, self.files = folder, {}, {}
        if info.get("layout", "whole") == "sharded":
            files = info.get("files") or []
            absent = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
            if not files or absent:
                raise ValueError(f"{folder}: a sharded checkpoint of {info.get('world_size')} ranks lacks "
                                 f"{', '.join(absent) or 'its file list'}")
            for file in files:
                handle = self.files[file] = stack.enter_context(safe_open(os.path.join(folder, file), "pt"))
                offsets = json.loads((handle.metadata() or {}).get(SHARD_INFO, "{}"))
                for key in handle.keys():
                    shape = handle.get_slice(key).get_shape()
                    first = (offsets.get(key, {}).get("saved_offsets") or [0])[0]
                    self.chunks.setdefault(key, []).append((file, key, first, shape[0] if shape else None, shape))
        elif info.get("layout", "whole") == "whole":
            for kind, file in WHOLE_FILES.items():
                path = os.path.join(folder, file)
                if not os.path.isfile(path):
                    continue
                handle = self.files[file] = stack.enter_context(safe_open(path, "pt"))
                for name in handle.keys():
                    shape = handle.get_slice(name).get_shape()
                    self.chunks[f"{kind}/{name}"] = [(file, name, 0, shape[0] if shape else None, shape)]
        else:
            raise ValueError(f"{folder}: unknown checkpoint layout {info.get('layout')!r}")

    def global_shape(self, key: str) -> list[int]:
        chunks = self.chunks[key]
        shape = list(chunks[0][4])
        if shape:
            shape[0] = max(first + rows for _, _, first, rows, _ in chunks)
        return shape

    def read(self, key: str, start: int | None, stop: int | None) -> torch.Tensor:
        """Rows [start, stop) of ``key`` (the whole tensor when start is None), from however many files hold them."""
        chunks, shape = self.chunks[key], self.global_shape(key)
        if start is None:
            start, stop = 0, shape[0] if shape else None
        if stop is None:  # a 0-d tensor
            file, name = chunks[0][:2]
            return self.files[file].get_tensor(name)
        parts, covered = [], start
        for file, name, first, rows, _ in sorted(chunks, key=lambda c: c[2]):
            lo, hi = max(covered, first), min(stop, first + rows)
            if lo == covered and hi > lo:
                parts.append(self.files[file].get_slice(name)[lo - first:hi - first])
                covered = hi
        if covered != stop:
            raise ValueError(f"{self.folder}: rows {covered}..{stop} of {key} are in none of its files")
        if not parts:  # this rank's shard is empty (fewer rows than ranks)
            return torch.empty([0] + shape[1:])
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def load(folder: str, module, optimizer, ema: dict | None) -> dict:
    """Restore parameters, optimizer and EMA from ``folder`` on every rank, each rank reading only the rows it holds
    (any world size, FSDP or not, whichever layout the folder has); returns state.json."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    with open(os.path.join(folder, STATE), encoding="utf-8") as f:
        info = json.load(f)
    tensors, _, osd = _collect(module, optimizer, ema)
    with contextlib.ExitStack() as stack:
        source = _Source(folder, info, stack)
        missing = sorted(k.partition("/")[2] for k in tensors if k.startswith("trainable/") and k not in source.chunks)
        if missing:
            raise ValueError(f"{folder}: the checkpoint lacks trained parameter(s) {', '.join(missing[:5])} — was it "
                             f"made with another [training] lora_rank or model?")
        has_ema = any(k.startswith("ema/") for k in source.chunks)
        with torch.no_grad():
            for key, target in tensors.items():
                if key.startswith("ema/") and not has_ema:
                    continue  # EMA turned on after the checkpoint: it starts from the parameters
                if key not in source.chunks:
                    raise ValueError(f"{folder}: the checkpoint lacks {key}")
                saved = source.global_shape(key)
                if saved != list(target.shape):
                    raise ValueError(f"{folder}: {key} is {saved} in the checkpoint, {list(target.shape)} in this run")
                rows = _rows(target) if _is_dtensor(target) else None
                local = target.to_local() if _is_dtensor(target) else target
                local.copy_(source.read(key, *(rows or (None, None))))
    state: dict[str, dict] = {}
    for name, entries in osd["state"].items():
        state[name] = dict(entries)
    for key, value in info.get("optimizer_scalars", {}).items():
        name, _, field = key.rpartition("/")
        state.setdefault(name, {})[field] = value
    set_optimizer_state_dict(module, optimizer, {"state": state, "param_groups": info["param_groups"]})
    return info
