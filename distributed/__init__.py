"""UniMMVSR's tiled sampling over torch.distributed ranks: rank 0 is the ComfyUI process, the others are worker
processes (spawned locally, or joined from other machines with torchrun) that hold the same model and denoise a
share of the windows of every step (README "4K on many GPUs")."""
