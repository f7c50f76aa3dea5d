"""Depth Estimator: frames/s with micro-batches of 8 vs one frame at a time, and peak memory on a long video.

A Depth-Anything-V2-Small-like model built at run time (random weights): Dinov2-small width (384, 6 heads) with
4 instead of 12 layers, V2-Small's neck and head sizes, preprocessing at 266 px instead of 518 so a CPU run takes
minutes. It goes through the pack's loader (a ModelPatcher, as in ComfyUI) and the estimator node's code.

- Throughput: the same 1280×720 frames with batch_size 8 and 1, alternated after a warm-up of each; median
  frames/s, and per frame the process's CPU time (user, system) and minor page faults (fresh memory pages the
  kernel maps in: what large batches cost on a CPU, see model_loaders/depth_anything.py). The default batch of
  this device is printed too.
- Memory: 97 frames at 1280×720 (per sequence): peak RSS growth during the node's run (sampled every 2 ms)
  against the [97, 720, 1280] float32 result, and against what holding every frame's intermediates at once would
  take (one micro-batch's own peak, minus its result, scaled to 97 frames).

    .venv/bin/python benchmarks/depth_throughput.py [--frames 24] [--repeats 2] [--size 266]
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from harness.paths import load_pack, use_comfy_in_process  # noqa: E402

MB = 1024 * 1024


class PeakRSS:
    """Peak resident memory above the level at entry, sampled by a thread."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0

    def __enter__(self):
        gc.collect()
        self.base = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss - self.base)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=24, help="frames of the throughput runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=266, help="preprocessing size (V2: 518)")
    parser.add_argument("--long", type=int, default=97, help="frames of the memory run")
    args = parser.parse_args()

    use_comfy_in_process()
    import torch
    import folder_paths
    from harness.tiny_depth import PREPROCESSOR, write_depth_anything

    pack = load_pack()
    loader, estimator = pack("model_loaders.depth_anything"), pack("nodes.depth_estimator")
    root = tempfile.mkdtemp(prefix="depth-bench-")
    write_depth_anything(os.path.join(root, "small-like"), {**PREPROCESSOR, "size": {"height": args.size,
                                                                                    "width": args.size}},
                         hidden=384, layers=4, heads=6, neck=(48, 96, 192, 384), fusion=64, head=32)
    folder_paths.add_model_folder_path("depth_anything", root)
    model = loader.load_depth_model("small-like", "fp32")
    shutil.rmtree(root)  # loaded: the folder is no longer needed
    params = sum(p.numel() for p in model.patcher.model.parameters()) / 1e6
    print(f"model: {params:.1f} M parameters, frames 1280×720 → {model.preprocess.height}px processing, "
          f"{torch.get_num_threads()} threads")

    torch.manual_seed(0)
    frames = torch.rand(args.frames, 720, 1280, 3)
    for batch in (8, 1):  # warm-up of both shapes
        loader.estimate_depth(model, frames[:batch], batch)
    runs = {8: [], 1: []}
    for _ in range(args.repeats):
        for batch in (8, 1):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            loader.estimate_depth(model, frames, batch)
            seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            runs[batch].append((seconds, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                                after.ru_minflt - before.ru_minflt))
    device = model.patcher.load_device
    print(f"throughput ({args.frames} frames, median of {args.repeats}, {device}; default batch_size here "
          f"{loader.default_batch_size(device)}):")
    fps = {}
    for batch, measured in runs.items():
        wall, user, system, faults = (statistics.median(run[i] for run in measured) for i in range(4))
        fps[batch] = args.frames / wall
        print(f"  batch {batch}: {fps[batch]:.2f} frames/s; per frame: CPU user {1000 * user / args.frames:.0f} ms, "
              f"system {1000 * system / args.frames:.0f} ms, {faults / args.frames:.0f} minor page faults")
    print(f"  batch 8 / batch 1: {fps[8] / fps[1]:.2f}×")

    del frames
    node = estimator.DepthEstimator
    small = torch.rand(8, 720, 1280, 3)
    with PeakRSS() as one_batch:
        node.execute(model, small, "per sequence", False, 8)
    per_frame = max(one_batch.peak - small[..., 0].nbytes, 0) / 8
    del small
    video = torch.rand(args.long, 720, 1280, 3)
    result = video[..., 0].nbytes
    with PeakRSS() as long_run:
        depth, preview = node.execute(model, video, "per sequence", False, 8).result
    assert depth.shape == (args.long, 720, 1280) and preview.data_ptr() == depth.data_ptr()
    all_at_once = result + per_frame * args.long
    print(f"memory ({args.long} frames, batch 8): result {result / MB:.0f} MB; peak RSS growth "
          f"{long_run.peak / MB:.0f} MB = {long_run.peak / result:.2f}× the result; intermediates of one frame "
          f"≈ {per_frame / MB:.0f} MB, so all {args.long} at once ≈ {all_at_once / MB:.0f} MB "
          f"(measured/all-at-once {long_run.peak / all_at_once:.2f})")


if __name__ == "__main__":
    main()
