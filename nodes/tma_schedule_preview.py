"""Shows the TMA factors a sampler's σ schedule will get, step by step, before spending time on sampling."""
from __future__ import annotations

import json

from comfy_api.latest import io

from ..core.attention.progress import progress_from_schedule, progress_from_sigma
from ..core.attention.schedules import (DEFAULT_IMG_WINDOW_START, DEFAULT_LAMBDA_IMG, DEFAULT_LAMBDA_TXT,
                                        DEFAULT_TXT_WINDOW_END, SCHEDULES, alpha_img, alpha_txt)
from ..kit import category, choice_error, first_error, node_id

WIDTH, HEIGHT, MARGIN = 512, 256, 28


def schedule_table(sigmas: list[float], lambda_txt, lambda_img, schedule, txt_window_end, img_window_start,
                   percent_to_sigma=None) -> list[dict]:
    """One row per step (the last σ, usually 0, ends the schedule and is not evaluated)."""
    rows = []
    for i, sigma in enumerate(sigmas[:-1]):
        u = (progress_from_sigma(sigma, percent_to_sigma) if percent_to_sigma is not None
             else progress_from_schedule(sigma, sigmas))
        rows.append({"step": i, "sigma": round(sigma, 6), "u": round(u, 6),
                     "alpha_txt": round(alpha_txt(u, lambda_txt, schedule, txt_window_end), 6),
                     "alpha_img": round(alpha_img(u, lambda_img, schedule, img_window_start), 6)})
    return rows


def text_table(rows: list[dict]) -> str:
    lines = ["step      sigma       u   alpha_txt  alpha_img"]
    lines += [f"{r['step']:>4} {r['sigma']:>10.5f} {r['u']:>7.3f} {r['alpha_txt']:>11.4f} {r['alpha_img']:>10.4f}"
              for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict]):
    """A small chart: α_txt (blue) and α_img (orange) against u, one dot per step."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), (24, 28, 36))
    draw = ImageDraw.Draw(img)
    top = max([1.0] + [max(r["alpha_txt"], r["alpha_img"]) for r in rows])
    span = max(top - 1.0, 0.05)

    def xy(u, a):
        return (MARGIN + u * (WIDTH - 2 * MARGIN), HEIGHT - MARGIN - (a - 1.0) / span * (HEIGHT - 2 * MARGIN))

    draw.line([xy(0, 1), xy(1, 1)], fill=(90, 90, 90))
    draw.text((4, 4), f"alpha max {top:.2f}", fill=(200, 200, 200))
    draw.text((4, HEIGHT - 16), "u=0", fill=(200, 200, 200))
    draw.text((WIDTH - 30, HEIGHT - 16), "u=1", fill=(200, 200, 200))
    for key, colour in (("alpha_txt", (111, 180, 255)), ("alpha_img", (255, 179, 71))):
        points = [xy(r["u"], r[key]) for r in rows]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


class TMASchedulePreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("TMASchedulePreview"),
            display_name="TMA Schedule Preview",
            category=category("sampling"),
            description="Tabulates and plots α_txt and α_img for every step of a σ schedule (UniVid §2.3).",
            inputs=[
                io.Sigmas.Input("sigmas", tooltip="The schedule, e.g. from BasicScheduler."),
                io.Float.Input("lambda_txt", default=DEFAULT_LAMBDA_TXT, min=0.0, max=2.0, step=0.01,
                               tooltip="λ_txt. Default 0.3, range 0–2."),
                io.Float.Input("lambda_img", default=DEFAULT_LAMBDA_IMG, min=0.0, max=2.0, step=0.01,
                               tooltip="λ_img. Default 0.3, range 0–2."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="cosine",
                               tooltip="cosine (default), linear, step, constant, off."),
                io.Float.Input("txt_window_end", default=DEFAULT_TXT_WINDOW_END, min=0.01, max=1.0, step=0.01,
                               tooltip="Default 0.4, range 0.01–1."),
                io.Float.Input("img_window_start", default=DEFAULT_IMG_WINDOW_START, min=0.0, max=0.99,
                               step=0.01, tooltip="Default 0.6, range 0–0.99."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional. With a model, u is global progress from σ (as the TMA node's "
                                       "default); without, u is the step fraction of this schedule."),
            ],
            outputs=[io.Image.Output(display_name="plot"), io.String.Output(display_name="table_json")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, schedule=None):
        return first_error(choice_error("schedule", schedule, SCHEDULES))

    @classmethod
    def execute(cls, sigmas, lambda_txt, lambda_img, schedule, txt_window_end, img_window_start,
                model=None) -> io.NodeOutput:
        values = [float(s) for s in sigmas.flatten().tolist()]
        if len(values) < 2:
            raise ValueError(f"sigmas: a schedule needs at least 2 values, got {len(values)}")
        percent_to_sigma = model.get_model_object("model_sampling").percent_to_sigma if model is not None else None
        rows = schedule_table(values, lambda_txt, lambda_img, schedule, txt_window_end, img_window_start,
                              percent_to_sigma)
        return io.NodeOutput(plot(rows), json.dumps(rows, indent=1), ui={"text": [text_table(rows)]})
