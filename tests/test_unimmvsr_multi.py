"""Multi-GPU UniMMVSR (issue 14): the guider's windows over torch.distributed ranks — 2 CPU ranks on gloo here,
through the real server; failures, Stop, server exit and a torchrun-started remote worker."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import RENDEZVOUS_SECRET, Trace, load_latent
from harness.comfy_server import ComfyServer, free_port
from harness.paths import COMFY_DIR, REPO
from harness.tiny_models import UNIMMVSR_TRAINED
from test_unimmvsr_server import cascade_graph

TILE = (32, 32)                        # 64×48 px at 8× → 8×6 latent; 4×4 latent tiles overlapping by 2: 6 windows
WINDOWS = 6


def multi(local_ranks=2, **kw):
    return dict(local_ranks=local_ranks, remote_ranks=0, rendezvous="", backend="gloo", timeout_seconds=60.0) | kw


def windows_by_step(records, event="unimmvsr"):
    """{step: {rank: [window, …]}} from the trace of a multi-rank run."""
    out = {}
    for r in records:
        if r.get("event") == event and "step" in r:
            out.setdefault(r["step"], {}).setdefault(r["rank"], []).append(tuple(r["window"]))
    return out


def pids_of_workers(records) -> set[int]:
    return {r["pid"] for r in records if r.get("event") == "unimmvsr" and r.get("rank", 0) > 0 and "pid" in r}


def wait_until(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- pure parts ---------------------------------------------------------------------------------------------

def test_window_cost_and_longest_processing_time_shares():
    from core.unimmvsr.window_shares import balance, window_cost, window_tokens

    # tokens: ceil over the patch, plus the references every window carries
    assert window_tokens(3, 5, 7, (1, 2, 2), reference_tokens=10) == 3 * 3 * 4 + 10
    assert window_cost(100, 64) == 100 * (6 * 64 + 100)
    # LPT by hand over 2 ranks, the costs in decreasing order:
    # 9→r0 (9), 7→r1 (7), 6→r1 (13), 5→r0 (14), 4→r1 (17), 3→r0 (17)
    costs = [5.0, 9.0, 3.0, 7.0, 4.0, 6.0]
    assert balance(costs, 2) == [[0, 1, 2], [3, 4, 5]]
    assert balance(costs, 1) == [list(range(6))]
    assert balance([1.0, 1.0], 3) == [[0], [1], []]
    with pytest.raises(ValueError):
        balance(costs, 0)


# -- through the server ------------------------------------------------------------------------------------

def test_two_ranks_equal_one_process_and_share_the_windows(comfy):
    steps = 3
    one = cascade_graph(comfy, f"{comfy.prefix}_one", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=steps,
                        sampler_name="euler")
    comfy.run(one.prompt())
    comfy.trace.clear()
    two = cascade_graph(comfy, f"{comfy.prefix}_two", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=steps,
                        sampler_name="euler", multi=multi())
    comfy.run(two.prompt())
    a, b = load_latent(comfy, f"{comfy.prefix}_one"), load_latent(comfy, f"{comfy.prefix}_two")
    assert a.shape == b.shape and a.abs().max() > 0
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())
    records = comfy.trace.records()
    per_step = windows_by_step(records)
    assert sorted(per_step) == list(range(1, steps + 1))
    shares = [r for r in records if r.get("event") == "unimmvsr_shares"]
    assert len(shares) == steps and all(len(r["shares"]) == 2 for r in shares)
    for k, by_rank in per_step.items():
        assert set(by_rank) == {0, 1}, by_rank                      # both ranks worked in every step
        every = by_rank[0] + by_rank[1]
        assert len(every) == WINDOWS and len(set(every)) == WINDOWS  # each window once
    # the trace's shares are what each rank did
    windows = sorted({w for by_rank in per_step.values() for ws in by_rank.values() for w in ws})
    assert len(windows) == WINDOWS


def test_a_model_change_reloads_the_workers_model(comfy):
    """The resident workers hold the trained upscaler from the test above; another checkpoint must be reloaded by
    them (a stale model would give other windows than rank 0's)."""
    from harness.tiny_models import UNIMMVSR_SHIFT3

    for name, model in (("trained", UNIMMVSR_TRAINED), ("shift3", UNIMMVSR_SHIFT3)):
        comfy.run(cascade_graph(comfy, f"{comfy.prefix}_{name}_one", tile=TILE, unimmvsr=model, steps=2,
                                sampler_name="euler", noise_seed=21).prompt())
        comfy.run(cascade_graph(comfy, f"{comfy.prefix}_{name}_two", tile=TILE, unimmvsr=model, steps=2,
                                sampler_name="euler", multi=multi(), noise_seed=21).prompt())
        a = load_latent(comfy, f"{comfy.prefix}_{name}_one")
        b = load_latent(comfy, f"{comfy.prefix}_{name}_two")
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (name, float((a - b).abs().max()))
    trained = load_latent(comfy, f"{comfy.prefix}_trained_two")
    assert not torch.allclose(trained, load_latent(comfy, f"{comfy.prefix}_shift3_two"), atol=1e-3)


def test_the_pool_stays_resident_across_prompts_and_release_ends_it(comfy):
    def run(prefix, seed):  # a new seed each time: ComfyUI would otherwise serve the cached result
        comfy.trace.clear()
        comfy.run(cascade_graph(comfy, prefix, tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2, multi=multi(),
                                noise_seed=seed).prompt())
        return pids_of_workers(comfy.trace.records())

    first = run(f"{comfy.prefix}_a", 11)
    second = run(f"{comfy.prefix}_b", 12)
    assert len(first) == 1 and first == second                      # the same worker served both prompts
    status, body = comfy.post("/unicascade/unimmvsr/release", {})
    assert status == 200 and body == {"released": True, "pending": False}
    wait_until(lambda: not alive(next(iter(first))), 15, "the released worker to exit")
    third = run(f"{comfy.prefix}_c", 13)
    assert len(third) == 1 and third != first                       # a new worker after the release


@pytest.mark.parametrize("how", ["killed", *(pytest.param(how, marks=pytest.mark.host_repeat)
                                             for how in ("hung", "before the all-reduce", "in the all-reduce"))])
def test_a_worker_that_dies_or_hangs_fails_the_prompt_by_rank_and_the_next_prompt_works(comfy, how):
    """A dead or stopped worker is named wherever the stop lands: in its windows (no progress on the step) or at a
    collective, where gloo's timeout names no peer (the workers mark their arrival in each collective)."""
    comfy.trace.clear()
    timeout = 4.0
    graph = cascade_graph(comfy, f"{comfy.prefix}_long", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=400,
                          sampler_name="euler", multi=multi(timeout_seconds=timeout),
                          noise_seed=100 + len(how))
    prompt_id = comfy.queue(graph.prompt())
    pid = next(iter(wait_until(lambda: pids_of_workers(comfy.trace.records()), 120, "the worker's first window")))
    t0 = time.time()
    if how in ("killed", "hung"):   # lands wherever the worker is: mostly in its windows
        os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    else:                           # the worker stops itself at that point of its next step (gloo names no peer)
        with open(comfy.faults, "w", encoding="utf-8") as f:
            f.write(how)
    entry = comfy.wait(prompt_id, timeout=120)
    elapsed = time.time() - t0
    status = entry["status"]
    assert status["status_str"] == "error"
    message = next(d for kind, d in status["messages"] if kind == "execution_error")["exception_message"]
    assert "rank 1" in message or "rank(s) 1" in message, message
    assert ("exited" in message) if how == "killed" else ("no progress" in message), message
    if how == "before the all-reduce":
        assert "never reached step" in message and "all-reduce" in message, message
    if how == "in the all-reduce":
        assert "inside step" in message and "all-reduce" in message, message
    assert elapsed < timeout + 30, elapsed
    wait_until(lambda: not alive(pid), 20, "the failed worker to be gone")
    comfy.trace.clear()
    comfy.run(cascade_graph(comfy, f"{comfy.prefix}_next", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                            multi=multi(timeout_seconds=timeout), noise_seed=200 + len(how)).prompt())
    assert {1} <= set(r.get("rank") for r in comfy.trace.records() if r.get("event") == "unimmvsr")


def test_stop_interrupts_both_ranks_and_queued_prompts_run(comfy):
    comfy.trace.clear()
    graph = cascade_graph(comfy, f"{comfy.prefix}_long", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=400,
                          sampler_name="euler", multi=multi(), noise_seed=301)
    prompt_id = comfy.queue(graph.prompt())
    after = cascade_graph(comfy, f"{comfy.prefix}_after", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                          sampler_name="euler", multi=multi(), noise_seed=302)
    after_id = comfy.queue(after.prompt())                          # queued behind the long one
    wait_until(lambda: pids_of_workers(comfy.trace.records()), 120, "the worker's first window")
    time.sleep(0.5)
    comfy.post("/interrupt", {})
    entry = comfy.wait(prompt_id, timeout=120)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    done = wait_until(lambda: comfy.get(f"/history/{after_id}").get(after_id), 180, "the queued prompt")
    assert done["status"]["status_str"] == "success", (
        [m for k, m in done["status"]["messages"] if k == "execution_error"][0]["exception_message"])
    assert load_latent(comfy, f"{comfy.prefix}_after").abs().max() > 0
    records = comfy.trace.records()
    steps = [r["step"] for r in records if r.get("event") == "unimmvsr_shares"]   # ids unique in the pool
    long_steps, after_steps = steps[:-2], steps[-2:]
    assert 0 < len(long_steps) < 400                                 # the long prompt stopped early
    stopped_at = long_steps[-1]
    assert min(after_steps) > stopped_at
    # rank 1 worked on the long prompt up to the interrupted step, never past it, then on the queued prompt
    worker_steps = {r["step"] for r in records if r.get("rank") == 1 and r.get("event") == "unimmvsr"}
    assert worker_steps & set(long_steps) and max(worker_steps & set(long_steps)) <= stopped_at
    assert set(after_steps) <= worker_steps


def test_a_remote_worker_started_by_torchrun_joins_and_contributes(comfy):
    port = free_port()
    env = {**os.environ, "UNICASCADE_TRACE_FILE": comfy.trace.path, "UNICASCADE_RENDEZVOUS_SECRET": RENDEZVOUS_SECRET}
    worker = subprocess.Popen(   # torchrun, as `python -m` (a layered venv has no console script of its own)
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", str(free_port()),
         os.path.join(REPO, "worker.py"), "--master-addr", "127.0.0.1", "--master-port", str(port),
         "--comfyui", COMFY_DIR, "--base-directory", comfy.base, "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        comfy.trace.clear()
        graph = cascade_graph(comfy, comfy.prefix, tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2, sampler_name="euler",
                              multi=multi(local_ranks=1, remote_ranks=1, rendezvous=f"127.0.0.1:{port}"),
                              noise_seed=401)
        comfy.run(graph.prompt())
        per_step = windows_by_step(comfy.trace.records())
        assert all(set(by_rank) == {0, 1} for by_rank in per_step.values()), per_step
        remote = pids_of_workers(comfy.trace.records())
        assert remote and worker.pid not in remote                  # torchrun's child did the windows
    finally:
        comfy.post("/unicascade/unimmvsr/release", {})
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)


def test_bad_settings_are_refused_by_input(comfy):
    graph = cascade_graph(comfy, comfy.prefix, tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                          multi=multi(rendezvous="no-port-here"))
    body = comfy.validate_error(graph.prompt())
    assert "host:port" in str(body)
    graph = cascade_graph(comfy, comfy.prefix, tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                          multi=multi(local_ranks=1, remote_ranks=1))
    error = comfy.run_expecting_error(graph.prompt())
    assert "rendezvous" in error["exception_message"]


def test_no_worker_outlives_the_server(comfy_base):
    trace = os.path.join(comfy_base, "trace_exit.jsonl")
    server = ComfyServer(comfy_base, env={"UNICASCADE_TRACE_FILE": trace}).start()
    server.trace, server.prefix = Trace(trace), "exit"
    try:
        server.run(cascade_graph(server, "exit", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                                 multi=multi()).prompt())
        pids = pids_of_workers(server.trace.records())
        assert len(pids) == 1
        # this server has no UNICASCADE_RENDEZVOUS_SECRET: remote ranks are refused, saying how to set it
        error = server.run_expecting_error(cascade_graph(
            server, "exit_remote", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
            multi=multi(local_ranks=1, remote_ranks=1, rendezvous=f"127.0.0.1:{free_port()}")).prompt())
        assert "UNICASCADE_RENDEZVOUS_SECRET is not set" in error["exception_message"], error
        os.kill(server.proc.pid, signal.SIGKILL)                   # not even atexit runs: PR_SET_PDEATHSIG must
        server.proc.wait(20)
        wait_until(lambda: not any(alive(p) for p in pids), 20, "the worker to exit with the server")
    finally:
        server.stop()
