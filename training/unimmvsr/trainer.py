"""The UniMMVSR training loop (UniMMVSR §3.3–3.4; docs/design.md §6).

Per optimizer step: the curriculum's stage gives the frame count, size and task mix; each slot of the global batch
draws a sample (curriculum.sample_rng), its pixels are degraded and encoded (or read from the cache), and the loss
is flow matching in the backbone's own convention — z_t = (1 − σ)·z_HR + σ·ε, target ε − z_HR (ComfyUI Wan predicts
ε − x0) — with the LR condition noised in the model's latent space to t_aug ∈ [200, 600] by the sampler's own
function and fed as the micro-condition, references as the sampler lays them out, and the null prompt 10% of the
time. A micro-batch's samples of one shape (size, prompt length, references) run as one forward, each with its
own σ, t_aug and noise. AdamW, bf16 autocast, gradient checkpointing, optional torch.compile of the blocks,
optional EMA, DDP or FSDP2; checkpoints resume exactly.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from ...core.unimmvsr.augmentation import augmentation_noise, lr_condition
from ...core.unimmvsr.forward import ReferenceTokens, reference_tokens
from . import manifest, process_group, state
from .config import LOSSES
from .curriculum import slot_of, stage_at
from .encoding import LatentEncoder, LatentSample, TextEncoder
from .model import TrainModule, add_lora, compile_blocks, export, load_for_training, training_state_dict
from .samples import SampleBuilder, SampleError
from .schedule import learning_rate_at

log = logging.getLogger("UniCascade.train")
MAX_ATTEMPTS = 20   # redraws of a slot whose sample is bad before the run stops


@dataclass
class RunResult:
    steps: int
    final_checkpoint: str
    losses: list = field(default_factory=list)            # (step, mean training loss)
    validation: list = field(default_factory=list)        # (step, metrics)
    skipped: dict = field(default_factory=dict)           # error message → count
    parameter_digests: list = field(default_factory=list)  # per rank


def load_vae(spec: str, resolve):
    """``space_to_depth:F`` (the lossless demo autoencoder) or a VAE file ComfyUI's VAE class loads."""
    if spec.startswith("space_to_depth"):
        from ...core.autoencoders.space_to_depth import SpaceToDepthVAE
        _, _, factor = spec.partition(":")
        return SpaceToDepthVAE(int(factor or 4))
    import comfy.sd
    import comfy.utils
    path = resolve(spec)
    if not os.path.isfile(path):
        raise ValueError(f"[model] vae {path}: no such file")
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(path, safe_load=True))


def reserve_for_training(module, device: torch.device, ema: bool) -> None:
    """Tell ComfyUI's memory manager (which loads the SDEdit base model and the VAE, and frees memory for them by
    offloading models it knows) that the training state is not its to reclaim: its bytes — weights, and for the
    trainable part gradients, two AdamW moments and the EMA — join the VRAM it keeps free."""
    if device.type != "cuda":
        return
    import comfy.model_management as mm

    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    trainable = sum(p.numel() * 4 for p in module.parameters() if p.requires_grad)
    reserved = weights + trainable * (3 + int(ema))
    mm.EXTRA_RESERVED_VRAM += reserved
    log.info("reserved %.1f GB of VRAM for the training state from ComfyUI's memory manager", reserved / 2**30)


def warn_if_it_cannot_fit(cfg, dist) -> None:
    """On CUDA: ``--plan``'s per-GPU figure for this run against the card's memory, as a warning before the
    out-of-memory error would come (the run goes on: the plan is an estimate)."""
    if dist.device.type != "cuda":
        return
    from .plan import architecture_from_header, make_plan, render

    card = torch.cuda.get_device_properties(dist.device).total_memory
    try:
        arch = architecture_from_header(cfg.path(cfg.model.parent))
        plan = make_plan(cfg, arch, world=dist.world_size, gpu_gb=card / 2**30)
    except Exception as e:   # never a reason not to train
        log.warning("could not plan this run's memory (%s: %s)", type(e).__name__, e)
        return
    if plan["total"] > card:
        log.warning("this run needs about %.0f GiB per GPU by the plan, the card has %.0f GiB: it will likely run "
                    "out of memory (scripts/train_unimmvsr.py --plan shows what to change)\n%s",
                    plan["total"] / 2**30, card / 2**30, render(plan, cfg, arch))


def check_files(cfg) -> None:
    """Every file the config names exists (ComfyUI model-folder names resolved), before anything is loaded: the
    error names the key."""
    keys = [("model", "parent", cfg.model.parent), ("model", "text_encoder", cfg.model.text_encoder),
            ("degradation", "sdedit_model", cfg.degradation.sdedit_model), ("data", "manifest", cfg.data.manifest)]
    if not cfg.model.vae.startswith("space_to_depth"):
        keys.append(("model", "vae", cfg.model.vae))
    for section, key, value in keys:
        if not value:
            continue
        path = cfg.path(value)
        if not os.path.isfile(path):
            raise ValueError(f"[{section}] {key} = {value!r}: no such file ({path})")


def data_sha256(items) -> str:
    """Hash of every file the manifest names (videos, ID images, reference videos), in manifest order."""
    h = hashlib.sha256()
    for item in items:
        for path in (item.video, *item.id_images, item.reference_video):
            if path and os.path.isfile(path):
                h.update(os.path.basename(path).encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()


def flow_matching_loss(module, latents: LatentSample, draw, process_in, timestep_of, id_start: int,
                       video_start: int, device, autocast_dtype, noise: str = "gaussian",
                       loss: str = "mse") -> torch.Tensor:
    """MSE (or L1) between the prediction and ε − z_HR at σ (the backbone's convention), one sample
    (flow_matching_losses with a batch of one)."""
    return flow_matching_losses(module, [(draw, latents)], process_in, timestep_of, id_start, video_start, device,
                                autocast_dtype, noise, loss)[0]


def flow_matching_losses(module, batch, process_in, timestep_of, id_start: int, video_start: int, device,
                         autocast_dtype, noise: str = "gaussian", loss: str = "mse") -> torch.Tensor:
    """Per-sample MSE (or L1, ``loss``) [B] between the prediction and ε − z_HR at each sample's σ, for ``batch`` =
    [(draw, latents)] of one shape (``shape_key``) in ONE forward. ``noise`` says what ε is: gaussian (the paper); zero
    (at σ = 1 the model regresses −z_HR from the conditions alone); lr — the clean LR latent, so z_1 is the LR video and
    the target ε − z_HR the residual it lacks. ``loss`` "l1" takes the mean absolute error instead of the squared one.
    Every sample keeps its own σ, t_aug, noise seeds, prompt and references, so a batch computes what the same samples
    one by one compute (up to float summation order)."""
    if loss not in LOSSES:
        raise ValueError(f"flow_matching_losses: loss must be {' or '.join(LOSSES)}, not {loss!r}")
    inputs, targets, contexts, references = [], [], [], []
    for draw, latents in batch:
        z0 = process_in(latents.hr.to(device))
        if noise == "lr":
            eps = process_in(latents.lr.to(device))
        else:
            eps = augmentation_noise(z0.shape, draw.noise_seed).to(device)
            if noise == "zero":
                eps = torch.zeros_like(eps)
        aug_noise = augmentation_noise(z0.shape, draw.noise_seed + 1).to(device)
        lr = lr_condition(latents.lr.to(device), process_in, draw.aug_t, aug_noise)
        zt = (1.0 - draw.sigma) * z0 + draw.sigma * eps
        inputs.append(torch.cat([zt, lr], dim=1))
        targets.append(eps - z0)
        contexts.append(latents.context.to(device))
        references.append(reference_tokens([(c, x.to(device)) for c, x in latents.references], z0.shape[2], id_start,
                                           video_start, process_in))
    layouts = {None if r is None else r.layout for r in references}
    if len(layouts) != 1:
        raise ValueError("flow_matching_losses: a batch mixes reference layouts (group samples by shape_key)")
    refs = None if references[0] is None else ReferenceTokens(torch.cat([r.latent for r in references]),
                                                              references[0].layout)
    timestep = timestep_of(torch.tensor([d.sigma for d, _ in batch], device=device, dtype=torch.float32))
    aug_t = torch.tensor([d.aug_t for d, _ in batch], device=device, dtype=torch.float32)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
        pred = module(torch.cat(inputs), timestep, torch.cat(contexts), aug_t, refs)
    error = pred.float() - torch.cat(targets).float()
    return (error.abs() if loss == "l1" else error.pow(2)).flatten(1).mean(1)


def shape_key(latents: LatentSample) -> tuple:
    """Samples with equal keys stack into one batch: target size, prompt length, reference kinds and sizes."""
    return (tuple(latents.hr.shape), tuple(latents.context.shape),
            tuple((kind, tuple(x.shape)) for kind, x in latents.references))


def group_by_shape(drawn: list, batched: bool = True) -> list[list]:
    """[(draw, latents)] → groups that each run as one forward, in order of first appearance (one per sample when
    ``batched`` is off: FSDP's per-forward all-gathers need the same number of forwards on every rank)."""
    if not batched:
        return [[d] for d in drawn]
    groups: dict = {}
    for d in drawn:
        groups.setdefault(shape_key(d[1]), []).append(d)
    return list(groups.values())


class Trainer:
    """Python API: ``Trainer(cfg, vae=..., clip=...).run()``; the CLI (scripts/train_unimmvsr.py) loads the VAE and
    text encoder from the config's paths. ``stop_after`` ends the run early (a checkpoint is written), for tests."""

    def __init__(self, cfg, *, vae=None, clip=None, command: str = "", stop_after: int | None = None,
                 device: str = "auto"):
        self.cfg = cfg
        self.vae = vae
        self.clip = clip
        self.command = command or " ".join(sys.argv)
        self.stop_after = stop_after
        self.device_choice = device

    # -- set-up ---------------------------------------------------------------------------------------
    def _load_components(self, dist, parent_is_t2v: bool):
        import comfy.sd
        import comfy.utils
        cfg = self.cfg
        if self.vae is None:
            self.vae = load_vae(cfg.model.vae, cfg.path)
        if self.clip is None and cfg.model.text_encoder:
            self.clip = comfy.sd.load_clip([cfg.path(cfg.model.text_encoder)],
                                           clip_type=getattr(comfy.sd.CLIPType, cfg.model.text_encoder_type.upper()))
        self.text = TextEncoder(self.clip, cfg.path(cfg.data.text_cache_dir or cfg.data.cache_dir),
                                cfg.data.text_tokens,
                                dtype=torch.bfloat16 if cfg.training.mixed_precision == "bf16" else torch.float32,
                                memory_mb=cfg.data.text_memory_mb)
        self.latents = LatentEncoder(self.vae, cfg.path(cfg.data.cache_dir), cfg.data.latent_cache_gb,
                                     torch.bfloat16 if cfg.data.latent_cache_dtype == "bf16" else torch.float32)
        sdedit = None
        if cfg.degradation.sdedit_probability > 0:
            from .sdedit import SDEditDegrader
            base_path = cfg.path(cfg.degradation.sdedit_model or cfg.model.parent)
            if not cfg.degradation.sdedit_model and not parent_is_t2v:
                raise ValueError("[degradation] sdedit_model: the parent is a UniMMVSR checkpoint; name the T2V base "
                                 "model SDEdit should use (or set sdedit_probability = 0)")
            base = comfy.sd.load_diffusion_model(base_path)
            sdedit = SDEditDegrader(base, self.vae, self.text, cfg.degradation.sdedit_steps, cfg.degradation.sdedit_cfg,
                                    cfg.degradation.sdedit_sampler, cfg.degradation.sdedit_shift)
        self.items = manifest.read(cfg.path(cfg.data.manifest))
        self.builder = SampleBuilder(cfg, self.items, sdedit)
        self.validation_items = []
        if cfg.data.validation_manifest:
            path = cfg.path(cfg.data.validation_manifest)
            if os.path.isfile(path):
                self.validation_items = manifest.read(path)
            elif dist.main:
                log.warning("[data] validation_manifest %s: no such file; the run goes on without validation", path)
        if cfg.data.text_tokens:  # a prompt longer than [data] text_tokens fails here, not hours into the run
            for prompt in sorted({item.prompt for item in self.items + self.validation_items} | {""}):
                self.text(prompt)

    def _draw_latents(self, stage_index, stage, step, slot, skipped):
        for attempt in range(MAX_ATTEMPTS):
            try:
                draw = self.builder.draw(stage_index, stage, step, slot, attempt)
                latents = self.latents.cached(draw.cache_key)
                if latents is None:
                    latents = self.latents(self.builder.pixels(draw, stage), draw.cache_key)
                latents.context = self.text(draw.prompt)
                return draw, latents
            except SampleError as e:
                message = str(e)
                skipped[message] = skipped.get(message, 0) + 1
                log.warning("skipping a sample (step %d, slot %d): %s", step, slot, message)
        raise RuntimeError(f"{MAX_ATTEMPTS} samples in a row were bad at step {step}; last: {message}")

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        dist = process_group.setup(self.device_choice)
        try:
            return self._run(dist)
        finally:
            process_group.teardown(dist)

    def _run(self, dist) -> RunResult:
        cfg, tr = self.cfg, self.cfg.training
        out_dir = cfg.path(tr.output_dir)
        ckpt_dir = os.path.join(out_dir, "checkpoints")
        torch.manual_seed(tr.seed)
        check_files(cfg)
        if dist.main:
            warn_if_it_cannot_fit(cfg, dist)
        patcher, meta, parent_name = load_for_training(cfg.path(cfg.model.parent), cfg.model, dist.device)
        from safetensors import safe_open
        with safe_open(cfg.path(cfg.model.parent), "pt") as f:
            parent_is_t2v = not (f.metadata() or {}).get("unimmvsr_format")
        self._load_components(dist, parent_is_t2v)
        wan = patcher.model.diffusion_model
        if tr.lora_rank > 0:
            add_lora(wan, tr.lora_rank, tr.lora_alpha)
        module = TrainModule(wan, tr.gradient_checkpointing).to(dist.device)
        module.train()
        process_in = patcher.model.process_latent_in
        timestep_of = patcher.get_model_object("model_sampling").timestep
        if tr.compile:  # per block, before DDP/FSDP wrapping (torchtitan's order)
            compile_blocks(wan, dist.device)
        model = process_group.wrap(module, dist, tr.sharding)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=tr.learning_rate, betas=tr.betas, weight_decay=tr.weight_decay)
        ema = {n: p.detach().clone().float() for n, p in module.named_parameters() if p.requires_grad} \
            if tr.ema_decay > 0 else None
        reserve_for_training(module, dist.device, tr.ema_decay > 0)
        per_step = tr.micro_batch * dist.world_size
        if tr.batch_size % per_step:
            raise ValueError(f"[training] batch_size {tr.batch_size} is not a multiple of "
                             f"micro_batch × ranks = {per_step}")
        accumulation = tr.batch_size // per_step
        batched = not (dist.active and tr.sharding == "fsdp")  # one forward per shape group of a micro-batch
        result = RunResult(0, "")
        start_step = 0
        resume = state.latest(ckpt_dir)
        if resume:
            info = state.load(resume, module, optimizer, ema)
            start_step = int(info["step"])
            result.skipped = dict(info.get("skipped", {}))
            if dist.main:
                log.info("resumed from %s (step %d)", resume, start_step)
        autocast = torch.bfloat16 if tr.mixed_precision == "bf16" else torch.float32
        total = cfg.total_steps if self.stop_after is None else min(cfg.total_steps, self.stop_after)
        writer, csv_file = self._loggers(out_dir, dist, start_step)
        data_hash = data_sha256(self.items)
        bar = None
        if dist.main:
            from tqdm import tqdm
            bar = tqdm(total=cfg.total_steps, initial=start_step, desc="UniMMVSR", dynamic_ncols=True)
        step = start_step
        if self.validation_items and start_step == 0:
            metrics = self._validate(patcher, module, ema, dist, cfg.stages[0], process_in, timestep_of)
            if metrics is not None:
                result.validation.append((0, metrics))
                if dist.main:
                    self._log(writer, csv_file, 0, metrics)
        try:
            while step < total:
                stage_index, stage = stage_at(cfg.stages, step)
                t0 = time.perf_counter()
                loss_sum = 0.0
                for a in range(accumulation):
                    drawn = [self._draw_latents(stage_index, stage, step,
                                                slot_of(a, dist.rank, i, tr.micro_batch, dist.world_size),
                                                result.skipped) for i in range(tr.micro_batch)]
                    groups = group_by_shape(drawn, batched)
                    for g, group in enumerate(groups):
                        last = a == accumulation - 1 and g == len(groups) - 1
                        sync = getattr(model, "no_sync", None)
                        ctx = sync() if (sync is not None and not last) else _null()
                        with ctx:
                            losses = flow_matching_losses(model, group, process_in, timestep_of, cfg.model.id_start,
                                                          cfg.model.video_start, dist.device, autocast, tr.noise,
                                                          tr.loss)
                            (losses.sum() / (tr.micro_batch * accumulation)).backward()
                        loss_sum += float(losses.detach().sum())
                if tr.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, tr.grad_clip)
                rate = learning_rate_at(step, cfg.total_steps, tr.learning_rate, tr.lr_schedule, tr.warmup_steps,
                                        tr.final_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = rate
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    with torch.no_grad():
                        for n, p in module.named_parameters():
                            if n in ema:
                                ema[n].lerp_(p.detach().float(), 1.0 - tr.ema_decay)
                step += 1
                mean_loss = process_group.all_sum(dist, loss_sum) / tr.batch_size
                seconds = time.perf_counter() - t0
                result.losses.append((step, mean_loss))
                if dist.main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", stage=stage.name,
                                    samples_s=f"{tr.batch_size / seconds:.2f}")
                    if step % tr.log_every == 0:
                        logged = {"loss": mean_loss, "samples_per_s": tr.batch_size / seconds, "stage": stage_index,
                                  "learning_rate": rate}
                        if dist.device.type == "cuda":   # what this rank's device has held so far (against --plan)
                            logged["cuda_peak_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2 ** 30
                        self._log(writer, csv_file, step, logged)
                info = {"skipped": result.skipped, "config": cfg.source, "data_sha256": data_hash}
                if step % tr.save_every == 0 or step == total:
                    state.save(ckpt_dir, step, module, optimizer, ema, info, dist.main, tr.keep_last)
                    process_group.barrier(dist)
                if self.validation_items and (step % tr.validate_every == 0 or step == total):
                    metrics = self._validate(patcher, module, ema, dist, stage, process_in, timestep_of)
                    if metrics is not None:
                        result.validation.append((step, metrics))
                        if dist.main:
                            self._log(writer, csv_file, step, metrics)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        result.steps = step
        result.parameter_digests = self._parameter_digests(module, dist, tr.sharding)
        if dist.main:
            with open(os.path.join(out_dir, "ranks.json"), "w", encoding="utf-8") as f:
                json.dump({"world_size": dist.world_size, "sharding": tr.sharding,
                           "parameter_sha256": result.parameter_digests}, f, indent=1)
        extra = {"unimmvsr_train_command": self.command, "unimmvsr_train_data_sha256": data_hash,
                 "unimmvsr_train_steps": str(step), "unimmvsr_train_config": os.path.basename(cfg.source),
                 "unimmvsr_train_parent": parent_name}
        final = os.path.join(out_dir, "unimmvsr.safetensors")
        weights = training_state_dict(module, ema, dist.active and tr.sharding == "fsdp")
        if dist.main:
            scale = (tr.lora_alpha or tr.lora_rank) / tr.lora_rank if tr.lora_rank else 1.0
            export(weights, meta, final, kind=tr.export, parent_path=cfg.path(cfg.model.parent), lora_scale=scale,
                   extra_meta=extra)
            if result.skipped:
                log.warning("skipped samples: %s", json.dumps(result.skipped))
        process_group.barrier(dist)
        result.final_checkpoint = final
        return result

    def _validate(self, patcher, module, ema, dist, stage, process_in, timestep_of):
        """Held-out flow loss at fixed draws and PSNR/SSIM of sampled upscales (rank 0; others wait), with the
        weights the export will hold (the EMA when it is on) and the t_aug validation samples with."""
        from .samples import Draw
        from .held_out import validate
        if dist.active and self.cfg.training.sharding == "fsdp":
            if dist.main:
                log.warning("validation is skipped under FSDP (the guider runs on an unsharded model)")
            return None
        metrics = None
        if dist.main:
            samples = []
            for n, item in enumerate(self.validation_items):
                task = "editing" if "editing" in item.tasks and item.reference_video else \
                    ("mi2v" if "mi2v" in item.tasks else "t2v")
                try:
                    samples.append(self.builder.build_validation(item, stage, task, seed=1000 + n))
                except SampleError as e:
                    log.warning("validation clip skipped: %s", e)
            if samples:
                module.eval()
                live = swap_in(module, ema)
                losses = []
                with torch.no_grad():
                    for n, s in enumerate(samples):
                        latents = self.latents(s)
                        latents.context = self.text(s.prompt)
                        for k, sigma in enumerate(self.cfg.training.sigma_values or (0.2, 0.5, 0.8)):
                            draw = Draw(s.item, s.task, 0, s.prompt, self.cfg.training.validation_aug_t, sigma,
                                        7919 * n + k, 0)
                            losses.append(float(flow_matching_loss(
                                module, latents, draw, process_in, timestep_of, self.cfg.model.id_start,
                                self.cfg.model.video_start, dist.device, torch.float32, self.cfg.training.noise,
                                self.cfg.training.loss)))
                metrics = {"val_loss": sum(losses) / len(losses)}
                tr = self.cfg.training
                sigmas = list(tr.sigma_values) + [0.0] if tr.sigma_values else None
                metrics.update(validate(patcher, self.vae, samples, self.text, steps=tr.validation_steps, sigmas=sigmas,
                                        noise=tr.noise, text_scale=tr.validation_text_scale,
                                        reference_scale=tr.validation_reference_scale, aug_t=tr.validation_aug_t))
                swap_in(module, live)
                module.train()
                patcher.model.to(dist.device)  # ComfyUI's memory manager may have offloaded it
        process_group.barrier(dist)
        return metrics

    @staticmethod
    def _parameter_digests(module, dist, sharding) -> list[str]:
        """SHA-256 of every rank's trained parameters (DDP keeps them identical; FSDP's are shards)."""
        h = hashlib.sha256()
        for name, p in sorted(module.named_parameters()):
            if p.requires_grad:
                local = p.to_local() if hasattr(p, "to_local") else p
                h.update(name.encode())
                h.update(local.detach().float().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
        if not dist.active:
            return [digest]
        mine = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8, device=dist.device)
        out = [bytes(t.cpu().tolist()).hex() for t in process_group.all_gather(dist, mine)]   # no pickled objects
        if sharding == "ddp" and len(set(out)) != 1:
            raise RuntimeError(f"DDP ranks diverged: parameter digests {out}")
        return out

    # -- logs -----------------------------------------------------------------------------------------
    def _loggers(self, out_dir, dist, start_step):
        if not dist.main:
            return None, None
        os.makedirs(out_dir, exist_ok=True)
        writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start_step or None)
        except ImportError:
            log.warning("tensorboard is not installed: logging to CSV only (pip install -r requirements-train.txt)")
        return writer, os.path.join(out_dir, "metrics.csv")

    @staticmethod
    def _log(writer, csv_path, step, values: dict):
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(k, v, step)
        new = not os.path.isfile(csv_path)
        with open(csv_path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "name", "value"])
            for k, v in values.items():
                w.writerow([step, k, v])


def swap_in(module, weights: dict | None) -> dict | None:
    """Copy ``weights`` (name → tensor, e.g. the EMA) into ``module``'s parameters; returns what they held (for the
    swap back). None does nothing."""
    if weights is None:
        return None
    params = dict(module.named_parameters())
    held = {}
    with torch.no_grad():
        for name, value in weights.items():
            held[name] = params[name].detach().clone()
            params[name].copy_(value)
    return held


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
