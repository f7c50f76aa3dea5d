"""A multi-GPU UniMMVSR worker: joins rank 0's process group, rebuilds its model, denoises its share of windows.

Started by rank 0 for each extra local GPU, or on other machines by torchrun (README "4K on many GPUs"). It proves
the pool's secret to rank 0's rendezvous (distributed/rendezvous.py), waits there for commands (so it can idle
between prompts indefinitely), checks each one (distributed/command_checks.py: a refused command is logged and
answered, the worker keeps serving), receives tensors by broadcast, and answers each step with its windows'
Σ w·x̂ and Σ w in the all-reduce. When rank 0's pool ends (closed, broken by a failure, or rank 0 gone) a local
worker exits; a remote one connects again and joins the next pool (each pool has a new nonce) within seconds.
"""
from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta

import torch

from . import command_checks, rendezvous
from .wire import Channel, receive_tensors, unpack_conds

log = logging.getLogger("UniCascade")
RETRY_SECONDS = 1.0   # a remote worker's pause between connection attempts (rank 0 down or restarting)
FAULTS_ENV = "UNICASCADE_TEST_FAULTS"   # tests only: a file naming a point where this worker stops itself


def fault_point(name: str) -> None:
    """Fault injection for the failure tests: when ``$UNICASCADE_TEST_FAULTS`` names a file whose text is ``name``,
    the file is emptied and this process stops itself (SIGSTOP), as a hung rank would, at a point a signal from
    outside cannot be timed to hit. Unset (every real run), this does nothing."""
    path = os.environ.get(FAULTS_ENV)
    if not path:
        return
    try:
        with open(path, "r+", encoding="utf-8") as f:
            if f.read().strip() != name:
                return
            f.seek(0)
            f.truncate()
    except OSError:
        return
    import signal

    os.kill(os.getpid(), signal.SIGSTOP)


class GroupEnded(Exception):
    """Rank 0 closed this pool, or it is gone."""


class Worker:
    def __init__(self, store, rank: int | None, device: torch.device, parent_pid: int | None, node_classes: dict,
                 trace: str | None):
        self.store, self.device = store, device
        self.channel = Channel(store)
        self.world = self.channel.get("world")
        if rank is None:  # a remote worker takes the next remote slot
            slot = self.channel.add("joined", 1)
            if slot > self.world["remote_ranks"]:
                raise GroupEnded(f"all {self.world['remote_ranks']} remote slots of this pool are taken")
            rank = self.world["local_ranks"] + slot - 1
        self.rank = rank
        self.parent_pid = parent_pid
        self.node_classes = node_classes
        self.trace = trace
        self.model = None
        self.state = None
        self.latent = None            # the declared latent of the current prompt (command_checks)
        self.prompt_error = "no prompt received"
        self.next_command = 1

    def comm_device(self) -> torch.device:
        return self.device if self.world["backend"] == "nccl" else torch.device("cpu")

    def alive(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            return False
        try:
            return not self.channel.has("closed")
        except Exception:  # the rendezvous (rank 0) is gone
            return False

    def join(self) -> None:
        import torch.distributed as dist

        self.channel.set(f"alive/{self.rank}", {"pid": os.getpid(), "host": os.uname().nodename})
        dist.init_process_group(self.world["backend"], store=dist.PrefixStore(self.channel.key("pg"), self.store),
                                rank=self.rank, world_size=self.world["world_size"],
                                timeout=timedelta(seconds=self.world["timeout"]))
        dist.all_reduce(torch.zeros(1, device=self.comm_device()))   # rank 0's warm-up (pool.warm_up)
        log.info("UniMMVSR worker: rank %d of %d joined (%s)", self.rank, self.world["world_size"],
                 self.world["backend"])

    def serve(self) -> None:
        while True:
            cmd = self.channel.wait(f"cmd/{self.next_command}", 1.0, self.alive)
            if cmd is None:
                if not self.alive():
                    raise GroupEnded("rank 0 closed the pool")
                continue
            number = self.next_command
            self.next_command += 1
            try:
                op = command_checks.check_op(cmd)
                getattr(self, "do_" + op)(number, cmd)
            except command_checks.CommandRefused as e:
                self.refuse(number, cmd, str(e))

    def refuse(self, number: int, cmd, reason: str) -> None:
        op = cmd.get("op") if isinstance(cmd, dict) else "?"
        log.warning("UniMMVSR worker rank %d: refused command %d (%s): %s", self.rank, number, op, reason)
        self.channel.set(f"refused/{number}/{self.rank}", reason)
        if op == "load":     # rank 0 waits for this answer
            self.channel.set(f"loaded/{number}/{self.rank}", {"error": f"refused: {reason}"})
        if op == "step":
            self.channel.set(f"fin/{cmd.get('step')}/{self.rank}", {"error": f"refused: {reason}"})

    # -- commands ---------------------------------------------------------------------------------------
    def do_load(self, number: int, cmd: dict) -> None:
        from .recipe import replay, signature

        command_checks.check_recipe(cmd.get("recipe"), self.node_classes)
        try:
            if self.model is not None:  # a new model replaces the old one: free it first
                import comfy.model_management

                self.model = self.state = None
                comfy.model_management.unload_all_models()
                comfy.model_management.soft_empty_cache()
            self.model = replay(cmd["recipe"], self.node_classes)
            answer = {"signature": signature(self.model)}
        except Exception as e:
            log.exception("UniMMVSR worker rank %d: loading failed", self.rank)
            self.model = None
            answer = {"error": f"{type(e).__name__}: {e}"}
        self.channel.set(f"loaded/{number}/{self.rank}", answer)

    def do_prompt(self, number: int, cmd: dict) -> None:
        self.state, self.latent = None, None
        command_checks.check_prompt(cmd)
        self.latent = list(cmd["shape"])
        self.channel.set(f"at/{number}/{self.rank}", True)   # rank 0 names the ranks that never arrived
        tensors = receive_tensors(cmd["tensors"], self.comm_device())
        self.state, self.prompt_error = None, "no model loaded (its loading failed)"
        if self.model is None:
            return
        try:
            self.state = self._prepare(cmd, tensors)
            self.prompt_error = None
        except Exception as e:  # reported with this rank's name at the next step
            log.exception("UniMMVSR worker rank %d: preparing the prompt failed", self.rank)
            self.prompt_error = f"{type(e).__name__}: {e}"

    def _prepare(self, cmd: dict, tensors: list) -> dict:
        import comfy.model_management

        from ..samplers.unimmvsr_model import UniMMVSRConfig
        from ..samplers.unimmvsr_windows import WindowEvaluator

        comfy.model_management.load_models_gpu([self.model])
        self.model.pre_run()   # as CFGGuider.outer_sample does (current_patcher, ON_PRE_RUN callbacks)
        inner = self.model.model
        device = self.model.load_device
        tensors = [t.to(device) for t in tensors]
        import comfy.model_patcher
        import comfy.sampler_helpers

        # the model options a sampler call gets on rank 0 (CFGGuider.sample): the patcher's wrappers and callbacks
        # merged into transformer_options, then the σ schedule
        options = comfy.model_patcher.create_model_options_clone(self.model.model_options)
        comfy.sampler_helpers.prepare_model_patcher(self.model, {}, options)
        if cmd["sample_sigmas"] is not None:
            options["transformer_options"]["sample_sigmas"] = tensors[cmd["sample_sigmas"]]
        evaluator = WindowEvaluator(
            inner, unpack_conds(cmd["positive"], tensors), unpack_conds(cmd["negative"], tensors),
            tensors[cmd["condition"]], [(r["category"], tensors[r["tensor"]]) for r in cmd["references"]],
            UniMMVSRConfig(**cmd["config"]), cmd["aug_t"], cmd["text_scale"],
            tuple(cmd["tile"]) if cmd["tile"] else None, tuple(cmd["overlap"]), cmd["shape"])
        windows = evaluator.windows()
        if len(windows) != cmd["windows"]:
            raise RuntimeError(f"rank {self.rank} made {len(windows)} windows, rank 0 {cmd['windows']}")
        return {"evaluator": evaluator, "windows": windows, "share": cmd["shares"][self.rank], "options": options}

    def do_step(self, number: int, cmd: dict) -> None:
        import torch.distributed as dist

        from ..core.unimmvsr import tiling

        command_checks.check_step(cmd, self.latent)
        k = cmd["step"]
        self.channel.set(f"at/{number}/{self.rank}", True)
        x, timestep = receive_tensors([{"shape": cmd["latent_shape"], "dtype": cmd["latent_dtype"]},
                                       {"shape": cmd["timestep_shape"], "dtype": cmd["timestep_dtype"]}],
                                      self.comm_device())
        error = None
        blend = tiling.Blender(x.shape, dtype=torch.float32, device=self.device)
        if self.state is None:
            error = self.prompt_error
        else:
            try:
                ev = self.state["evaluator"]
                dev = ev.condition.device
                x, timestep = x.to(dev), timestep.to(dev)
                blend = tiling.Blender(x.shape, dtype=torch.float32, device=dev)
                for index in self.state["share"]:
                    if self.channel.has(f"abort/{k}"):
                        self._trace(event="unimmvsr_worker_abort", rank=self.rank, step=k)
                        break
                    win = self.state["windows"][index]
                    out, evaluations = ev.evaluate(win, x, timestep, self.state["options"], cmd["s_ref"])
                    blend.add(win, out, ev.weights(win))
                    self._trace(event="unimmvsr", sigma=cmd["sigma"], u=cmd["u"], window=[win.t0, win.y0, win.x0],
                                window_size=[win.t1 - win.t0, win.y1 - win.y0, win.x1 - win.x0],
                                evaluations=evaluations, s_ref=cmd["s_ref"], rank=self.rank, step=k, pid=os.getpid())
                    self.channel.add(f"done/{k}/{self.rank}", 1)
            except Exception as e:
                log.exception("UniMMVSR worker rank %d: step %d failed", self.rank, k)
                error = f"{type(e).__name__}: {e}"
                blend = tiling.Blender(x.shape, dtype=torch.float32, device=x.device)
        self.channel.set(f"fin/{k}/{self.rank}", {"error": error})
        flat = torch.cat([blend.total.flatten(), blend.weight.flatten()]).to(self.comm_device())
        fault_point("before the all-reduce")
        self.channel.set(f"reduce/{number}/{self.rank}", True)
        fault_point("in the all-reduce")
        dist.all_reduce(flat)

    def _trace(self, **fields) -> None:
        if self.trace:
            with open(self.trace, "a", encoding="utf-8") as f:
                f.write(json.dumps(fields) + "\n")


def run(args, node_classes: dict, trace: str | None) -> int:
    """Serve rank 0 until it ends the pool (local worker), or forever, joining each new pool (remote)."""
    import torch.distributed as dist

    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    remote = args.rank is None
    try:
        key = rendezvous.derive_key(rendezvous.secret_from_environment("A UniMMVSR worker"))
    except rendezvous.SecretMissing as e:
        log.error("%s", e)
        return 2
    served: set[bytes] = set()   # nonces of pools this worker served: a restarted pool has a new one
    unreachable_since = None
    while True:
        try:
            store = rendezvous.ClientStore(args.master_addr, args.master_port, key, wait_seconds=args.store_timeout)
        except rendezvous.AuthenticationError as e:
            log.error("UniMMVSR worker: %s; exiting", e)
            return 2
        except OSError as e:
            if not remote:
                log.info("UniMMVSR worker: rank 0 is gone (%s); exiting", e)
                return 0
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
                log.info("UniMMVSR worker: waiting for rank 0 at %s:%d (%s)", args.master_addr, args.master_port, e)
            if args.give_up_after and now - unreachable_since > args.give_up_after:
                log.error("UniMMVSR worker: rank 0 at %s:%d unreachable for %.0f s (--give-up-after); exiting",
                          args.master_addr, args.master_port, now - unreachable_since)
                return 1
            time.sleep(RETRY_SECONDS)
            continue
        unreachable_since = None
        if store.nonce in served:   # the pool this worker served (and left) is still up: wait for a new one
            store.close()
            time.sleep(RETRY_SECONDS)
            continue
        served.add(store.nonce)
        try:
            worker = Worker(store, args.rank, device, args.parent_pid, node_classes, trace)
            worker.join()
            worker.serve()
        except GroupEnded as e:
            log.info("UniMMVSR worker: pool ended (%s)", e)
        except Exception as e:  # a broken collective or a lost rendezvous: rank 0 failed or gave up on this pool
            log.warning("UniMMVSR worker: pool broke (%s: %s)", type(e).__name__, e)
        finally:
            if dist.is_initialized():
                try:
                    dist.destroy_process_group()
                except Exception:
                    pass
            store.close()
        if not remote:
            return 0
