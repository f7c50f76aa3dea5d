"""The trainer's TOML configuration (UniMMVSR §3.3–3.4, A.4; docs/design.md §6).

One file describes a whole run: the parent model, the data, the degradation, the optimisation and the
difficult → easy curriculum as a list of ``[[stages]]``, each with its own step count, frame count, size and task
mix (the paper: T2V only at 21 frames; T2V:MI2V 0.6:0.4; T2V:MI2V:editing 0.5:0.3:0.2; the same mix at 77 frames).
Paths are absolute, ``<ComfyUI model folder>:<file name>`` (found through ComfyUI's folder_paths), or relative to
the config file's folder (``TrainConfig.path``). Every field has the paper's value or a documented default;
anything unknown or out of range is refused with the key named, missing files when the run starts.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field

from .degradation import SyntheticDegradation

AUGMENTATIONS = ("hflip", "vflip", "transpose", "reverse", "channels")  # samples.augment applies them
LOSSES = ("mse", "l1")                     # trainer.flow_matching_losses computes them

TASKS = ("t2v", "mi2v", "editing")
MAY_BE_EMPTY = {"id_crop"}                 # tuple settings where [] means "off"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    parent: str                          # Wan T2V diffusion model (.safetensors), or a UniMMVSR
                                         # checkpoint to go on from
    vae: str                             # the backbone's VAE (.safetensors, ComfyUI's VAE class), or "space_to_depth:F"
    text_encoder: str = ""               # umt5 (.safetensors) for ComfyUI's CLIP loader; or "" with a text cache
    text_encoder_type: str = "wan"       # ComfyUI CLIPType name
    id_start: int = 20                   # RoPE starts of ID images / reference videos (§3.2, A.5.7)
    video_start: int = 30
    shift: float = 1.0                   # sampling shift written into the checkpoint (A.3: 1.0)


@dataclass(frozen=True)
class DataConfig:
    manifest: str                        # JSONL: one clip per line (training/unimmvsr/manifest.py)
    validation_manifest: str = ""        # held-out clips for validation ("" = no validation)
    scale: int = 4                       # LR = HR / scale (the base model's resolution)
    cache_dir: str = ""                  # text embeddings (and latents, with latent_cache_gb) as safetensors files
    text_cache_dir: str = ""             # text embeddings only (default: cache_dir)
    latent_cache_gb: float = 0.0         # > 0: keep up to this much of reused draws' latents under cache_dir (each of
                                         # cache_variants fixed draws per clip, stage and task, written at its second
                                         # request); 0 (default) encodes every draw afresh
    latent_cache_dtype: str = "bf16"     # bf16 | fp32
    text_memory_mb: float = 1024.0       # text embeddings kept in memory (least recently used dropped first; only a
                                         # prompt's real tokens, bf16 when training in bf16)
    text_tokens: int = 0                 # zero-pad every prompt's embedding to this many tokens (0 = as encoded): the
                                         # padding Wan's UMT5 makes itself (min_length 512, padding zeroed), for a
                                         # small encoder, so prompts of different lengths share one forward
    cache_variants: int = 1              # distinct degradation/augmentation draws kept per clip in the cache
    max_id_images: int = 2               # ID images per MI2V sample (each its own RoPE frame)
    reference_gap: tuple = ()            # frames between the target window and a reference taken from the same
                                         # clip: [min, max] (empty: anywhere outside the window)
    reference_shift: int = 4             # a reference video's start: the target window's ± this many frames (§3.4)
    id_crop: tuple = (0.25, 0.7)         # ID images without a manifest box: a random subject box of this fraction of
                                         # the frame ([lo, hi]; [] = the whole frame), padded as inference pads them
    whole_clip_mb: float = 256.0         # clips up to this size are decoded once and kept; longer ones are read by
                                         # seeking to the frames a sample needs
    reference_augmentation: bool = True  # Table 3 on ID images (the paper); off keeps them pixel-aligned
    crop_rescale: tuple = ()             # [lo, hi]: scale each clip by a random factor first (multi-scale crops)
    crop_aspect: tuple = ()              # [lo, hi]: then stretch it by a random height/width ratio (log-uniform)
    crop: str = "native"                 # native: random crops of the clip's own pixels (scaled up only if smaller);
                                         # cover: the whole frame scaled to cover the stage size, then cropped
    augmentations: tuple = field(default_factory=tuple)  # per-sample augmentations (AUGMENTATIONS; samples.augment):
                                         # hflip, vflip, transpose, reverse, channels — each applied with probability
                                         # 1/2 (a random channel order for "channels") to the target window and its
                                         # references alike


@dataclass(frozen=True)
class DegradationSettings:
    sdedit_probability: float = 1.0      # A.4: SDEdit first, then synthetic; 0 skips SDEdit (e.g. the CPU demo)
    sdedit_model: str = ""               # the T2V base model for SDEdit ("" = the parent, when it is a T2V model)
    sdedit_steps: int = 50               # the base model's schedule the k steps are taken from
    sdedit_k: tuple[int, int] = (5, 15)  # k uniform in [K1, K2] (Table 4: 5 keeps identity, 15 destroys it)
    sdedit_cfg: float = 5.0
    sdedit_sampler: str = "euler"
    sdedit_shift: float = 0.0            # the base model's flow shift for SDEdit's schedule (0 = the model's own, as
                                         # loaded): with k it sets how much of the LR SDEdit keeps (A.4, Table 4)
    synthetic: bool = True               # blur / noise / resize / compression after SDEdit
    ranges: SyntheticDegradation = field(default_factory=SyntheticDegradation)   # [degradation.ranges]: the synthetic
                                         # ops' probabilities and ranges (degradation.SyntheticDegradation's fields)


@dataclass(frozen=True)
class TrainingSettings:
    output_dir: str = "runs/unimmvsr"
    seed: int = 0
    batch_size: int = 32                 # global batch (paper 32) = micro_batch × ranks × accumulation
    micro_batch: int = 1                 # samples per rank per pass; those of one shape run as one forward
    learning_rate: float = 1e-4          # AdamW (paper)
    lr_schedule: str = "constant"        # constant (paper) | cosine (to final_lr_ratio · learning_rate at the end)
    warmup_steps: int = 0                # linear warm-up steps before the schedule
    final_lr_ratio: float = 0.0          # cosine's last rate as a fraction of learning_rate
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    mixed_precision: str = "bf16"        # bf16 | fp32
    gradient_checkpointing: bool = True
    compile: bool = False                # torch.compile each Wan block (inductor: a C++ compiler on the CPU, Triton on
                                         # a GPU); the first steps of each sample shape pay the compilation
    ema_decay: float = 0.0               # 0 = no EMA
    lora_rank: int = 0                   # 0 = full fine-tune; > 0 = LoRA on the blocks' linear layers
                                         # (merged on export)
    lora_alpha: float = 0.0              # 0 = rank
    one_task_per_step: bool = False      # every slot of a step gets the same task, drawn from the stage's mix per step
                                         # (the marginal mix is unchanged): one reference layout per batch, so a
                                         # micro-batch whose prompts tokenise to one length runs as ONE forward
    text_dropout: float = 0.1            # null prompt 10% of the time (§3.4)
    aug_t_range: tuple[int, int] = (200, 600)  # augmentation timestep, uniform (§3.2)
    sigma_shift: float = 1.0             # training σ ~ U(0, 1) through the flow shift (1.0 = uniform)
    sigma_values: tuple = ()             # σ drawn from these instead (a few-step schedule; [1.0] = one step)
    noise: str = "gaussian"              # what σ = 1 is: gaussian (the paper), zero (a regressor of the HR latent),
                                         # or lr — the clean LR latent, so the flow runs LR → HR and predicts the
                                         # residual (sampled from the LR with the "UniMMVSR Start From LR" node)
    loss: str = "mse"                    # mse (the flow-matching objective) | l1 (mean absolute error of the
                                         # same velocity: a restoration option for one-step fidelity training)
    sharding: str = "ddp"                # ddp | fsdp (FSDP2 fully_shard per block, for 14B)
    save_every: int = 500
    keep_last: int = 0                   # resumable checkpoints kept under checkpoints/ (older step folders are deleted
                                         # once a newer one is written); 0 keeps them all
    validate_every: int = 500
    validation_steps: int = 8            # sampler steps of a validation run (sigma_values, when set, instead)
    validation_text_scale: float = 3.0   # s_txt of validation sampling (paper 3.0)
    validation_reference_scale: float = 1.0  # s_ref of validation sampling (paper 1.0)
    validation_aug_t: float = 600.0      # t_aug of validation sampling (paper: 600 with references, 200 fidelity)
    log_every: int = 1
    export: str = "full"                 # full | delta (over the parent) — the loader reads both


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    frames: int                          # pixel frames of a sample (4n+1 for Wan)
    width: int                           # HR crop size
    height: int
    tasks: dict = field(default_factory=dict)   # task → ratio (normalised)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    data: DataConfig
    degradation: DegradationSettings
    training: TrainingSettings
    stages: tuple[Stage, ...]
    source: str = ""                     # the config file
    base_dir: str = ""

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def path(self, p: str) -> str:
        """A path of the config: absolute as written; ``<folder>:<name>`` looked up in ComfyUI's model folder of
        that name (``diffusion_models:wan2.1_t2v_1.3B_fp16.safetensors`` — extra_model_paths.yaml applies); else
        relative to the config file's folder."""
        if not p or os.path.isabs(p):
            return p
        folder, sep, name = p.partition(":")
        if sep and len(folder) > 1 and not any(c in folder for c in "/\\.") and folder != "space_to_depth":
            import folder_paths

            if folder not in folder_paths.folder_names_and_paths:
                raise ConfigError(f"{p}: ComfyUI has no model folder '{folder}' (e.g. diffusion_models, vae, "
                                  f"text_encoders)")
            found = folder_paths.get_full_path(folder, name)
            if found is None:
                raise ConfigError(f"{p}: no file '{name}' in ComfyUI's {folder} folder(s) "
                                  f"{folder_paths.get_folder_paths(folder)}")
            return found
        return os.path.normpath(os.path.join(self.base_dir, p))


def _build(cls, table: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {', '.join(unknown)}")
    kwargs = {}
    for key, value in table.items():
        default = names[key].default
        if default == ():
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
                raise ConfigError(f"[{where}] {key}: expected a list of numbers, got {value!r}")
            value = tuple(float(v) for v in value)
        elif isinstance(default, tuple):
            if key in MAY_BE_EMPTY and value == []:
                value = ()
            elif not isinstance(value, list) or len(value) != len(default):
                raise ConfigError(f"[{where}] {key}: expected a list of {len(default)} values, got {value!r}")
            else:
                value = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{where}] {key}: expected true or false, got {value!r}")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif default is not dataclasses.MISSING and not isinstance(default, (dict, list)) and \
                not isinstance(value, type(default)):
            raise ConfigError(f"[{where}] {key}: expected {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"[{where}]: {e}") from None


def _ranges(table) -> SyntheticDegradation:
    """[degradation.ranges] → SyntheticDegradation (lists become tuples); its own checks name the key."""
    _check(isinstance(table, dict), "[degradation.ranges]: a table of the synthetic degradation's settings")
    names = {f.name: f.default for f in dataclasses.fields(SyntheticDegradation)}
    unknown = sorted(set(table) - set(names))
    _check(not unknown, f"[degradation.ranges]: unknown key(s) {', '.join(unknown)} (known: {', '.join(names)})")
    kwargs = {}
    for key, value in table.items():
        if isinstance(names[key], tuple):
            _check(isinstance(value, list), f"[degradation.ranges] {key}: expected a list, got {value!r}")
            value = tuple(value)
        elif isinstance(names[key], (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"[degradation.ranges] {key}: expected a number, got {value!r}")
        kwargs[key] = value
    try:
        return SyntheticDegradation(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[degradation.ranges]: {e}".replace("SyntheticDegradation.", "")) from None


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def parse(data: dict, source: str = "", base_dir: str = "") -> TrainConfig:
    unknown = sorted(set(data) - {"model", "data", "degradation", "training", "stages"})
    _check(not unknown, f"unknown section(s) {', '.join(unknown)}")
    _check("model" in data and "data" in data, "the config needs [model] and [data]")
    model = _build(ModelConfig, data["model"], "model")
    dat = _build(DataConfig, data["data"], "data")
    deg_table = dict(data.get("degradation", {}))
    ranges = _ranges(deg_table.pop("ranges", {}))
    deg = dataclasses.replace(_build(DegradationSettings, deg_table, "degradation"), ranges=ranges)
    tr = _build(TrainingSettings, data.get("training", {}), "training")
    stages = []
    for i, raw in enumerate(data.get("stages", [])):
        raw = dict(raw)
        tasks = raw.pop("tasks", {"t2v": 1.0})
        stage = _build(Stage, {**raw, "tasks": {}}, f"stages.{i}")
        _check(isinstance(tasks, dict) and tasks, f"[stages.{i}] tasks: a table of task = ratio")
        bad = sorted(set(tasks) - set(TASKS))
        _check(not bad, f"[stages.{i}] tasks: unknown task(s) {', '.join(bad)} (known: {', '.join(TASKS)})")
        _check(all(isinstance(v, (int, float)) and v >= 0 for v in tasks.values()) and sum(tasks.values()) > 0,
               f"[stages.{i}] tasks: ratios must be ≥ 0 and not all 0")
        total = float(sum(tasks.values()))
        stage = dataclasses.replace(stage, tasks={k: v / total for k, v in tasks.items() if v > 0})
        _check(stage.steps > 0, f"[stages.{i}] steps must be > 0")
        _check(stage.frames >= 1 and (stage.frames - 1) % 4 == 0, f"[stages.{i}] frames {stage.frames} is not 4n+1")
        _check(stage.width % (16 * dat.scale) == 0 and stage.height % (16 * dat.scale) == 0,
               f"[stages.{i}] {stage.width}×{stage.height} must be a multiple of 16·scale = {16 * dat.scale} "
               f"(the LR video must fit the VAE too)")
        stages.append(stage)
    _check(bool(stages), "the config needs at least one [[stages]] entry")
    _check(dat.scale >= 1, "[data] scale must be ≥ 1")
    _check(dat.text_tokens >= 0, "[data] text_tokens must be ≥ 0 (0 = prompts as encoded)")
    _check(dat.text_memory_mb >= 0, "[data] text_memory_mb must be ≥ 0")
    _check(dat.reference_shift >= 0, "[data] reference_shift must be ≥ 0 frames")
    _check(len(dat.id_crop) in (0, 2) and all(0 < v <= 1 for v in dat.id_crop)
           and (not dat.id_crop or dat.id_crop[0] <= dat.id_crop[1]), "[data] id_crop: [] or [lo, hi] in (0, 1]")
    _check(dat.whole_clip_mb >= 0, "[data] whole_clip_mb must be ≥ 0")
    _check(dat.latent_cache_gb >= 0, "[data] latent_cache_gb must be ≥ 0 (0 = no latent cache)")
    _check(dat.latent_cache_gb == 0 or bool(dat.cache_dir), "[data] latent_cache_gb needs a cache_dir")
    _check(dat.latent_cache_dtype in ("bf16", "fp32"), "[data] latent_cache_dtype: bf16 or fp32")
    _check(0 <= deg.sdedit_probability <= 1, "[degradation] sdedit_probability must be in [0, 1]")
    _check(0 <= deg.sdedit_k[0] <= deg.sdedit_k[1] <= deg.sdedit_steps,
           "[degradation] sdedit_k must satisfy 0 ≤ K1 ≤ K2 ≤ sdedit_steps")
    _check(deg.sdedit_shift >= 0, "[degradation] sdedit_shift must be ≥ 0 (0 = the base model's own)")
    _check(tr.mixed_precision in ("bf16", "fp32"), "[training] mixed_precision: bf16 or fp32")
    _check(tr.sharding in ("ddp", "fsdp"), "[training] sharding: ddp or fsdp")
    _check(tr.export in ("full", "delta"), "[training] export: full or delta")
    _check(0 <= tr.text_dropout < 1, "[training] text_dropout must be in [0, 1)")
    _check(0 <= tr.aug_t_range[0] <= tr.aug_t_range[1] <= 1000, "[training] aug_t_range must lie in [0, 1000]")
    _check(0 <= tr.ema_decay < 1, "[training] ema_decay must be in [0, 1)")
    _check(all(0 < v <= 1 for v in tr.sigma_values), "[training] sigma_values must lie in (0, 1]")
    _check(dat.crop in ("native", "cover"), "[data] crop: native or cover")
    _check(tr.lr_schedule in ("constant", "cosine"), "[training] lr_schedule: constant or cosine")
    _check(tr.warmup_steps >= 0 and 0 <= tr.final_lr_ratio <= 1,
           "[training] need warmup_steps ≥ 0 and final_lr_ratio in [0, 1]")
    _check(tr.noise in ("gaussian", "zero", "lr"), "[training] noise: gaussian, zero or lr")
    _check(tr.loss in LOSSES, f"[training] loss: {' or '.join(LOSSES)}")
    _check(isinstance(dat.augmentations, (list, tuple)) and all(isinstance(a, str) for a in dat.augmentations),
           f"[data] augmentations: expected a list of names, got {dat.augmentations!r}")
    dat = dataclasses.replace(dat, augmentations=tuple(dat.augmentations))
    _check(all(a in AUGMENTATIONS for a in dat.augmentations) and len(set(dat.augmentations)) == len(dat.augmentations),
           f"[data] augmentations: distinct names among {', '.join(AUGMENTATIONS)}")
    _check("transpose" not in dat.augmentations or all(st.width == st.height for st in stages),
           "[data] augmentations: transpose needs square crops (every stage's width = height)")
    _check(len(dat.crop_rescale) in (0, 2) and all(0 < v for v in dat.crop_rescale),
           "[data] crop_rescale: [] or [lo, hi] > 0")
    _check(len(dat.crop_aspect) in (0, 2) and all(0 < v for v in dat.crop_aspect)
           and (not dat.crop_aspect or dat.crop_aspect[0] <= dat.crop_aspect[1]),
           "[data] crop_aspect: [] or [lo, hi] with 0 < lo ≤ hi")
    _check(len(dat.reference_gap) in (0, 2)
           and (not dat.reference_gap or 1 <= dat.reference_gap[0] <= dat.reference_gap[1]),
           "[data] reference_gap: [] or [min, max] frames with 1 ≤ min ≤ max")
    _check(tr.micro_batch >= 1 and tr.batch_size >= tr.micro_batch, "[training] need batch_size ≥ micro_batch ≥ 1")
    _check(tr.keep_last >= 0, "[training] keep_last must be ≥ 0 (0 keeps every checkpoint)")
    return TrainConfig(model, dat, deg, tr, tuple(stages), source, base_dir)


def load(path: str, overrides: dict | None = None) -> TrainConfig:
    """Read a TOML config; ``overrides`` maps "section.key" or "stages.<index>.key" to a value (the CLI's --set)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section == "stages":  # stages.<index>.<key>: one stage of the curriculum (e.g. a longer run's steps)
            index, _, key = key.partition(".")
            stages = data.get("stages", [])
            _check(index.isdigit() and int(index) < len(stages) and bool(key),
                   f"--set {dotted}: use stages.<index>.key with an index below {len(stages)}")
            stages[int(index)][key] = value
            continue
        _check(bool(key) and section in ("model", "data", "degradation", "training"),
               f"--set {dotted}: use section.key with section model, data, degradation, training or "
               f"stages.<index>")
        data.setdefault(section, {})[key] = value
    return parse(data, os.path.abspath(path), os.path.dirname(os.path.abspath(path)))
