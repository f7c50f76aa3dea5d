"""One sampler call of the UniMMVSR guider spread over the pool's ranks (rank 0's side).

Once per call: the conditions, the model-space LR condition, the references and the σ schedule go to every rank,
with each rank's share of the windows (balanced by cost, core.unimmvsr.window_shares). Per step: rank 0 broadcasts
the latent and σ; every rank evaluates its share (WindowEvaluator, the same code as one process) into Σ w·x̂ and
Σ w; one all-reduce of both gives the blend. Workers count finished windows in the store, so rank 0's progress
bar counts every rank's windows, notices a rank that died or stopped making progress within the timeout, and on
Stop tells the workers to skip their remaining windows (the reduction still runs, so the group stays usable).
"""
from __future__ import annotations

import logging
import time

import comfy.model_management
import torch

from ..core.unimmvsr import tiling
from ..core.unimmvsr.window_shares import balance, window_cost, window_tokens
from . import pool as pools
from .wire import broadcast_tensors, describe, pack_conds

log = logging.getLogger("UniCascade")


def shares_for(evaluator, world_size: int) -> list[list[int]]:
    dm = evaluator.inner_model.diffusion_model
    patch = tuple(dm.patch_size)
    costs = []
    for win in evaluator.windows():
        frames = win.t1 - win.t0
        refs = evaluator.reference_tokens(frames)
        ref_tokens = 0 if refs is None else window_tokens(refs.latent.shape[2], refs.latent.shape[3],
                                                          refs.latent.shape[4], patch)
        costs.append(window_cost(window_tokens(frames, win.y1 - win.y0, win.x1 - win.x0, patch, ref_tokens), dm.dim))
    return balance(costs, world_size)


class MultiGPUWindows:
    """The guider's window-execution strategy of the UniMMVSR Multi-GPU node (samplers/unimmvsr_guider.py): each
    step's windows shared among the pool's ranks, blended by one all-reduce."""

    label = "UniMMVSR Multi-GPU"
    copies = ((),)

    def __init__(self, settings):
        self.settings = settings   # MultiGPUSettings (distributed/settings.py)

    def open(self, guider, noise) -> "MultiGPURun":
        return MultiGPURun(self.settings, guider)


class MultiGPURun:
    """One sampler call: the pool's session starts at the first step (when the latent's windows are known)."""

    def __init__(self, settings, guider):
        self.settings, self.guider, self.session = settings, guider, None

    def predict(self, x, timestep, model_options: dict, sigma: float, u: float, s_ref: float) -> torch.Tensor:
        if self.session is None:
            self.session = step_session(self.settings, self.guider, self.guider.evaluator(x.shape), model_options)
        return self.session.step(x, timestep, sigma, u, s_ref, model_options)

    def close(self) -> None:
        if self.session is not None:
            self.session.finish()   # hands the pool back: a release asked for meanwhile runs now


def step_session(settings, guider, evaluator, model_options: dict) -> "Session":
    """The pool's session for one sampler call; ``Session.finish`` hands the pool back (a release requested
    meanwhile happens then)."""
    device = guider.model_patcher.load_device
    pool = pools.pool_for(settings, torch.device(device))
    try:
        pool.ensure_model(guider.model_patcher)
        return Session(pool, guider, evaluator, model_options)
    except BaseException as e:
        if isinstance(e, pools.RankFailure):
            pools.discard(pool)
        pools.finished(pool)
        raise


class Session:
    def __init__(self, pool, guider, evaluator, model_options: dict):
        self.pool, self.guider, self.evaluator = pool, guider, evaluator
        self.windows = evaluator.windows()
        self.shares = shares_for(evaluator, pool.settings.world_size)
        tensors: list[torch.Tensor] = []
        positive = pack_conds(evaluator.positive, tensors)
        negative = pack_conds(evaluator.negative, tensors)
        condition_index = len(tensors)
        tensors.append(evaluator.condition)
        refs = []
        for category, latent in evaluator.references:
            refs.append({"category": category, "tensor": len(tensors)})
            tensors.append(latent)
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        sigmas_index = None
        if sigmas is not None:
            sigmas_index = len(tensors)
            tensors.append(torch.as_tensor(sigmas, dtype=torch.float32))
        config = evaluator.config
        number = pool.command("prompt", tensors=describe(tensors), positive=positive, negative=negative,
                     condition=condition_index, references=refs, sample_sigmas=sigmas_index,
                     aug_t=float(evaluator.aug_t), text_scale=float(evaluator.text_scale),
                     tile=list(evaluator.tile) if evaluator.tile else None, overlap=list(evaluator.overlap),
                     shape=list(evaluator.shape), windows=len(self.windows), shares=self.shares,
                     config={"backbone": config.backbone, "latent_channels": config.latent_channels,
                             "id_start": config.id_start, "video_start": config.video_start})
        self.guard(lambda: broadcast_tensors(tensors, pools.pool_device(pool)), f"at/{number}",
                   "the prompt's broadcast", number)
        self.seconds = {"broadcast": 0.0, "windows": 0.0, "reduce": 0.0}   # read by benchmarks/unimmvsr_multi.py
        self.bytes_per_step = 0
        self.finished = False

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            pools.finished(self.pool)

    def guard(self, fn, arrival: str, what: str, command: int | None = None):
        """Run a collective; a failure (a peer gone or stopped) ends the pool with the rank named.

        Every worker sets ``<arrival>/<rank>`` just before it enters the same collective, so a rank that never got
        there (dead, hung, stopped by a signal) is named even when no process exited: the collective's own error
        (a gloo timeout) cannot say which peer it waited for."""
        try:
            return fn()
        except pools.RankFailure:
            pools.discard(self.pool)
            raise
        except Exception as e:
            if isinstance(e, comfy.model_management.InterruptProcessingException):
                raise
            refused = self.pool.refusals(command) if command is not None and self.pool.channel is not None else []
            culprit = "; ".join(refused) or self.pool.dead_local_rank() or self._stalled_in(arrival, what)
            pools.discard(self.pool)
            raise pools.RankFailure(f"UniMMVSR multi-GPU: {culprit or 'a rank failed during ' + what}; the workers "
                                    f"were stopped and will be restarted by the next prompt "
                                    f"({type(e).__name__}: {e})") from e

    def _stalled_in(self, arrival: str, what: str) -> str | None:
        """The ranks to blame for a collective that failed with no process gone: those that never arrived, else
        (two ranks) the only peer, which arrived but made no progress inside it."""
        world = self.pool.settings.world_size
        absent = [r for r in range(1, world) if not self.pool.channel.has(f"{arrival}/{r}")]
        limit = f"{self.pool.settings.timeout:.0f} s"
        if absent:
            return f"rank(s) {', '.join(map(str, absent))} made no progress: never reached {what} within {limit}"
        if world == 2:
            return f"rank 1 made no progress inside {what} for {limit}"
        return None

    def step(self, x: torch.Tensor, timestep, sigma: float, u: float, s_ref: float,
             model_options: dict) -> torch.Tensor:
        pool, guider, evaluator = self.pool, self.guider, self.evaluator
        ch = pool.channel
        pool.step_counter += 1       # store keys of a step are unique in the pool
        k = pool.step_counter
        number = pool.command("step", step=k, sigma=sigma, u=u, s_ref=s_ref, latent_shape=list(x.shape),
                     latent_dtype=str(x.dtype), timestep_shape=list(timestep.shape), timestep_dtype=str(timestep.dtype))
        device = pools.pool_device(pool)
        t0 = time.perf_counter()
        sent = self.guard(lambda: broadcast_tensors([x, timestep], device), f"at/{number}", f"step {k}'s broadcast",
                          number)
        t1 = time.perf_counter()
        guider.record(event="unimmvsr_shares", step=k, sigma=sigma, shares=self.shares, bytes_broadcast=sent)
        blend = tiling.Blender(x.shape, dtype=torch.float32, device=x.device)
        interrupted, failure = False, None
        try:  # whatever happens on rank 0 now, the workers still meet it in this step's all-reduce
            for index in self.shares[0]:
                win = self.windows[index]
                out, evaluations = evaluator.evaluate(win, x, timestep, model_options, s_ref)
                blend.add(win, out, evaluator.weights(win))
                guider.record(event="unimmvsr", sigma=sigma, u=u, window=[win.t0, win.y0, win.x0],
                              window_size=[win.t1 - win.t0, win.y1 - win.y0, win.x1 - win.x0],
                              evaluations=evaluations, s_ref=s_ref, rank=0, step=k)
                if not self._tick(1):
                    raise comfy.model_management.InterruptProcessingException()
        except comfy.model_management.InterruptProcessingException:  # Stop (ComfyUI checks it in every op)
            interrupted = True
            ch.set(f"abort/{k}", True)
        except Exception as e:
            failure = e
            ch.set(f"abort/{k}", True)
        errors = self._wait_for_workers(k, interrupted)
        interrupted = interrupted or ch.has(f"abort/{k}")
        t2 = time.perf_counter()
        flat = torch.cat([blend.total.flatten(), blend.weight.flatten()]).to(device)
        self.guard(lambda: torch.distributed.all_reduce(flat), f"reduce/{number}", f"step {k}'s all-reduce")
        t3 = time.perf_counter()
        self.seconds["broadcast"] += t1 - t0
        self.seconds["windows"] += t2 - t1
        self.seconds["reduce"] += t3 - t2
        self.bytes_per_step = sent + flat.numel() * flat.element_size()
        if errors:
            pools.discard(pool)
            raise pools.RankFailure("UniMMVSR multi-GPU: " + "; ".join(f"rank {r} failed: {m}" for r, m in errors))
        if failure is not None:
            raise failure
        if interrupted:
            raise comfy.model_management.InterruptProcessingException()
        flat = flat.to(x.device)
        total = flat[:blend.total.numel()].view_as(blend.total)
        weight = flat[blend.total.numel():].view_as(blend.weight)
        if torch.any(weight <= 0):
            raise RuntimeError("some positions were covered by no tile")
        return total / weight

    def _tick(self, windows: int) -> bool:
        """Advance the progress bar; False once the user pressed Stop."""
        try:
            self.guider.progress.update(windows)
            return True
        except comfy.model_management.InterruptProcessingException:
            return False

    def _wait_for_workers(self, k: int, interrupted: bool) -> list[tuple[int, str]]:
        """Wait until every worker finished (or skipped) its share of step ``k``, counting their windows on the
        progress bar. A rank that dies, or makes no progress for the timeout, ends the pool with its name."""
        pool, ch = self.pool, self.pool.channel
        world = pool.settings.world_size
        pending = set(range(1, world))
        counted = {r: 0 for r in pending}
        last_change = {r: time.monotonic() for r in pending}
        errors = []
        delay = 0.002
        while pending:
            for r in sorted(pending):
                done = ch.add(f"done/{k}/{r}", 0)
                if done != counted[r]:
                    if not interrupted and not self._tick(done - counted[r]):
                        interrupted = True
                        ch.set(f"abort/{k}", True)
                    counted[r] = done
                    last_change[r] = time.monotonic()
                if ch.has(f"fin/{k}/{r}"):
                    result = ch.get(f"fin/{k}/{r}")
                    if result.get("error"):
                        errors.append((r, result["error"]))
                    pending.discard(r)
            if not pending:
                break
            if not interrupted:
                try:  # consumes the flag, as ComfyUI's own check does (the next prompt must not see it)
                    comfy.model_management.throw_exception_if_processing_interrupted()
                except comfy.model_management.InterruptProcessingException:
                    interrupted = True
                    ch.set(f"abort/{k}", True)
            dead = pool.dead_local_rank()
            if dead:
                pools.discard(pool)
                raise pools.RankFailure(f"UniMMVSR multi-GPU: {dead} in step {k}")
            now = time.monotonic()
            hung = [r for r in pending if now - last_change[r] > pool.settings.timeout]
            if hung:
                pools.discard(pool)
                raise pools.RankFailure(
                    f"UniMMVSR multi-GPU: rank(s) {', '.join(map(str, hung))} made no progress on their windows for "
                    f"{pool.settings.timeout:.0f} s in step {k} (hung or dead); the workers were stopped and will be "
                    f"restarted by the next prompt")
            time.sleep(delay)
            delay = min(0.05, delay * 1.5)
        return errors

