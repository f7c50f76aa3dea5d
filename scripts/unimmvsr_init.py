"""Make a UniMMVSR checkpoint from a Wan T2V checkpoint (the starting point of training; docs/design.md §5).

    python scripts/unimmvsr_init.py wan2.1_t2v_1.3B_fp16.safetensors out.safetensors [--delta]

New parameters are zero-initialised: the untrained upscaler predicts exactly what its parent does. With --delta
only the new and changed tensors are written, with the parent's file name recorded as the base (put the parent in
models/diffusion_models and the delta in models/unimmvsr).
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from core.unimmvsr.checkpoint import init_from_t2v, to_delta  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("t2v")
    parser.add_argument("out")
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--id-start", type=int, default=20)
    parser.add_argument("--video-start", type=int, default=30)
    parser.add_argument("--shift", type=float, default=1.0, help="sampling timestep shift stored in the metadata "
                        "(paper: 1.0)")
    args = parser.parse_args()
    from safetensors.torch import load_file, save_file

    parent = load_file(args.t2v)
    sd, meta = init_from_t2v(parent, id_start=args.id_start, video_start=args.video_start, shift=args.shift)
    if args.delta:
        sd, meta = to_delta(sd, meta, parent, os.path.basename(args.t2v))
    save_file(sd, args.out, metadata=meta)
    print(f"wrote {args.out}: {len(sd)} tensors, {meta}")


if __name__ == "__main__":
    main()
