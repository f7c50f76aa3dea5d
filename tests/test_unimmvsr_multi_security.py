"""Who can join a multi-GPU pool (issue 28): the rendezvous listens where it should, admits only holders of the
secret, and workers refuse commands outside what rank 0's recipe allows — against a hostile client on a real
server with gloo ranks, a torchrun-started remote worker, and a private network namespace."""
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
from datetime import timedelta

import pytest
import torch

from conftest import RENDEZVOUS_SECRET, load_latent
from harness.comfy_server import free_port
from harness.paths import COMFY_DIR, PYTHON, REPO
from harness.tiny_models import UNIMMVSR_TRAINED
from test_unimmvsr_multi import TILE, alive, multi, pids_of_workers, wait_until, windows_by_step
from test_unimmvsr_server import cascade_graph

from distributed import command_checks, rendezvous
from distributed.wire import Channel

# -- the kernel's socket table ------------------------------------------------------------------------------


def _address(hex_address: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening_sockets(pids) -> list[tuple[ipaddress._BaseAddress, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state that one of ``pids`` holds, from /proc."""
    owner = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in owner:   # 0A = LISTEN
                    address, port = local.split(":")
                    out.append((_address(address), int(port, 16), owner[inode]))
    return out


def loopback(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def rendezvous_ports(log_text: str) -> list[int]:
    return [int(p) for p in re.findall(r"rendezvous [\w.:]+:(\d+)", log_text)]


def test_socket_table_parsing_reads_this_process_sockets():
    """The helper the tests rely on sees a wildcard socket as such (so a wildcard rendezvous would fail them)."""
    wild, local = socket.socket(), socket.socket()
    wild.bind(("0.0.0.0", 0))
    local.bind(("127.0.0.1", 0))
    for s in (wild, local):
        s.listen()
    try:
        found = {port: address for address, port, _ in listening_sockets([os.getpid()])}
        assert str(found[wild.getsockname()[1]]) == "0.0.0.0" and not loopback(found[wild.getsockname()[1]])
        assert loopback(found[local.getsockname()[1]])
    finally:
        wild.close()
        local.close()


# -- pure parts ---------------------------------------------------------------------------------------------

def test_the_handshake_admits_the_secret_only_and_frames_are_bound_to_their_stream():
    gate = rendezvous.Gate("127.0.0.1", 0, rendezvous.derive_key("the right secret, long enough"))
    try:
        gate.kv.set("unicascade/world", b'{"world_size": 2}')
        with pytest.raises(rendezvous.AuthenticationError, match="refused this worker's secret"):
            rendezvous.ClientStore("127.0.0.1", gate.port, rendezvous.derive_key("a wrong secret, long enough"))
        good = rendezvous.ClientStore("127.0.0.1", gate.port, rendezvous.derive_key("the right secret, long enough"))
        assert good.get("unicascade/world") == b'{"world_size": 2}'
        assert good.nonce == gate.nonce and len(gate.nonce) == rendezvous.NONCE
        # a frame replayed into the stream (same bytes, next sequence number) ends the connection
        payload = rendezvous._encode({"op": "count"})
        tag = rendezvous._mac(good.session.send_key, (0).to_bytes(8, "big"), payload)   # sequence 0's tag
        good.session.sock.sendall(len(payload).to_bytes(4, "big") + payload + tag)
        with pytest.raises(ConnectionError):
            good.session.recv()
        assert gate.refused_total == 1
        # a new pool on the same address has another nonce
        port = gate.port
        gate.close()
        again = rendezvous.Gate("127.0.0.1", port, rendezvous.derive_key("the right secret, long enough"))
        assert again.port == port and again.nonce != good.nonce   # the port was free at once
        again.close()
    finally:
        gate.close()


def test_the_remote_secret_comes_from_the_environment_with_a_message_saying_how(monkeypatch):
    monkeypatch.delenv(rendezvous.SECRET_ENV, raising=False)
    with pytest.raises(rendezvous.SecretMissing, match="UNICASCADE_RENDEZVOUS_SECRET is not set.*secrets.token_hex"):
        rendezvous.secret_from_environment("remote_ranks > 0")
    monkeypatch.setenv(rendezvous.SECRET_ENV, "short")
    with pytest.raises(rendezvous.SecretMissing, match="shorter than 16"):
        rendezvous.secret_from_environment("remote_ranks > 0")
    monkeypatch.setenv(rendezvous.SECRET_ENV, " sixteen-chars-or-more ")
    assert rendezvous.secret_from_environment("x") == "sixteen-chars-or-more"
    assert rendezvous.new_secret() != rendezvous.new_secret()


def test_the_interface_variables_are_scoped_to_the_process_group_start(monkeypatch):
    from distributed.pool import socket_interface

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "users-own")
    with socket_interface("lo"):
        assert os.environ["GLOO_SOCKET_IFNAME"] == "lo" and os.environ["NCCL_SOCKET_IFNAME"] == "users-own"
    assert "GLOO_SOCKET_IFNAME" not in os.environ and os.environ["NCCL_SOCKET_IFNAME"] == "users-own"
    with socket_interface(None):
        assert "GLOO_SOCKET_IFNAME" not in os.environ


def test_prompt_and_step_commands_must_fit_the_declared_latent():
    latent = [1, 16, 3, 8, 6]
    ok = {"op": "prompt", "shape": latent, "condition": 0, "references": [{"category": "video", "tensor": 1}],
          "sample_sigmas": 2, "positive": [{"model_conds": {"c_crossattn": {"type": "CONDCrossAttn", "tensor": 3}}}],
          "negative": [], "tensors": [{"shape": [1, 64, 3, 8, 6], "dtype": "torch.float32"},
                                      {"shape": [1, 16, 2, 8, 6], "dtype": "torch.float32"},
                                      {"shape": [4], "dtype": "torch.float32"},
                                      {"shape": [1, 512, 4096], "dtype": "torch.float32"}]}
    command_checks.check_prompt(ok)
    for change, why in (
            (lambda c: c["tensors"][0].update(shape=[1 << 20, 1 << 20]), "condition of shape"),
            (lambda c: c["tensors"][3].update(shape=[1, 1 << 20, 4096]), "text condition"),
            (lambda c: c["tensors"][2].update(shape=[4, 4]), "sample_sigmas"),
            (lambda c: c["tensors"][1].update(dtype="object"), "unknown dtype"),
            (lambda c: c["tensors"][1].update(shape=[1, -5]), "positive sizes"),
            (lambda c: c.update(shape=[1, 16, 1 << 10, 1 << 10, 1 << 10]), "over"),
            (lambda c: c.update(condition=9), "names tensor 9"),
            (lambda c: c["tensors"].append({"shape": [1], "dtype": "torch.float32"}), "no role")):
        bad = json.loads(json.dumps(ok))
        change(bad)
        with pytest.raises(command_checks.CommandRefused, match=why):
            command_checks.check_prompt(bad)
    step = {"op": "step", "step": 1, "latent_shape": latent, "latent_dtype": "torch.float32", "timestep_shape": [1],
            "timestep_dtype": "torch.float32"}
    command_checks.check_step(step, latent)
    with pytest.raises(command_checks.CommandRefused, match="no prompt"):
        command_checks.check_step(step, None)
    with pytest.raises(command_checks.CommandRefused, match="not the prompt's declared"):
        command_checks.check_step(step | {"latent_shape": [1, 16, 3, 8, 1 << 20]}, latent)
    with pytest.raises(command_checks.CommandRefused, match="unknown command 'shell'"):
        command_checks.check_op({"op": "shell"})


# -- a private network namespace: an address that is not loopback ------------------------------------------

NAMESPACE_PROBE = r"""
import json, socket, sys
from datetime import timedelta
sys.path.insert(0, sys.argv[1])
import torch.distributed as dist
from distributed import rendezvous

OTHER = "192.0.2.77"   # added to this namespace's lo by the test: not a loopback address

def reachable(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False

key = rendezvous.derive_key("namespace probe secret")
local = rendezvous.Gate("127.0.0.1", 0, key)          # a local-only pool's rendezvous
named = rendezvous.Gate(OTHER, 0, key)                # a remote pool's, on the address the user named
store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=5))
print(json.dumps({
    "local_from_other": reachable(OTHER, local.port), "local_from_loopback": reachable("127.0.0.1", local.port),
    "named_from_other": reachable(OTHER, named.port), "named_from_loopback": reachable("127.0.0.1", named.port),
    "tcpstore_from_other": reachable(OTHER, store.port)}))
"""


def test_a_local_pools_rendezvous_cannot_be_reached_from_an_address_that_is_not_loopback(tmp_path):
    """In a network namespace of the test's own making (its lo carries one extra, non-loopback address): the
    local-only rendezvous refuses connections to that address, the named one listens there only — while torch's
    TCPStore given 127.0.0.1 accepts them (what the pack no longer uses, and what the test would catch)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("needs `unshare -n` (root or user namespaces) to make a private network namespace")
    probe = tmp_path / "probe.py"
    probe.write_text(NAMESPACE_PROBE)
    script = f"ip link set lo up && ip addr add 192.0.2.77/32 dev lo && exec {PYTHON} {probe} {REPO}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"local_from_other": False, "local_from_loopback": True, "named_from_other": True,
                    "named_from_loopback": False, "tcpstore_from_other": True}, seen


# -- through the server ------------------------------------------------------------------------------------

def one_process_reference(comfy, prefix: str, seed: int) -> torch.Tensor:
    comfy.run(cascade_graph(comfy, prefix, tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2, sampler_name="euler",
                            noise_seed=seed).prompt())
    return load_latent(comfy, prefix)


# the pack's own sockets; the host's part (a pool sampling a prompt) is covered by the remote-pool test
@pytest.mark.host_repeat
def test_a_local_pool_listens_on_loopback_only_and_a_stranger_gets_nothing(comfy):
    log_start = len(comfy.log_text())
    comfy.trace.clear()
    comfy.run(cascade_graph(comfy, f"{comfy.prefix}_first", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                            sampler_name="euler", multi=multi(), noise_seed=501).prompt())
    workers = pids_of_workers(comfy.trace.records())
    assert len(workers) == 1
    # every socket the pool listens on — rank 0's rendezvous and both ranks' gloo transports — is loopback
    sockets = listening_sockets([comfy.proc.pid, *workers])
    port = rendezvous_ports(comfy.log_text()[log_start:])[-1]
    assert port in {p for _, p, _ in sockets}
    assert {pid for _, _, pid in sockets} >= set(workers)              # the worker's transport listens too
    assert all(loopback(a) for a, _, _ in sockets), sockets

    # a stranger who knows the port: torch's store client, raw bytes, a wrong secret
    with pytest.raises(Exception):
        torch.distributed.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=2))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        hello = raw.recv(len(rendezvous.MAGIC) + rendezvous.CHALLENGE + rendezvous.NONCE)
        assert hello.startswith(rendezvous.MAGIC)                     # all it learns: the magic and the nonce
        raw.sendall(os.urandom(rendezvous.CHALLENGE + rendezvous.TAG))
        assert raw.recv(4096) == b""                                   # closed, no proof, no keys
    with pytest.raises(rendezvous.AuthenticationError):
        rendezvous.ClientStore("127.0.0.1", port, rendezvous.derive_key(RENDEZVOUS_SECRET))   # not this pool's
    refusals = re.findall(r"refused a rendezvous connection from 127\.0\.0\.1", comfy.log_text()[log_start:])
    assert len(refusals) == 1                                          # logged once, however many tries

    # the pool kept serving: the same worker, and the output of one process
    reference = one_process_reference(comfy, f"{comfy.prefix}_one", 502)
    comfy.trace.clear()
    comfy.run(cascade_graph(comfy, f"{comfy.prefix}_next", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                            sampler_name="euler", multi=multi(), noise_seed=502).prompt())
    assert pids_of_workers(comfy.trace.records()) == workers
    after = load_latent(comfy, f"{comfy.prefix}_next")
    assert torch.allclose(after, reference, atol=1e-5, rtol=1e-5), float((after - reference).abs().max())


@pytest.mark.host_repeat   # the pool's release route on the path of test_the_pool_stays_resident…
def test_release_during_a_prompt_waits_for_it_and_never_blocks(comfy):
    comfy.trace.clear()
    graph = cascade_graph(comfy, f"{comfy.prefix}_long", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=25,
                          sampler_name="euler", multi=multi(), noise_seed=601)
    prompt_id = comfy.queue(graph.prompt())
    worker = next(iter(wait_until(lambda: pids_of_workers(comfy.trace.records()), 120, "the worker's first window")))
    t0 = time.time()
    status, body = comfy.post("/unicascade/unimmvsr/release", {})
    answered = time.time() - t0
    assert status == 200 and body == {"released": False, "pending": True}, body
    assert answered < 2.0, answered                                    # the route does not wait for the prompt
    entry = comfy.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    steps = windows_by_step(comfy.trace.records())
    assert len(steps) == 25 and all(set(by_rank) == {0, 1} for by_rank in steps.values())
    wait_until(lambda: not alive(worker), 20, "the worker to leave once the prompt ended")
    assert "released after the prompt" in comfy.log_text()


def start_worker(comfy, port: int, secret: str, log_path: str, torchrun: bool = True) -> subprocess.Popen:
    env = {**os.environ, "UNICASCADE_TRACE_FILE": comfy.trace.path, rendezvous.SECRET_ENV: secret}
    launcher = ([PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "1",   # torchrun
                 "--master-port", str(free_port())] if torchrun else [PYTHON])
    return subprocess.Popen(launcher + [os.path.join(REPO, "worker.py"), "--master-addr", "127.0.0.1",
                                        "--master-port", str(port), "--comfyui", COMFY_DIR,
                                        "--base-directory", comfy.base, "--device", "cpu"],
                            env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def forge(store, cmd: dict, rank: int = 1, timeout: float = 60) -> str:
    """Write ``cmd`` as the next command (knowing the secret) and return the worker's refusal."""
    ch = Channel(store)
    number = ch.add("commands", 1)
    ch.set(f"cmd/{number}", cmd)
    reason = ch.wait(f"refused/{number}/{rank}", timeout)
    assert reason is not None, f"command {number} ({cmd.get('op')}) was not refused"
    return number, reason


def test_a_remote_pool_admits_the_secret_only_refuses_forged_commands_and_is_rejoined_after_release(comfy, tmp_path):
    port = free_port()
    remote = multi(local_ranks=1, remote_ranks=1, rendezvous=f"127.0.0.1:{port}")
    worker_log = str(tmp_path / "worker.log")
    worker = start_worker(comfy, port, RENDEZVOUS_SECRET, worker_log)
    try:
        reference = one_process_reference(comfy, f"{comfy.prefix}_one", 701)
        comfy.trace.clear()
        comfy.run(cascade_graph(comfy, f"{comfy.prefix}_a", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                                sampler_name="euler", multi=remote, noise_seed=701).prompt())
        remote_pid = pids_of_workers(comfy.trace.records())
        assert len(remote_pid) == 1 and worker.pid not in remote_pid   # torchrun's child did windows
        a = load_latent(comfy, f"{comfy.prefix}_a")
        assert torch.allclose(a, reference, atol=1e-5, rtol=1e-5)

        # a worker with the wrong secret is not admitted: it exits with a message naming the variable
        intruder = start_worker(comfy, port, "not-the-secret-of-this-pool", str(tmp_path / "intruder.log"),
                                torchrun=False)
        assert intruder.wait(60) == 2
        assert "UNICASCADE_RENDEZVOUS_SECRET" in open(tmp_path / "intruder.log").read()

        # a holder of the secret forging commands: each refused, named in the worker's log
        store = rendezvous.ClientStore("127.0.0.1", port, rendezvous.derive_key(RENDEZVOUS_SECRET))
        loader, tma = "UniCascadeUniMMVSRLoader", "UniCascadeTemperatureModalityAlignment"
        forged = [
            ({"op": "load", "recipe": [{"node": loader, "inputs": {"unimmvsr_name": "/etc/hostname"}}]},
             "not one of this worker's choices"),
            ({"op": "load", "recipe": [{"node": loader, "inputs": {"unimmvsr_name": "../../../../etc/hostname"}}],
              "search_paths": {"unimmvsr": ["/"]}}, "not one of this worker's choices"),
            ({"op": "load", "recipe": [{"node": tma, "inputs": {}},
                                       {"node": loader, "inputs": {"unimmvsr_name": UNIMMVSR_TRAINED}}]},
             "must start with UniCascadeUniMMVSRLoader"),
            ({"op": "load", "recipe": [{"node": loader, "inputs": {"unimmvsr_name": UNIMMVSR_TRAINED}},
                                       {"node": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}}]},
             "is not replayed by workers"),
            ({"op": "prompt", "shape": [1, 16, 1, 8, 8], "condition": 0, "references": [], "positive": [],
              "negative": [], "sample_sigmas": None, "tensors": [{"shape": [1 << 20, 1 << 20],
                                                                  "dtype": "torch.float32"}]},
             "over 16 × the declared latent"),
            ({"op": "step", "step": 10_000, "latent_shape": [4096, 4096, 4096, 4096, 4096],
              "latent_dtype": "torch.float32", "timestep_shape": [1], "timestep_dtype": "torch.float32"},
             "no prompt declared a latent"),
            ({"op": "leave"}, "unknown command 'leave'"),
        ]
        for cmd, why in forged:
            number, reason = forge(store, cmd)
            assert why in reason, (cmd, reason)
            wait_until(lambda: f"refused command {number} ({cmd['op']})" in open(worker_log).read(), 20,
                       f"the worker's log line for command {number}")
        store.close()
        assert worker.poll() is None

        # the worker still serves the next prompt, with the output of one process
        reference = one_process_reference(comfy, f"{comfy.prefix}_one_b", 702)
        comfy.trace.clear()
        comfy.run(cascade_graph(comfy, f"{comfy.prefix}_b", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                                sampler_name="euler", multi=remote, noise_seed=702).prompt())
        assert pids_of_workers(comfy.trace.records()) == remote_pid
        assert torch.allclose(load_latent(comfy, f"{comfy.prefix}_b"), reference, atol=1e-5, rtol=1e-5)

        # released, then started again on the same fixed port: the same worker rejoins in seconds
        status, body = comfy.post("/unicascade/unimmvsr/release", {})
        assert status == 200 and body == {"released": True, "pending": False}
        comfy.trace.clear()
        t0 = time.time()
        comfy.run(cascade_graph(comfy, f"{comfy.prefix}_c", tile=TILE, unimmvsr=UNIMMVSR_TRAINED, steps=2,
                                sampler_name="euler", multi=remote, noise_seed=703).prompt())
        rejoined = time.time() - t0
        assert pids_of_workers(comfy.trace.records()) == remote_pid   # the same process, not a restart
        assert rejoined < 60, rejoined                                 # the join timeout is 600 s
    finally:
        comfy.post("/unicascade/unimmvsr/release", {})
        stop(worker)
