"""Parity record: the official MfM pipeline against the pack's MfM path, on one tiny pipeline folder.

What it does
1. Writes a tiny pipeline folder in the official diffusers layout with seeded random weights
   (scripts/mfm_official_env.py: the official ``Transformer3DModel``, a tiny ``AutoencoderKLCogVideoX``, a tiny
   ``T5EncoderModel`` with T5 v1.1's real ``spiece.model``, ``FlowMatchEulerDiscreteScheduler`` with shift 12).
2. Runs the OFFICIAL ``MfMPipeline`` (imported at run time from the checkout, constructed from its components)
   on the CPU in float32 for t2v, i2v (with a depth map) and vsr.
3. Runs the PACK on the same folder in-process, as the shipped workflows do (example_workflows/mfm_t2v.json,
   mfm_i2v.json, mfm_video_super_resolution.json): MfM Pipeline Loader → MfM Condition → CLIPTextEncode ×2 → MfM
   Apply Condition → KSampler (euler, normal) → VAEDecode. Node inputs not set here keep their schema defaults.
4. Prints per task the max |difference| of the decoded frames (0–1) and the final latents, and the first
   intermediate that diverges (prompt strings, token ids, prompt embeddings, depth-model input, condition tensor,
   σ grid, first model call, per-step latents); writes all numbers as JSON to ``--out``.

Both sides get the same inputs:
- initial noise: drawn as ComfyUI's KSampler draws it (``comfy.sample.prepare_noise(latent, seed)``) and passed
  to the official pipeline as ``latents=`` (its own draw uses a CUDA bf16 generator, which cannot run here;
  ``generator=None`` is passed, which its FlowMatch Euler step never uses);
- depth: the depth model is bypassed on both sides by one fixed function of the canvas size
  (``fixed_depth``): the official ``depth_pipe`` is a callable returning it as ``predicted_depth`` at the canvas
  size (the pipeline's bicubic resize to the canvas is then the identity); on the pack side
  ``model_loaders.depth_anything.estimate_depth`` is replaced at run time by the same function;
- the i2v image is a PNG file (official ``input_path``) and the same pixels as a ComfyUI IMAGE; the vsr video is
  served to the official pipeline by a stand-in ``decord.VideoReader`` (scripts/mfm_official_env.py) and given
  to the pack as IMAGE frames;
- i2v: the official pipeline makes ``default_num_frames`` frames (97) whatever ``num_frames`` says; this script
  passes ``default_num_frames=--frames`` so both sides make the same number.

Getting the official code (it is never copied into the project; the checkout is git-ignored under .build/):
    git clone https://github.com/leeruibin/MfM .build/mfm-official
    git -C .build/mfm-official checkout a45db388c6b41d986162ab75077ddb12a4573513
(the commit this harness was written against). Its module-level imports need only ``decord`` beyond the pack's
venv (stubbed as above). The official requirements pin diffusers 0.33.1 / transformers 4.51.3; this runs with
the venv's versions, which the report prints.

Usage:
    .venv/bin/python scripts/mfm_parity.py --out /tmp/mfm_parity.json
    .venv/bin/python scripts/mfm_parity.py --tasks i2v --steps 4 --cfg 6 --frames 9 --width 96 --height 64
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, REPO)

import mfm_official_env as official_env  # noqa: E402

PIPELINE_NAME = "MfM-parity-tiny"
PROMPT = "A Red Cat walks along a sunny beach, cinematic"
TASKS = ("t2v", "i2v", "vsr")
TOLERANCE = 1e-4          # float32 on both sides: differences below this are rounding


# -- shared inputs -------------------------------------------------------------------------------------------------
def test_image(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth, seeded RGB pattern [H, W, 3] uint8 (gradients, a disc, a little noise)."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / width * 6.0 + g.uniform(0, 3))
    gr = y / max(1, height - 1)
    disc = ((x - width * g.uniform(0.3, 0.7)) ** 2 + (y - height * g.uniform(0.3, 0.7)) ** 2) < (0.25 * height) ** 2
    b = np.where(disc, 0.9, 0.2)
    image = np.stack([r, gr, b], -1) + g.normal(0, 0.03, (height, width, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def test_video(frames: int, width: int, height: int, seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8: the test image drifting to the right."""
    base = test_image(width + frames * 2, height, seed)
    return np.stack([base[:, 2 * t:2 * t + width] for t in range(frames)])


def fixed_depth(height: int, width: int) -> torch.Tensor:
    """The depth map both sides use instead of Depth Anything: a smooth function of the canvas size."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return (3.0 + 2.0 * y + torch.sin(6.0 * x) * torch.cos(4.0 * y)).float()


class FixedDepthPipe:
    """Stands for the official ``depth_pipe`` (a transformers depth-estimation pipeline): called with a PIL image,
    returns ``{"predicted_depth": [H, W]}``; records the images it was given."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def __call__(self, image):
        self.inputs.append(np.asarray(image.convert("RGB")).astype(np.float32) / 255.0)
        return {"predicted_depth": fixed_depth(image.height, image.width)}


# -- comparison helpers --------------------------------------------------------------------------------------------
def max_abs(a, b):
    """max |a − b| as a float, or a string when the shapes differ."""
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a - b).abs().max()) if a.numel() else 0.0


def differs(value) -> bool:
    return isinstance(value, str) or value > TOLERANCE


def sentencepiece_ids(spiece_model: str, text: str) -> list[int]:
    """The ids transformers 4.x's slow (SentencePiece) ``T5Tokenizer`` gives — the official environment pins
    transformers 4.51.3, whose ``T5Tokenizer`` is that slow one; here transformers 5 has only the tokenizers-backed
    class — for the official call: lower-cased, stripped, cut at 76 pieces, ``</s>`` (1) appended, padded with 0
    to 77."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=spiece_model)
    ids = processor.encode(text.lower().strip())[:76] + [1]
    return ids + [0] * (77 - len(ids))


# -- the official side ---------------------------------------------------------------------------------------------
def run_official(pipe, depth_pipe, settings, task: str, args, noise: torch.Tensor, inputs: dict) -> dict:
    """One official pipeline call; returns its frames, latents per step, first transformer call and prompts."""
    positive, negative = official_env.official_prompts(settings, task, PROMPT)
    record = {"positive": positive, "negative": negative, "steps": [], "first_call": None}

    def capture_first_call(module, call_args, kwargs, output):
        if record["first_call"] is None:
            record["first_call"] = {
                "timestep": kwargs["timestep"].detach().clone(),
                "x": kwargs["hidden_states"].detach().clone(),
                "condition": torch.cat([kwargs["conditional_pixel_values"], kwargs["conditional_masks"]], 1).clone(),
                "motion_score": kwargs["motion_score"].detach().clone(),
                "context": kwargs["encoder_hidden_states"].detach().clone(),
                "attention_mask": kwargs["encoder_attention_mask"].detach().clone(),
                "output": output[0].detach().clone()}   # rows: 0 = negative (uncond), 1 = positive

    def capture_step(pipeline, i, t, callback_kwargs):
        record["steps"].append(callback_kwargs["latents"].detach().clone())
        return {}

    hook = pipe.transformer.register_forward_hook(capture_first_call, with_kwargs=True)
    depth_pipe.inputs.clear()
    try:
        out = pipe(positive, negative, input_path=inputs.get("official_path"), height=args.height, width=args.width,
                   num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.cfg,
                   motion_score=args.motion, noise_aug_strength=0.0, generator=None, latents=noise.clone(),
                   crop_type="keep_ratio", task=task, trans_nums=[1] if task == "i2v" else [],
                   upscale=4, use_t_schedule=False, default_num_frames=args.frames,
                   callback_on_step_end=capture_step, callback_on_step_end_tensor_inputs=["latents"],
                   output_type="pt")
    finally:
        hook.remove()
    video = out.frames                                                   # [1, 3, F, H, W] in [−1, 1]
    if video.shape[2] % 4 == 0:                                          # the inference script's frame drop
        video = video[:, :, 3:]
    record["frames"] = (video / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).float()   # as its save_video_grid
    record["final_latent"] = record["steps"][-1]
    record["sigmas"] = pipe.scheduler.sigmas.detach().clone().double()
    record["timesteps"] = pipe.scheduler.timesteps.detach().clone().double()
    record["depth_inputs"] = [torch.from_numpy(x) for x in depth_pipe.inputs]
    # the prompt embeddings and token ids, exactly as __call__ computes them (encode_prompt, 77 tokens, no mask)
    pe, pmask, ne, nmask = pipe.encode_prompt(positive, negative, True, num_videos_per_prompt=1,
                                              max_sequence_length=77, use_attention_mask=False,
                                              device=torch.device("cpu"))
    record["embeds"] = {"positive": pe, "negative": ne}
    record["masks"] = {"positive": pmask, "negative": nmask}
    record["token_ids"] = {name: pipe.tokenizer(pipe._text_preprocessing(text)[0], padding="max_length",
                                                max_length=77, truncation=True, add_special_tokens=True).input_ids
                           for name, text in (("positive", positive), ("negative", negative))}
    spiece = os.path.join(pipe.tokenizer.name_or_path, "spiece.model")
    record["sentencepiece_ids"] = {name: sentencepiece_ids(spiece, text)
                                   for name, text in (("positive", positive), ("negative", negative))}
    return record


# -- the pack side -------------------------------------------------------------------------------------------------
def node_call(node_cls, **given):
    """Call a pack V3 node's ``execute`` as ComfyUI would: every widget not given takes its schema default (a
    combo without one its first option)."""
    kwargs = {}
    for inp in node_cls.define_schema().inputs:
        if inp.id in given:
            continue
        default = getattr(inp, "default", None)
        if default is None and getattr(inp, "options", None):
            default = inp.options[0]
        if default is not None:
            kwargs[inp.id] = default
    kwargs.update(given)
    return node_cls.execute(**kwargs).args


def run_pack(pack, task: str, args, inputs: dict, noise_holder: dict) -> dict:
    """The shipped workflow's chain, in-process; returns frames, latents per step, the first model call etc."""
    import comfy.sample
    import comfy.samplers
    import nodes as comfy_nodes

    loader = pack["loader"].MfMPipelineLoader
    builder = pack["condition"].MfMConditionBuilder
    apply = pack["apply"].MfMApplyCondition
    tasks = pack["tasks"]
    record = {"steps": [], "calls": [], "depth_inputs": []}

    model, clip, vae = node_call(loader, pipeline=PIPELINE_NAME)[:3]
    label = next(lbl for lbl, key in tasks.TASK_LABELS.items() if key == task)

    def fake_estimate_depth(depth_model, frames, batch_size=None):
        record["depth_inputs"] += [f.float() for f in frames]
        return torch.stack([fixed_depth(frames.shape[1], frames.shape[2]) for _ in range(frames.shape[0])])

    pack["depth"].estimate_depth = fake_estimate_depth      # the node imports it at call time
    extra = {}
    if "image" in inputs:
        extra["image"] = torch.from_numpy(inputs["image"]).float().unsqueeze(0) / 255.0
    if "video" in inputs:
        extra["video"] = torch.from_numpy(inputs["video"]).float() / 255.0
    built = node_call(builder, task=label, prompt=PROMPT, width=args.width, height=args.height, frames=args.frames,
                      motion_score=args.motion, depth_model=object(), **extra)
    condition, positive_text, negative_text = built[0], built[1], built[2]
    record["positive"], record["negative"] = positive_text, negative_text
    encode = comfy_nodes.CLIPTextEncode()
    positive = encode.encode(clip, positive_text)[0]
    negative = encode.encode(clip, negative_text)[0]
    record["token_ids"] = {name: [t[0] for t in clip.tokenize(text)["mfm_t5"][0]]
                           for name, text in (("positive", positive_text), ("negative", negative_text))}
    record["embeds"] = {"positive": positive[0][0], "negative": negative[0][0]}
    record["masks"] = {"positive": positive[0][1].get("attention_mask"),
                       "negative": negative[0][1].get("attention_mask")}
    positive, negative, latent = node_call(apply, model=model, positive=positive, negative=negative,
                                           condition=condition)[:3]
    key = pack["mfm_model"].CONDITION_KEY
    record["condition"] = {"positive": positive[0][1][key]["pixels"], "negative": negative[0][1][key]["pixels"]}

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, args.seed)          # what KSampler draws for this seed
    noise_holder["noise"] = noise

    def capture_call(module, call_args, kwargs, output):
        options = kwargs.get("transformer_options", {})
        record["calls"].append({"timestep": call_args[1].detach().clone(), "x": call_args[0].detach().clone(),
                                "context": kwargs.get("context").detach().clone(),
                                "condition": kwargs.get("mfm_condition"),
                                "motion_score": kwargs.get("motion_score"),
                                "cond_or_uncond": list(options.get("cond_or_uncond", [])),
                                "output": output.detach().clone()})

    def capture_step(step, denoised, x, total):
        record["steps"].append(x.detach().clone())                       # x *before* step `step`

    hook = model.model.diffusion_model.register_forward_hook(capture_call, with_kwargs=True)
    try:
        samples = comfy.sample.sample(model, noise, args.steps, args.cfg, "euler", "normal", positive, negative,
                                      latent_image, denoise=1.0, callback=capture_step, disable_pbar=True,
                                      seed=args.seed)
    finally:
        hook.remove()
    scale = model.model.latent_format.scale_factor
    record["vae_scale"] = scale
    record["decoder_input"] = samples                                    # what VAEDecode receives
    record["final_latent"] = samples * scale                             # back in the sampler's space
    record["sigmas"] = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal",
                                                       args.steps).double()
    record["frames"] = comfy_nodes.VAEDecode().decode(vae, {"samples": samples})[0].float()
    record["model"], record["vae"] = model, vae          # for the component-alone checks in isolate()
    return record


def isolate(off: dict, pk: dict, vae_scale_official: float) -> list[dict]:
    """Each pack component alone on the official side's own inputs, so a difference is pinned to one component:
    the DiT on the official first call's inputs, and the VAE on the official final latents; and, for the record,
    the σ grid ComfyUI's "simple" scheduler would give. These rows do not count for the first divergence."""
    import comfy.model_management

    first = off["first_call"]
    model = pk["model"]
    comfy.model_management.load_models_gpu([model])
    dit = model.model.diffusion_model
    dtype = model.model.get_dtype()
    output = dit(first["x"].to(dtype), first["timestep"].float(), context=first["context"].to(dtype),
                 attention_mask=first["attention_mask"], mfm_condition=first["condition"].to(dtype),
                 motion_score=first["motion_score"].float(), transformer_options={}).float()
    import comfy.samplers
    simple = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple",
                                             len(off["steps"])).double()
    frames = pk["vae"].decode(off["final_latent"] / vae_scale_official)
    frames = frames.reshape(-1, *frames.shape[-3:]).float()
    return [{"name": "pack DiT alone on the official first-call inputs", "max_abs": max_abs(first["output"], output),
             "note": f"pack DiT dtype {dtype}"},
            {"name": "pack VAE decode alone of the official final latents", "max_abs": max_abs(off["frames"], frames),
             "note": "frames 0–1"},
            {"name": "σ grid of ComfyUI's 'simple' (not used)", "max_abs": max_abs(off["sigmas"], simple),
             "note": f"{[round(float(x), 6) for x in simple]}"}]


def load_parity_modules(fp32_text_encoder: bool = False):
    """The pack imported as ComfyUI imports it, ComfyUI in CPU mode. ``fp32_text_encoder`` sets ComfyUI's own
    ``--fp32-text-enc`` flag (ComfyUI keeps text encoders in float16 by default, on the CPU too)."""
    from harness.paths import pack_module, use_comfy_in_process

    use_comfy_in_process()
    if fp32_text_encoder:
        import comfy.cli_args
        comfy.cli_args.args.fp32_text_enc = True
    return {"loader": pack_module("nodes.mfm_pipeline"), "condition": pack_module("nodes.mfm_condition"),
            "apply": pack_module("nodes.mfm_apply"), "tasks": pack_module("core.mfm.tasks"),
            "depth": pack_module("model_loaders.depth_anything"), "mfm_model": pack_module("samplers.mfm_model")}


# -- comparing one task --------------------------------------------------------------------------------------------
def compare(task: str, off: dict, pk: dict, vae_scale_official: float) -> dict:
    """Every intermediate, in pipeline order; the first over TOLERANCE is where the two sides part."""
    rows = []

    def add(name, value, note=""):
        rows.append({"name": name, "max_abs": value, "note": note})

    add("positive prompt string", 0.0 if off["positive"] == pk["positive"] else "different",
        "" if off["positive"] == pk["positive"] else f"official {off['positive']!r} / pack {pk['positive']!r}")
    add("negative prompt string", 0.0 if off["negative"] == pk["negative"] else "different",
        "" if off["negative"] == pk["negative"] else f"official {off['negative'][:60]!r}… / pack "
                                                      f"{pk['negative'][:60]!r}…")
    for branch in ("positive", "negative"):
        same = off["token_ids"][branch] == off["sentencepiece_ids"][branch]
        add(f"{branch} token ids: official vs SentencePiece", 0.0 if same else "different",
            "official pipeline's tokenizer (transformers 5) vs the slow T5Tokenizer's SentencePiece ids")
    for branch in ("positive", "negative"):
        same = off["token_ids"][branch] == pk["token_ids"][branch]
        note = "" if same else f"official {off['token_ids'][branch][:24]} / pack {pk['token_ids'][branch][:24]}"
        add(f"{branch} token ids: official vs pack", 0.0 if same else "different", note)
    for branch in ("positive", "negative"):
        add(f"{branch} prompt embeddings", max_abs(off["embeds"][branch], pk["embeds"][branch]))
        pmask = pk["masks"][branch]
        add(f"{branch} attention mask", "pack has none" if pmask is None else max_abs(off["masks"][branch], pmask))
    if off["depth_inputs"] or pk["depth_inputs"]:
        if len(off["depth_inputs"]) != len(pk["depth_inputs"]):
            add("depth-model input frames", f"{len(off['depth_inputs'])} vs {len(pk['depth_inputs'])} frames")
        else:
            add("depth-model input frames", max(max_abs(a, b) for a, b in zip(off["depth_inputs"],
                                                                               pk["depth_inputs"])),
                "RGB 0–1 given to the depth model")
    first = off["first_call"]
    add("condition, positive (R,G,B,depth,mask)", max_abs(first["condition"][1:2], pk["condition"]["positive"]))
    add("condition, negative (R,G,B,depth,mask)", max_abs(first["condition"][0:1], pk["condition"]["negative"]))
    if isinstance(rows[-1]["max_abs"], float) and isinstance(rows[-2]["max_abs"], float):
        cond_off, cond_pk = first["condition"][1], pk["condition"]["positive"][0]
        for c, name in enumerate(("R", "G", "B", "depth", "mask")):
            add(f"  condition channel {name} (positive)", max_abs(cond_off[c], cond_pk[c]))
    steps = len(off["steps"])
    off_sig, pk_sig = off["sigmas"], pk["sigmas"]
    add("σ grid", max_abs(off_sig, pk_sig), f"official {[round(float(s), 6) for s in off_sig]} / pack "
                                            f"{[round(float(s), 6) for s in pk_sig]}")
    # the first model call: the pack's calls at the first σ, rows by cond_or_uncond (0 = positive, 1 = negative)
    t0 = pk["calls"][0]["timestep"].flatten()[0]
    pack_rows = {}
    for call in pk["calls"]:
        if not torch.isclose(call["timestep"].flatten()[0], t0):
            break
        for row, kind in enumerate(call["cond_or_uncond"]):
            pack_rows[{0: "positive", 1: "negative"}[kind]] = (call, row)
    add("first call timestep", max_abs(first["timestep"].flatten()[0], t0), "σ·1000 given to the DiT")
    add("first call motion score", max_abs(first["motion_score"].flatten()[0],
                                           pack_rows["positive"][0]["motion_score"].flatten()[0]))
    for branch, off_row in (("positive", 1), ("negative", 0)):
        call, row = pack_rows[branch]
        add(f"first call input latents ({branch})", max_abs(first["x"][off_row], call["x"][row]))
        add(f"first call text context ({branch})", max_abs(first["context"][off_row], call["context"][row]))
        add(f"first call output v ({branch})", max_abs(first["output"][off_row], call["output"][row]))
    for i in range(steps - 1):
        add(f"latents after step {i + 1}", max_abs(off["steps"][i], pk["steps"][i + 1]))
    add("final latents (sampler space)", max_abs(off["final_latent"], pk["final_latent"]))
    add("decoder input (latents ÷ VAE scale)", max_abs(off["final_latent"] / vae_scale_official,
                                                      pk["decoder_input"]),
        f"official ÷ {vae_scale_official}, pack ÷ {pk['vae_scale']}")
    add("decoded frames (0–1)", max_abs(off["frames"], pk["frames"]))
    first_bad = next((r["name"].strip() for r in rows if differs(r["max_abs"])), None)
    rows += isolate(off, pk, vae_scale_official)
    named = {r["name"]: r["max_abs"] for r in rows}
    return {"frames_max_abs": named["decoded frames (0–1)"],
            "final_latent_max_abs": named["final latents (sampler space)"],
            "decoder_input_max_abs": named["decoder input (latents ÷ VAE scale)"],
            "first_divergence": first_bad, "intermediates": rows}


def fmt(value) -> str:
    return value if isinstance(value, str) else f"{value:.3e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", default=os.path.join(REPO, ".build", "mfm-official"),
                        help="checkout of https://github.com/leeruibin/MfM (default .build/mfm-official)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("--work", default=None, help="folder for the tiny pipeline (default: a temporary one)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--motion", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=42, help="KSampler seed of the shared initial noise")
    parser.add_argument("--weights-seed", type=int, default=0)
    parser.add_argument("--fp32-text-enc", action="store_true",
                        help="run the pack's T5 in float32 (ComfyUI's --fp32-text-enc); default: ComfyUI's float16")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    work = args.work or tempfile.mkdtemp(prefix="mfm_parity_")
    try:
        run(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: str) -> None:
    """Write the folder under ``work``, run the tasks on both sides, print and save the comparison."""
    models = os.path.join(work, "models", "mfm")
    folder = os.path.join(models, PIPELINE_NAME)
    pack = load_parity_modules(args.fp32_text_enc)              # ComfyUI on sys.path, CPU mode, the pack imported
    from harness.paths import COMFY_DIR
    import folder_paths

    official_env.write_pipeline_folder(folder, COMFY_DIR, args.official, seed=args.weights_seed)
    folder_paths.add_model_folder_path("mfm", models)
    settings = official_env.official_prompt_settings(args.official)
    depth_pipe = FixedDepthPipe()
    pipe = official_env.load_official_pipeline(folder, args.official, depth_pipe)
    official_scale = official_env.official_vae_scale(args.official)

    import diffusers
    import transformers
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "official_commit": official_env.OFFICIAL_COMMIT}
    results = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")}, "versions": versions,
               "tolerance": TOLERANCE, "tasks": {}}
    for task in args.tasks:
        inputs = {}
        if task == "i2v":
            inputs["image"] = test_image(128, 72, seed=1)                # landscape, pads to the canvas
            path = os.path.join(work, "i2v_input.png")
            from PIL import Image
            Image.fromarray(inputs["image"]).save(path)
            inputs["official_path"] = path
        if task == "vsr":
            inputs["video"] = test_video(args.frames, args.width // 2, args.height // 2, seed=2)
            inputs["official_path"] = "parity-vsr-input.mp4"              # served by the decord stand-in
            official_env.register_video(inputs["official_path"], inputs["video"])
        holder = {}
        pk = run_pack(pack, task, args, inputs, holder)
        off = run_official(pipe, depth_pipe, settings, task, args, holder["noise"], inputs)
        result = compare(task, off, pk, official_scale)
        results["tasks"][task] = result
        print(f"\n== {task}: frames max|Δ| {fmt(result['frames_max_abs'])}, final latents max|Δ| "
              f"{fmt(result['final_latent_max_abs'])}, first divergence: {result['first_divergence']}")
        for row in result["intermediates"]:
            mark = " ≠ " if differs(row["max_abs"]) else "   "
            print(f"{mark} {row['name']:<54} {fmt(row['max_abs']):>12}  {row['note']}")

    print("\nsummary (max |difference|; frames on the 0–1 scale)")
    print(f"{'task':<6} {'frames':>12} {'final latents':>14} {'decoder input':>14}  first divergence")
    for task, r in results["tasks"].items():
        print(f"{task:<6} {fmt(r['frames_max_abs']):>12} {fmt(r['final_latent_max_abs']):>14} "
              f"{fmt(r['decoder_input_max_abs']):>14}  {r['first_divergence']}")
    print(f"versions: {versions}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
