"""The authenticated rendezvous of a multi-GPU UniMMVSR pool (README "4K on many GPUs" → "Who can join";
docs/design.md §13).

torch.distributed has no authentication: its ``TCPStore`` accepts anyone who reaches the port, lets them list and
read every key, and (torch 2.x) listens on the wildcard address whatever host it is given. The pool therefore
runs its own small key/value store instead, behind a socket that rank 0 binds itself (loopback unless the user
names an address), and admits a connection only after it proves a shared secret:

1. rank 0 sends ``MAGIC``, a fresh 32-byte challenge and the pool's 16-byte nonce (new for every pool);
2. the peer answers with its own 32-byte challenge and HMAC-SHA256(key, "peer" ‖ both challenges ‖ pool nonce);
3. rank 0 answers HMAC-SHA256(key, "rank0" ‖ …), so the peer knows it reached the real rank 0;
4. every later frame carries HMAC-SHA256 over (direction key, sequence number, payload): a frame that is altered,
   replayed or injected into the stream ends the connection.

A peer without the secret learns nothing but the pool nonce and is disconnected after one frame (logged once per
address). Frames are authenticated, not encrypted: run remote pools on a trusted network, an SSH tunnel or a VPN
(the tensors of the gloo/NCCL data plane are unencrypted too). ``ClientStore`` and ``LocalStore`` are
``torch.distributed.Store`` subclasses, so ``init_process_group`` exchanges its addresses through the same gate.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import struct
import threading
from datetime import timedelta

import torch.distributed as dist

log = logging.getLogger("UniCascade")

SECRET_ENV = "UNICASCADE_RENDEZVOUS_SECRET"
MIN_SECRET_CHARS = 16
MAGIC = b"UniCascade-rendezvous-1\n"
CHALLENGE = 32
NONCE = 16
TAG = 32
MAX_FRAME = 1 << 20           # commands and gloo addresses are a few KB; tensors never travel here
HANDSHAKE_SECONDS = 5.0
MAX_PENDING_HANDSHAKES = 16   # unauthenticated connections open at once; more are closed at once
MAX_PEERS = 1088              # authenticated connections (the node allows 64 local + 1024 remote ranks)


class AuthenticationError(ConnectionError):
    """The other side does not hold the pool's secret (or the stream was altered)."""


class SecretMissing(ValueError):
    pass


def new_secret() -> str:
    """A local-only pool's secret (handed to the workers it starts through their environment, never argv)."""
    return secrets.token_hex(32)


def secret_from_environment(what: str) -> str:
    """The shared secret of remote pools, from ``$UNICASCADE_RENDEZVOUS_SECRET``; a clear error without it."""
    value = os.environ.get(SECRET_ENV, "")
    if len(value.strip()) < MIN_SECRET_CHARS:
        state = "is not set" if not value else f"is shorter than {MIN_SECRET_CHARS} characters"
        raise SecretMissing(
            f"{what} needs a shared secret, and {SECRET_ENV} {state}. Set the same value (e.g. the output of "
            f"`python -c \"import secrets; print(secrets.token_hex(32))\"`) in the environment of ComfyUI and of "
            f"every worker, then restart them. It is never a widget: workflows are shared files.")
    return value.strip()


def derive_key(secret: str) -> bytes:
    return hashlib.sha256(b"UniCascade rendezvous key\0" + secret.encode()).digest()


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class SignedStream:
    """An authenticated stream: length ‖ payload ‖ HMAC(direction key, sequence ‖ payload)."""

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes):
        self.sock, self.send_key, self.recv_key = sock, send_key, recv_key
        self.sent = self.received = 0
        self.lock = threading.Lock()

    def send(self, payload: bytes) -> None:
        if len(payload) > MAX_FRAME:
            raise ValueError(f"rendezvous: a frame of {len(payload)} bytes is over the {MAX_FRAME}-byte limit")
        with self.lock:
            tag = _mac(self.send_key, struct.pack(">Q", self.sent), payload)
            self.sock.sendall(struct.pack(">I", len(payload)) + payload + tag)
            self.sent += 1

    def recv(self) -> bytes:
        (size,) = struct.unpack(">I", _recv_exact(self.sock, 4))
        if size > MAX_FRAME:
            raise AuthenticationError(f"a frame of {size} bytes (limit {MAX_FRAME})")
        payload = _recv_exact(self.sock, size)
        tag = _recv_exact(self.sock, TAG)
        if not hmac.compare_digest(tag, _mac(self.recv_key, struct.pack(">Q", self.received), payload)):
            raise AuthenticationError("a frame failed authentication")
        self.received += 1
        return payload

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _session_keys(key: bytes, server_challenge: bytes, peer_challenge: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    salt = server_challenge + peer_challenge + nonce
    return _mac(key, b"to peer", salt), _mac(key, b"to rank0", salt)


def connect(host: str, port: int, key: bytes, timeout: float = HANDSHAKE_SECONDS) -> tuple[SignedStream, bytes]:
    """A peer's side of the handshake: (session, pool nonce). AuthenticationError when rank 0 refuses the secret
    or fails to prove it holds it too."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        hello = _recv_exact(sock, len(MAGIC) + CHALLENGE + NONCE)
        if not hello.startswith(MAGIC):
            raise AuthenticationError(f"{host}:{port} is not a UniCascade rendezvous")
        server_challenge, nonce = hello[len(MAGIC):len(MAGIC) + CHALLENGE], hello[len(MAGIC) + CHALLENGE:]
        mine = secrets.token_bytes(CHALLENGE)
        sock.sendall(mine + _mac(key, b"peer", server_challenge, mine, nonce))
        try:
            proof = _recv_exact(sock, TAG)
        except ConnectionError:
            raise AuthenticationError(f"rank 0 at {host}:{port} refused this worker's secret (is {SECRET_ENV} the "
                                      f"same on both machines?)") from None
        if not hmac.compare_digest(proof, _mac(key, b"rank0", server_challenge, mine, nonce)):
            raise AuthenticationError(f"{host}:{port} could not prove it holds the secret")
        to_peer, to_rank0 = _session_keys(key, server_challenge, mine, nonce)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SignedStream(sock, send_key=to_rank0, recv_key=to_peer), nonce
    except BaseException:
        sock.close()
        raise


class KeyValue:
    """Rank 0's keys: bytes values, waits with a timeout."""

    def __init__(self):
        self.values: dict[str, bytes] = {}
        self.changed = threading.Condition()

    def set(self, key: str, value: bytes) -> None:
        with self.changed:
            self.values[key] = bytes(value)
            self.changed.notify_all()

    def get(self, key: str, timeout: float) -> bytes:
        self.wait([key], timeout)
        with self.changed:
            return self.values[key]

    def add(self, key: str, amount: int) -> int:
        with self.changed:
            value = int(self.values.get(key, b"0")) + int(amount)
            self.values[key] = str(value).encode()
            self.changed.notify_all()
            return value

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        with self.changed:
            current = self.values.get(key)
            if (current is None and not expected) or current == expected:
                self.values[key] = bytes(desired)
                self.changed.notify_all()
                return bytes(desired)
            return expected if current is None else current

    def check(self, keys: list[str]) -> bool:
        with self.changed:
            return all(k in self.values for k in keys)

    def wait(self, keys: list[str], timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: all(k in self.values for k in keys), timeout):
                missing = [k for k in keys if k not in self.values]
                raise TimeoutError(f"rendezvous: keys {missing} not set within {timeout:.0f} s")

    def delete(self, key: str) -> bool:
        with self.changed:
            return self.values.pop(key, None) is not None

    def count(self) -> int:
        with self.changed:
            return len(self.values)


def _request(op: str, **fields) -> dict:
    return {"op": op, **fields}


def _encode(header: dict, value: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + value


def _decode(payload: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack(">I", payload[:4])
    return json.loads(payload[4:4 + n].decode()), payload[4 + n:]


def serve_request(kv: KeyValue, header: dict, value: bytes) -> tuple[dict, bytes]:
    """One store operation (the same for rank 0's own store and its peers')."""
    op = header.get("op")
    key = header.get("key")
    if op == "set":
        kv.set(key, value)
        return {}, b""
    if op == "get":
        return {}, kv.get(key, float(header["timeout"]))
    if op == "add":
        return {"value": kv.add(key, int(header["amount"]))}, b""
    if op == "compare_set":
        n = int(header["expected_bytes"])
        return {}, kv.compare_set(key, value[:n], value[n:])
    if op == "check":
        return {"value": kv.check(list(header["keys"]))}, b""
    if op == "wait":
        kv.wait(list(header["keys"]), float(header["timeout"]))
        return {}, b""
    if op == "delete":
        return {"value": kv.delete(key)}, b""
    if op == "count":
        return {"value": kv.count()}, b""
    raise ValueError(f"unknown store operation {op!r}")


class Gate:
    """Rank 0's listening socket: authenticates each connection, then serves its store operations."""

    def __init__(self, host: str, port: int, key: bytes):
        self.key = key
        self.nonce = secrets.token_bytes(NONCE)   # this pool's: a restarted pool is a new pool to every worker
        self.kv = KeyValue()
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a fixed port is free at close()
        try:
            self.listener.bind((host, port))
            self.listener.listen(64)
        except OSError:
            self.listener.close()
            raise
        self.host, self.port = host, self.listener.getsockname()[1]
        self.sessions: set[SignedStream] = set()
        self.pending = 0
        self.refused: dict[str, int] = {}
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._accept, name="unicascade-rendezvous", daemon=True)
        self.thread.start()

    @property
    def refused_total(self) -> int:
        with self.lock:
            return sum(self.refused.values())

    def _accept(self) -> None:
        while not self.closed:
            try:
                sock, address = self.listener.accept()
            except OSError:
                return
            with self.lock:
                crowded = self.pending >= MAX_PENDING_HANDSHAKES or len(self.sessions) >= MAX_PEERS
                if not crowded:
                    self.pending += 1
            if crowded:
                self._refuse(sock, address, "too many connections at once")
                continue
            threading.Thread(target=self._serve, args=(sock, address), daemon=True,
                             name="unicascade-rendezvous-peer").start()

    def _refuse(self, sock: socket.socket, address, why: str) -> None:
        peer = address[0] if address else "?"
        with self.lock:
            first = peer not in self.refused
            self.refused[peer] = self.refused.get(peer, 0) + 1
        if first:   # once per address: a scanner must not flood ComfyUI's log
            log.warning("UniMMVSR multi-GPU: refused a rendezvous connection from %s (%s); further refusals from "
                        "this address are counted, not logged", peer, why)
        try:
            sock.close()
        except OSError:
            pass

    def _handshake(self, sock: socket.socket) -> SignedStream:
        sock.settimeout(HANDSHAKE_SECONDS)
        challenge = secrets.token_bytes(CHALLENGE)
        sock.sendall(MAGIC + challenge + self.nonce)
        answer = _recv_exact(sock, CHALLENGE + TAG)
        theirs, proof = answer[:CHALLENGE], answer[CHALLENGE:]
        if not hmac.compare_digest(proof, _mac(self.key, b"peer", challenge, theirs, self.nonce)):
            raise AuthenticationError("it does not hold the pool's secret")
        sock.sendall(_mac(self.key, b"rank0", challenge, theirs, self.nonce))
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        to_peer, to_rank0 = _session_keys(self.key, challenge, theirs, self.nonce)
        return SignedStream(sock, send_key=to_peer, recv_key=to_rank0)

    def _serve(self, sock: socket.socket, address) -> None:
        try:
            session = self._handshake(sock)
        except (OSError, ConnectionError) as e:
            with self.lock:
                self.pending -= 1
            self._refuse(sock, address, str(e) or type(e).__name__)
            return
        with self.lock:
            self.pending -= 1
            if self.closed:
                session.close()
                return
            self.sessions.add(session)
        try:
            while True:
                header, value = _decode(session.recv())
                try:
                    reply, data = serve_request(self.kv, header, value)
                except (TimeoutError, KeyError, ValueError, TypeError) as e:
                    reply, data = {"error": f"{type(e).__name__}: {e}"}, b""
                session.send(_encode(reply, data))
        except AuthenticationError as e:   # an authenticated peer's stream was altered: drop it
            log.warning("UniMMVSR multi-GPU: dropped a rendezvous peer at %s (%s)", address[0], e)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            with self.lock:
                self.sessions.discard(session)
            session.close()

    def close(self) -> None:
        """Stop listening (the port is free when this returns) and disconnect every peer."""
        with self.lock:
            self.closed = True
            sessions = list(self.sessions)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in sessions:
            s.close()
        self.thread.join(5)


class _StoreOps:
    """The ``torch.distributed.Store`` methods over ``_call(header, value) -> (reply, data)``."""

    wait_seconds = 300.0

    def set(self, key, value):
        self._call(_request("set", key=key), _as_bytes(value))

    def get(self, key):
        return self._call(_request("get", key=key, timeout=self.wait_seconds))[1]

    def add(self, key, amount):
        return int(self._call(_request("add", key=key, amount=int(amount)))[0]["value"])

    def compare_set(self, key, expected, desired):
        expected, desired = _as_bytes(expected), _as_bytes(desired)
        return self._call(_request("compare_set", key=key, expected_bytes=len(expected)), expected + desired)[1]

    def check(self, keys):
        return bool(self._call(_request("check", keys=list(keys)))[0]["value"])

    def wait(self, keys, timeout=None):
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else (timeout or self.wait_seconds)
        self._call(_request("wait", keys=list(keys), timeout=seconds))

    def delete_key(self, key):
        return bool(self._call(_request("delete", key=key))[0]["value"])

    def num_keys(self):
        return int(self._call(_request("count"))[0]["value"])


def _as_bytes(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class LocalStore(_StoreOps, dist.Store):
    """Rank 0's own view of its gate's keys (no socket)."""

    def __init__(self, gate: Gate, wait_seconds: float):
        dist.Store.__init__(self)
        self.gate, self.wait_seconds = gate, wait_seconds

    def _call(self, header: dict, value: bytes = b"") -> tuple[dict, bytes]:
        return serve_request(self.gate.kv, header, value)


class ClientStore(_StoreOps, dist.Store):
    """A worker's authenticated connection to rank 0's gate."""

    def __init__(self, host: str, port: int, key: bytes, wait_seconds: float = 300.0):
        dist.Store.__init__(self)
        self.session, self.nonce = connect(host, port, key)
        self.wait_seconds = wait_seconds
        self.lock = threading.Lock()   # gloo may call the store from several threads: one request at a time

    def _call(self, header: dict, value: bytes = b"") -> tuple[dict, bytes]:
        with self.lock:
            self.session.send(_encode(header, value))
            reply, data = _decode(self.session.recv())
        if "error" in reply:
            kind, _, message = reply["error"].partition(": ")
            raise (TimeoutError if kind == "TimeoutError" else RuntimeError)(message or reply["error"])
        return reply, data

    def close(self) -> None:
        self.session.close()

