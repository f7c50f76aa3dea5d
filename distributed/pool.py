"""Rank 0's side of multi-GPU UniMMVSR: the resident worker pool (README "4K on many GPUs").

ComfyUI's process is rank 0. ``local_ranks − 1`` workers are started on this machine — one per extra GPU, as
child processes running the pack's ``worker.py`` (the same entry remote machines start with torchrun; ComfyUI
imports custom nodes under file-path module names, which a ``torch.multiprocessing`` spawn child could not
re-import) — and ``remote_ranks`` join from other machines through the rendezvous address. Everyone meets in a
``torch.distributed`` process group (NCCL on GPUs, gloo on CPU) created over rank 0's authenticated rendezvous
(distributed/rendezvous.py: a socket bound to loopback unless the user names an address; a peer must prove the
pool's secret — random per pool when all ranks are local, ``$UNICASCADE_RENDEZVOUS_SECRET`` with remote ranks).
The pool stays up across queued prompts; a change of settings, a dead or hung rank, ``POST
/unicascade/unimmvsr/release`` (deferred to the end of a running prompt) or the server's exit ends it (workers are
killed; local ones also die with their parent through PR_SET_PDEATHSIG). Each pool has a new random nonce, so a
remote worker tells a restarted pool from the one it served and joins it at once.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import torch

from . import rendezvous
from .settings import MultiGPUSettings
from .wire import Channel

log = logging.getLogger("UniCascade")
PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_SCRIPT = os.path.join(PACK_ROOT, "worker.py")
INTERFACE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
MODEL_FOLDERS_ENV = "UNICASCADE_MODEL_FOLDERS"   # rank 0's model folder lists, handed to the workers it starts
REPLAYED_FOLDERS = ("unimmvsr", "diffusion_models")


class RankFailure(RuntimeError):
    """A rank died, hung or failed; the message names it. The pool is gone; the next prompt starts a new one."""


def backend_for(settings: MultiGPUSettings, device: torch.device) -> str:
    if settings.backend != "auto":
        if settings.backend == "nccl" and device.type != "cuda":
            raise ValueError("backend: nccl needs CUDA devices; this ComfyUI runs on " + device.type)
        return settings.backend
    return "nccl" if device.type == "cuda" and torch.distributed.is_nccl_available() else "gloo"


def visible_gpu(rank: int) -> str:
    """CUDA_VISIBLE_DEVICES of local rank ``rank`` (rank 0 keeps the first visible GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(torch.cuda.device_count())]
    if rank >= len(ids):
        raise ValueError(f"local_ranks: rank {rank} needs GPU #{rank}, but only {len(ids)} are visible")
    return ids[rank]


class WorkerPool:
    def __init__(self, settings: MultiGPUSettings, device: torch.device):
        settings.validate()
        self.settings = settings
        self.device = device
        self.backend = backend_for(settings, device)
        self.procs: dict[int, subprocess.Popen] = {}
        self.gate: rendezvous.Gate | None = None
        self.store = None
        self.channel: Channel | None = None
        self.secret = ""
        self.step_counter = 0
        self.model_key = None
        self.alive = False
        # joining and loading a model (CUDA start-up, reading 14B weights) take longer than a step's windows
        self.join_timeout = max(settings.timeout, 600.0)
        self.in_use = 0                 # prompts sampling with the pool now (0 or 1: ComfyUI runs one at a time)
        self.release_when_idle = False  # a release that arrived during a prompt: done when it ends

    # -- start ------------------------------------------------------------------------------------------
    def start(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            raise RuntimeError("torch.distributed is already initialised in this ComfyUI process (by another pack?); "
                               "multi-GPU UniMMVSR needs its own process group")
        s = self.settings
        host, port = s.address()
        local_only = s.remote_ranks == 0
        # remote pools: the operator's secret (refused without one); local-only: a random one per pool, handed to
        # the workers through their environment (other users on the machine can reach loopback too)
        self.secret = (rendezvous.new_secret() if local_only
                       else rendezvous.secret_from_environment("UniMMVSR Multi-GPU with remote_ranks > 0"))
        try:
            self.gate = rendezvous.Gate(host, port, rendezvous.derive_key(self.secret))
        except OSError as e:
            raise RuntimeError(f"rendezvous: cannot listen on {host}:{port} ({e})") from e
        self.store = rendezvous.LocalStore(self.gate, s.timeout)
        ch = self.channel = Channel(self.store)
        ch.set("world", {"world_size": s.world_size, "local_ranks": s.local_ranks, "remote_ranks": s.remote_ranks,
                         "backend": self.backend, "timeout": s.timeout})
        self.address = (host, self.gate.port)
        try:
            for rank in range(1, s.local_ranks):
                self.procs[rank] = self._spawn(rank, host, self.gate.port, local_only)
            self._wait_all("alive", "join", self.join_timeout)
            if s.pin_cpus and self.device.type == "cpu":
                os.sched_setaffinity(0, {0})
                torch.set_num_threads(1)
            with socket_interface("lo" if local_only else None):   # only while the transports bind
                dist.init_process_group(self.backend, store=dist.PrefixStore(ch.key("pg"), self.store), rank=0,
                                        world_size=s.world_size, timeout=timedelta(seconds=s.timeout))
                warm_up(pool_device(self))
        except BaseException:
            self.close()
            raise
        self.alive = True
        log.info("UniMMVSR multi-GPU: %d ranks on %s (%d local, %d remote), rendezvous %s:%d", s.world_size,
                 self.backend, s.local_ranks, s.remote_ranks, host, self.gate.port)

    def _spawn(self, rank: int, host: str, port: int, local_only: bool) -> subprocess.Popen:
        import folder_paths

        env = dict(os.environ)
        env[rendezvous.SECRET_ENV] = self.secret          # environment, not argv (argv is readable by anyone)
        env[MODEL_FOLDERS_ENV] = json.dumps({f: list(folder_paths.folder_names_and_paths[f][0])
                                             for f in REPLAYED_FOLDERS if f in folder_paths.folder_names_and_paths})
        if local_only:
            for var in INTERFACE_VARIABLES:
                env.setdefault(var, "lo")
        device = "cpu"
        if self.device.type == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = visible_gpu(rank)
            device = "cuda"
        cmd = [sys.executable, WORKER_SCRIPT, "--master-addr", host, "--master-port", str(port), "--rank", str(rank),
               "--comfyui", os.path.dirname(os.path.abspath(folder_paths.__file__)),
               "--base-directory", folder_paths.base_path, "--device", device, "--parent-pid", str(os.getpid())]
        if self.settings.pin_cpus and device == "cpu":
            cmd += ["--cpu-core", str(rank % os.cpu_count())]
        return subprocess.Popen(cmd, env=env, cwd=PACK_ROOT)

    # -- rank health ------------------------------------------------------------------------------------
    def dead_local_rank(self) -> str | None:
        for rank, p in self.procs.items():
            code = p.poll()
            if code is not None:
                return f"rank {rank} (local worker, pid {p.pid}) exited with code {code}"
        return None

    def _wait_all(self, name: str, what: str, timeout: float) -> dict[int, object]:
        """``name/<rank>`` of every worker rank; RankFailure names the ranks that died or never answered."""
        from comfy.model_management import throw_exception_if_processing_interrupted as interrupted  # Stop works

        ch = self.channel
        got: dict[int, object] = {}
        end = time.monotonic() + timeout
        while True:
            for rank in range(1, self.settings.world_size):
                if rank not in got and ch.has(f"{name}/{rank}"):
                    got[rank] = ch.get(f"{name}/{rank}")
            if len(got) == self.settings.world_size - 1:
                return got
            dead = self.dead_local_rank()
            if dead:
                raise RankFailure(f"UniMMVSR multi-GPU: {dead} during {what}")
            interrupted()  # Stop while waiting for ranks
            if time.monotonic() > end:
                missing = [r for r in range(1, self.settings.world_size) if r not in got]
                kinds = ["local" if r < self.settings.local_ranks else "remote" for r in missing]
                raise RankFailure("UniMMVSR multi-GPU: rank(s) "
                                  f"{', '.join(f'{r} ({k})' for r, k in zip(missing, kinds))}"
                                  f" did not answer ({what}) within {timeout:.0f} s"
                                  + (" — are the remote workers started with this rendezvous address?"
                                     if what == "join" and any(k == "remote" for k in kinds) else ""))
            time.sleep(0.005)

    # -- commands ---------------------------------------------------------------------------------------
    def command(self, op: str, **fields) -> int:
        number = self.channel.add("commands", 1)   # one counter for every writer: numbers never collide
        self.channel.set(f"cmd/{number}", {"op": op, **fields})
        return number

    def refusals(self, number: int) -> list[str]:
        """Workers' reasons for refusing command ``number`` (distributed/command_checks.py)."""
        return [f"rank {r} refused it: {self.channel.get(f'refused/{number}/{r}')}"
                for r in range(1, self.settings.world_size) if self.channel.has(f"refused/{number}/{r}")]

    def ensure_model(self, model) -> None:
        """Workers hold the model rank 0 samples with: rebuilt from its recipe, patch signatures compared."""
        from .recipe import recipe_of, signature

        recipe = recipe_of(model)
        want = signature(model)
        key = repr((recipe, want))
        if key == self.model_key:
            return
        n = self.command("load", recipe=recipe)
        answers = self._wait_all(f"loaded/{n}", "model loading", self.join_timeout)
        for rank, answer in sorted(answers.items()):
            if answer.get("error"):
                raise ValueError(f"UniMMVSR multi-GPU: rank {rank} could not load the model: {answer['error']}")
            if answer["signature"] != want:
                only_here = sorted(set(want) - set(answer["signature"]))
                raise ValueError("model: patched by something the workers cannot reproduce "
                                 f"({'; '.join(only_here) or 'different patches'}); multi-GPU UniMMVSR replays the "
                                 "UniMMVSR Loader and the pack's own patch nodes (TMA, UniCascade Attention) only")
        self.model_key = key

    # -- end ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Tell the workers to leave, end the group, stop local workers (killing them if they do not exit), stop
        listening: the rendezvous port is free when this returns."""
        import torch.distributed as dist

        self.alive = False
        try:
            if self.channel is not None:
                self.channel.set("closed", True)
        except Exception:
            pass
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # a broken group may fail to tear down cleanly; the workers are killed anyway
                log.debug("destroy_process_group: %s", e)
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = {}
        if self.gate is not None:
            self.gate.close()
        self.gate = self.store = self.channel = None


@contextlib.contextmanager
def socket_interface(name: str | None):
    """GLOO/NCCL_SOCKET_IFNAME = ``name`` while the process group's transports bind, then as they were (never
    left in ComfyUI's environment, where other packs would see them); the user's own values are kept."""
    ours = [v for v in INTERFACE_VARIABLES if name and v not in os.environ]
    for var in ours:
        os.environ[var] = name
    try:
        yield
    finally:
        for var in ours:
            os.environ.pop(var, None)


def warm_up(device: torch.device) -> None:
    """One collective, so NCCL creates its communicator (and binds) inside ``socket_interface``, as gloo does."""
    torch.distributed.all_reduce(torch.zeros(1, device=device))


def pool_device(pool) -> torch.device:
    return pool.device if pool.backend == "nccl" else torch.device("cpu")


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def pool_for(settings: MultiGPUSettings, device: torch.device) -> WorkerPool:
    """The resident pool for ``settings`` (started, or restarted when the settings changed or a rank died),
    marked in use until ``finished``."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            dead = _pool.dead_local_rank()
            if not _pool.alive or _pool.settings != settings or _pool.device != device or dead:
                if dead and _pool.alive:
                    log.warning("UniMMVSR multi-GPU: %s since the last prompt; restarting the workers", dead)
                _pool.close()
                _pool = None
        if _pool is None:
            pool = WorkerPool(settings, device)
            pool.start()
            _pool = pool
        _pool.in_use += 1
        return _pool


def finished(pool: WorkerPool) -> None:
    """A prompt is done with ``pool``; a release asked for meanwhile happens now."""
    global _pool
    with _pool_lock:
        pool.in_use = max(0, pool.in_use - 1)
        if pool.release_when_idle and pool.in_use == 0:
            pool.close()
            if _pool is pool:
                _pool = None
            log.info("UniMMVSR multi-GPU: workers released after the prompt that was using them")


def release() -> dict:
    """End the resident pool, or (while a prompt samples with it) as soon as that prompt ends: never mid-step.
    Blocks for the teardown (seconds): call it off the server's event loop."""
    global _pool
    with _pool_lock:
        if _pool is None:
            return {"released": False, "pending": False}
        if _pool.in_use:
            _pool.release_when_idle = True
            return {"released": False, "pending": True}
        _pool.close()
        _pool = None
        return {"released": True, "pending": False}


def discard(pool: WorkerPool) -> None:
    """After a failure: close ``pool`` and forget it, so the next prompt starts fresh workers."""
    global _pool
    with _pool_lock:
        pool.close()
        if _pool is pool:
            _pool = None


atexit.register(release)
