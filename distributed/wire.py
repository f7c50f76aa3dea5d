"""What travels between rank 0 and the workers, and how: small commands as JSON through the rendezvous store
(so an idle worker waits on the store, never inside a collective that would time out), tensors by
``torch.distributed.broadcast`` / ``all_reduce`` (gloo or NCCL). Nothing is pickled: conditions are sent as
(class name, tensor) pairs of ComfyUI's ``comfy.conds`` types, rebuilt on the worker."""
from __future__ import annotations

import json
import time

import torch

DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                              torch.uint8, torch.bool)}
COND_TYPES = ("CONDRegular", "CONDNoiseShape", "CONDCrossAttn", "CONDConstant")
UNSUPPORTED_COND_KEYS = ("mask", "control", "gligen", "hooks", "patches")


class Channel:
    """JSON values under named keys of a pool's store (distributed/rendezvous.py: one store per pool, so names
    never collide with an earlier pool's)."""

    def __init__(self, store, prefix: str = "unicascade/"):
        self.store = store
        self.prefix = prefix

    def key(self, name: str) -> str:
        return self.prefix + name

    def set(self, name: str, value) -> None:
        self.store.set(self.key(name), json.dumps(value))

    def get(self, name: str):
        return json.loads(self.store.get(self.key(name)).decode())

    def has(self, name: str) -> bool:
        return self.store.check([self.key(name)])

    def add(self, name: str, amount: int) -> int:
        return int(self.store.add(self.key(name), amount))

    def wait(self, name: str, seconds: float, alive=lambda: True):
        """The value of ``name`` once set; None after ``seconds`` or once ``alive()`` turns false."""
        end = time.monotonic() + seconds
        delay = 0.002
        while time.monotonic() < end:
            if self.has(name):
                return self.get(name)
            if not alive():
                return None
            time.sleep(delay)
            delay = min(0.05, delay * 1.5)
        return None


def describe(tensors: list[torch.Tensor]) -> list[dict]:
    return [{"shape": list(t.shape), "dtype": str(t.dtype)} for t in tensors]


def broadcast_tensors(tensors: list[torch.Tensor], device) -> int:
    """Rank 0's side: send ``tensors`` in order (their shapes went ahead in a command). Bytes sent."""
    import torch.distributed as dist

    sent = 0
    for t in tensors:
        buf = t.detach().to(device).contiguous()
        dist.broadcast(buf, src=0)
        sent += buf.numel() * buf.element_size()
    return sent


def receive_tensors(spec: list[dict], device) -> list[torch.Tensor]:
    import torch.distributed as dist

    out = []
    for s in spec:
        buf = torch.empty(s["shape"], dtype=DTYPES[s["dtype"]], device=device)
        dist.broadcast(buf, src=0)
        out.append(buf)
    return out


def pack_conds(conds: list[dict], tensors: list[torch.Tensor]) -> list[dict]:
    """A processed ComfyUI condition list as JSON-able descriptions; its tensors are appended to ``tensors``."""
    out = []
    for c in conds or []:
        bad = [k for k in UNSUPPORTED_COND_KEYS if c.get(k) is not None]
        if bad:
            raise ValueError(f"positive/negative: conditioning with {', '.join(bad)} cannot be spread over ranks "
                             f"(multi-GPU UniMMVSR takes plain text conditioning)")
        entry = {"strength": float(c.get("strength", 1.0)), "model_conds": {}}
        if c.get("area") is not None:
            entry["area"] = list(c["area"])
        if c.get("uuid") is not None:
            entry["uuid"] = str(c["uuid"])
        for key in ("timestep_start", "timestep_end"):
            if c.get(key) is not None:
                entry[key] = float(c[key])
        for name, value in c["model_conds"].items():
            kind = type(value).__name__
            if kind not in COND_TYPES:
                raise ValueError(f"positive/negative: the model condition '{name}' is a {kind}, which multi-GPU "
                                 f"UniMMVSR cannot send to its workers")
            if kind == "CONDConstant":
                entry["model_conds"][name] = {"type": kind, "value": value.cond}
            else:
                entry["model_conds"][name] = {"type": kind, "tensor": len(tensors)}
                tensors.append(value.cond)
        out.append(entry)
    return out


def unpack_conds(described: list[dict], tensors: list[torch.Tensor]) -> list[dict]:
    import uuid

    import comfy.conds

    out = []
    for entry in described:
        model_conds = {}
        for name, v in entry["model_conds"].items():
            cls = getattr(comfy.conds, v["type"])
            model_conds[name] = cls(v["value"]) if v["type"] == "CONDConstant" else cls(tensors[v["tensor"]])
        c = {"model_conds": model_conds, "strength": entry["strength"],
             "uuid": uuid.UUID(entry["uuid"]) if "uuid" in entry else uuid.uuid4()}
        for key in ("area", "timestep_start", "timestep_end"):
            if key in entry:
                c[key] = tuple(entry[key]) if key == "area" else entry[key]
        out.append(c)
    return out
