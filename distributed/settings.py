"""What the UniMMVSR Multi-GPU node asks for (one value object; the resident worker pool is keyed by it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MultiGPUSettings:
    local_ranks: int            # processes on this machine, rank 0 (ComfyUI) included: 1 per GPU
    remote_ranks: int = 0       # workers that join from other machines (torchrun … worker.py --master-addr …)
    rendezvous: str = ""        # host:port rank 0 listens on ("" = a free loopback port; local ranks only)
    backend: str = "auto"       # auto (nccl on CUDA, else gloo) | nccl | gloo
    timeout: float = 300.0      # seconds a rank may take for its windows of one step (or to join) before it is
                                # declared dead or hung
    pin_cpus: bool = False      # CPU runs: pin rank r to core r with one thread (benchmarks)

    @property
    def world_size(self) -> int:
        return self.local_ranks + self.remote_ranks

    def address(self) -> tuple[str, int]:
        """(host, port) of the rendezvous; port 0 = pick a free one."""
        if not self.rendezvous:
            return "127.0.0.1", 0
        host, sep, port = self.rendezvous.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rendezvous: '{self.rendezvous}' is not host:port (e.g. 10.0.0.1:29600)")
        return host, int(port)

    def validate(self) -> None:
        if self.local_ranks < 1:
            raise ValueError("local_ranks: at least 1 (this ComfyUI process)")
        if self.remote_ranks < 0:
            raise ValueError("remote_ranks: must be ≥ 0")
        if self.remote_ranks and not self.rendezvous:
            raise ValueError("rendezvous: remote workers need an address they can reach (host:port of this machine)")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"backend: auto, nccl or gloo, not '{self.backend}'")
        if self.timeout <= 0:
            raise ValueError("timeout_seconds: must be > 0")
        self.address()
