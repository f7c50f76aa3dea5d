"""Sharded, resumable trainer checkpoints (training/unimmvsr/state.py): under FSDP2 every rank writes only its own
shards (safetensors + JSON, nothing pickled), a run stopped and resumed equals an uninterrupted one bitwise, and a
checkpoint resumes under another world size (2 FSDP ranks into 1 rank and into 3 FSDP ranks, one rank into 2 FSDP
ranks) with bitwise the same parameters, AdamW state and EMA.

This file is also the torchrun worker of the world-size tests (``python this.py save|load ...``)."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PYTHON = sys.executable
FSDP_SETS = ["--set", 'data.validation_manifest=""', "--set", "training.ema_decay=0.9",
             "--set", 'training.lr_schedule="cosine"', "--set", "training.warmup_steps=2",
             "--set", "training.save_every=2", "--set", "training.batch_size=2"]
STAGES = """
[[stages]]
name = "t2v"
steps = 3
frames = 5
width = 64
height = 64
tasks = { t2v = 1.0 }

[[stages]]
name = "all"
steps = 3
frames = 5
width = 64
height = 64
tasks = { t2v = 0.5, mi2v = 0.3, editing = 0.2 }
"""
PICKLE_SUFFIXES = (".metadata", ".distcp", ".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


# -- reading a checkpoint folder here, independently of state.py ------------------------------------------------
def folder_files(folder):
    """{file: kind}: every file is state.json or a safetensors file (nothing to unpickle)."""
    from safetensors import safe_open
    found = {}
    for name in sorted(os.listdir(folder)):
        assert not name.endswith(PICKLE_SUFFIXES), name
        path = os.path.join(folder, name)
        if name == "state.json":
            with open(path, encoding="utf-8") as f:
                json.load(f)
            found[name] = "json"
        else:
            assert name.endswith(".safetensors"), name
            with safe_open(path, "pt") as f:
                list(f.keys())
            found[name] = "safetensors"
    return found


def assembled(folder):
    """{key: full tensor} of a sharded step folder, put together from the rank files' row offsets."""
    from safetensors import safe_open
    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        info = json.load(f)
    out = {}
    for key, desc in info["tensors"].items():
        out[key] = torch.empty(desc["shape"], dtype=getattr(torch, desc["dtype"]))
    seen = {k: 0 for k in out}
    for file in info["files"]:
        with safe_open(os.path.join(folder, file), "pt") as f:
            offsets = json.loads(f.metadata()["DCP_SHARDING_INFO"])
            for key in f.keys():
                t = f.get_tensor(key)
                if t.dim() == 0:
                    out[key].copy_(t)
                else:
                    first = offsets[key]["saved_offsets"][0]
                    out[key][first:first + t.shape[0]] = t
                seen[key] += t.numel()
    assert all(seen[k] == out[k].numel() for k in out), [k for k in out if seen[k] != out[k].numel()]
    return out


def whole(folder):
    """{key: tensor} of a one-rank/DDP step folder in the same key scheme as assembled()."""
    from safetensors.torch import load_file
    out = {}
    for kind in ("trainable", "optimizer", "ema"):
        path = os.path.join(folder, f"{kind}.safetensors")
        if os.path.isfile(path):
            out.update({f"{kind}/{k}": v for k, v in load_file(path).items()})
    return out


def step_folder(run, step):
    return os.path.join(run, "checkpoints", f"step_{step:08d}")


# -- the CLI -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from harness.training_setup import write_workspace
    root = str(tmp_path_factory.mktemp("ckpt"))
    return root, write_workspace(root, stages=STAGES, validation=False)


def run_cli(config, name, *args, ranks):
    from test_training_run import cli
    # micro_batch 1: two ranks run one sample each; one rank accumulates the same two (curriculum.slot_of)
    return cli(config, "--set", f'training.output_dir="{name}"', "--set", "training.micro_batch=1",
               "--set", 'training.sharding="fsdp"', *FSDP_SETS, *args, ranks=ranks)


@pytest.mark.host_repeat
def test_two_fsdp_ranks_write_their_own_shards_and_resume_bitwise(workspace):
    from safetensors import safe_open
    from safetensors.torch import load_file
    root, config = workspace
    run_cli(config, "whole", ranks=2)
    run_cli(config, "resumed", "--stop-after", "3", ranks=2)
    stopped = step_folder(os.path.join(root, "resumed"), 3)
    files = folder_files(stopped)
    assert files == {"state.json": "json", "rank_0_of_2.safetensors": "safetensors",
                     "rank_1_of_2.safetensors": "safetensors"}, files
    with open(os.path.join(stopped, "state.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert info["layout"] == "sharded" and info["world_size"] == 2 and info["mesh"]["shape"] == [2]
    # each rank holds about half of the trained parameters, neither the whole of any tensor of 2 rows or more
    params = {k: d for k, d in info["tensors"].items() if k.startswith("trainable/")}
    total = sum(torch.Size(d["shape"]).numel() for d in params.values())
    held = []
    for r in range(2):
        with safe_open(os.path.join(stopped, f"rank_{r}_of_2.safetensors"), "pt") as f:
            held.append(sum(f.get_slice(k).get_shape()[0] * torch.Size(params[k]["shape"][1:]).numel()
                            for k in f.keys() if k in params))
            for k in f.keys():
                if k in params and params[k]["shape"][0] >= 2:
                    assert f.get_slice(k).get_shape()[0] < params[k]["shape"][0], k
    assert sum(held) == total and all(0.4 * total < h < 0.6 * total for h in held), (held, total)
    sizes = [os.path.getsize(os.path.join(stopped, f"rank_{r}_of_2.safetensors")) for r in range(2)]
    assert all(0.4 < s / sum(sizes) < 0.6 for s in sizes), sizes
    assert {k.split("/")[0] for k in info["tensors"]} == {"trainable", "optimizer", "ema"}
    assert {k.rsplit("/", 1)[1] for k in info["tensors"] if k.startswith("optimizer/")} == \
        {"exp_avg", "exp_avg_sq", "step"}

    out = run_cli(config, "resumed", ranks=2)
    assert "resumed from" in out.stderr and "(step 3)" in out.stderr
    a, b = (assembled(step_folder(os.path.join(root, "whole"), 6)),
            assembled(step_folder(os.path.join(root, "resumed"), 6)))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x, y = (load_file(os.path.join(root, d, "unimmvsr.safetensors")) for d in ("whole", "resumed"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # the run moved the weights (the comparison can fail)
    start = assembled(stopped)
    assert max(float((a[k] - start[k]).abs().max()) for k in a if k.startswith("trainable/")) > 1e-3
    # keep_last 0 kept every save: steps 2, 4 and 6 (plus 3 where the first part stopped)
    assert sorted(os.listdir(os.path.join(root, "resumed", "checkpoints"))) == \
        ["step_00000002", "step_00000003", "step_00000004", "step_00000006"]


@pytest.mark.host_repeat
def test_an_fsdp_checkpoint_resumes_on_one_rank(workspace):
    """Two FSDP ranks' shards resumed by a one-rank run (reading both files): its end equals the two-rank run's to
    the float-summation tolerance of tests/test_training_run.py (one rank accumulates the two samples)."""
    root, config = workspace
    if not os.path.isdir(step_folder(os.path.join(root, "whole"), 6)):
        pytest.skip("needs the two-rank runs of the test before")
    one = os.path.join(root, "one_rank")
    shutil.rmtree(one, ignore_errors=True)
    os.makedirs(os.path.join(one, "checkpoints"))
    shutil.copytree(step_folder(os.path.join(root, "resumed"), 3), step_folder(one, 3))
    out = run_cli(config, "one_rank", ranks=1)
    assert "resumed from" in out.stderr and "(step 3)" in out.stderr
    end = whole(step_folder(one, 6))
    ref = assembled(step_folder(os.path.join(root, "whole"), 6))
    assert end.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(end[k], ref[k], atol=1e-4, rtol=1e-4), k


# -- another world size, bitwise (a toy FSDP2 model on gloo; this file is the torchrun worker) ----------------------
def torchrun(ranks, *args):
    from harness.comfy_server import free_port
    out = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
                          str(free_port()), os.path.abspath(__file__), *args], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO})
    return out


@pytest.mark.host_repeat
def test_a_checkpoint_resumes_bitwise_under_another_world_size(tmp_path):
    from safetensors.torch import load_file
    ref = str(tmp_path / "one")
    run_worker("save", ref, str(tmp_path / "one_expected.safetensors"))  # one rank, in this process: layout "whole"
    out = torchrun(2, "save", str(tmp_path / "two"), str(tmp_path / "two_expected.safetensors"),
                   "load", ref, str(tmp_path / "one_in_two.safetensors"))
    assert out.returncode == 0, out.stderr[-6000:]
    folder = step_folder(str(tmp_path / "two"), 3)
    assert set(folder_files(folder)) == {"state.json", "rank_0_of_2.safetensors", "rank_1_of_2.safetensors"}
    out = torchrun(3, "load", str(tmp_path / "two"), str(tmp_path / "two_in_three.safetensors"))
    assert out.returncode == 0, out.stderr[-6000:]
    run_worker("load", str(tmp_path / "two"), str(tmp_path / "two_in_one.safetensors"))
    one_expected, two_expected = (load_file(str(tmp_path / f"{n}_expected.safetensors")) for n in ("one", "two"))
    assert any(k.startswith("ema/") for k in two_expected) and any(k.endswith("/exp_avg_sq") for k in two_expected)
    for loaded, expected in (("one_in_two", one_expected), ("two_in_three", two_expected),
                             ("two_in_one", two_expected)):
        got = load_file(str(tmp_path / f"{loaded}.safetensors"))
        assert got.keys() == expected.keys(), loaded
        for k in expected:
            assert torch.equal(got[k], expected[k]), (loaded, k)
    # the folder also reads with torch.distributed.checkpoint's own safetensors reader (no pickle: safe_open + JSON)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    target = {k: torch.zeros_like(v) for k, v in two_expected.items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")  # no_dist: one process, on purpose
        dcp.load(target, storage_reader=HuggingFaceStorageReader(folder), no_dist=True)
    assert all(torch.equal(target[k], two_expected[k]) for k in target)


def test_a_checkpoint_of_an_unsupported_placement_is_refused_by_name():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from training.unimmvsr import state
    # a one-process gloo group so a DeviceMesh can exist
    if not torch.distributed.is_initialized():
        from harness.comfy_server import free_port
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                             world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        assert state._rows(distribute_tensor(torch.ones(4, 2), mesh, [Replicate()])) is None
        assert state._rows(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)])) == (0, 4)
        with pytest.raises(ValueError, match=r"Shard\(0\) on a 1-D mesh; this tensor is \(Shard\(dim=1\),\)"):
            state._rows(distribute_tensor(torch.ones(4, 2), mesh, [Shard(1)]))
    finally:
        torch.distributed.destroy_process_group()


class Toy(torch.nn.Module):
    """Shaped like the trainer's TrainModule for distributed.wrap: ``wan.blocks``; rows that do not split evenly
    (5 over 2 or 3 ranks, 1 row: an empty shard) and a frozen parameter (not in a checkpoint)."""

    def __init__(self):
        super().__init__()
        self.wan = torch.nn.Module()
        self.wan.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 5), torch.nn.Linear(5, 7)])
        self.wan.head = torch.nn.Linear(7, 1)
        self.wan.frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)

    def forward(self, x):
        return self.wan.head(torch.tanh(self.wan.blocks[1](torch.tanh(self.wan.blocks[0](x))))) + self.wan.frozen.sum()


def full(t):
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def run_worker(*args):
    """``save FOLDER EXPECTED``: 3 AdamW steps with EMA, saved at step 3, and the full values written to EXPECTED;
    ``load FOLDER OUT``: a fresh model (other values) loads the latest step of FOLDER and writes its full values.
    Both may follow each other in one call. FSDP2 (as distributed.wrap shards) when torchrun started several ranks."""
    sys.path.insert(0, REPO)
    from training.unimmvsr import process_group
    dist = process_group.setup("cpu")
    try:
        _save_and_load(dist.rank, dist.world_size, args)
    finally:  # as the trainer leaves: the FSDP modules of _save_and_load are collected before the group goes
        process_group.teardown(dist)


def _save_and_load(rank, world, args):
    from safetensors.torch import save_file

    from training.unimmvsr import state
    while args:
        verb, folder, path, args = args[0], args[1], args[2], args[3:]
        torch.manual_seed(0 if verb == "save" else 1)
        module = Toy()
        if world > 1:
            from torch.distributed.fsdp import fully_shard
            for block in module.wan.blocks:
                fully_shard(block)
            fully_shard(module)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        ema = {n: p.detach().clone().float() for n, p in module.named_parameters() if p.requires_grad}
        if verb == "save":
            for step in range(3):
                g = torch.Generator().manual_seed(step)
                module(torch.randn(6, 3, generator=g)).pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for n, p in module.named_parameters():
                        if n in ema:
                            ema[n].lerp_(p.detach().float(), 0.1)
            state.save(os.path.join(folder, "checkpoints"), 3, module, optimizer, ema, {"note": "toy"}, rank == 0)
        else:
            info = state.load(state.latest(os.path.join(folder, "checkpoints")), module, optimizer, ema)
            assert info["step"] == 3 and info["note"] == "toy"
        tensors, _, _ = state._collect(module, optimizer, ema)
        values = {k: full(v) for k, v in tensors.items()}
        assert module.wan.frozen.full_tensor().eq(1).all() if world > 1 else module.wan.frozen.eq(1).all()
        if rank == 0:
            save_file(values, path)
        if verb == "load":  # the optimizer takes a step from the loaded state
            module(torch.randn(6, 3)).pow(2).mean().backward()
            optimizer.step()


if __name__ == "__main__":
    run_worker(*sys.argv[1:])
