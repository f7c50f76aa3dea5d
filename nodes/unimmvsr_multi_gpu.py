"""UniMMVSR Multi-GPU: the guider's windows spread over torch.distributed ranks (README "4K on many GPUs")."""
from __future__ import annotations

from comfy_api.latest import io

from ..distributed.session import MultiGPUWindows
from ..distributed.settings import MultiGPUSettings
from ..kit import category, node_id
from ..samplers.unimmvsr_guider import LocalWindows, UniMMVSRGuider


class UniMMVSRMultiGPU(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("UniMMVSRMultiGPU"),
            display_name="UniMMVSR Multi-GPU",
            category=category("upscaling"),
            description=("Shares each step's tiles among several GPUs (or CPU processes): this ComfyUI is rank 0, "
                         "local_ranks − 1 workers start on this machine (one per extra GPU) and remote_ranks join "
                         "from other machines with torchrun (README). Workers load the same checkpoint with the same "
                         "loaders and stay up across prompts. The result equals one-process tiling (up to float "
                         "summation order). Needs tiling (tile_width/height or chunk_frames on the guider) to have "
                         "windows to share."),
            inputs=[
                io.Guider.Input("guider", tooltip="From the UniMMVSR Guider."),
                io.Int.Input("local_ranks", default=2, min=1, max=64,
                             tooltip="Processes on this machine including ComfyUI: one per GPU to use. Default 2, "
                                     "range 1–64. On a machine without CUDA they run on the CPU (gloo)."),
                io.Int.Input("remote_ranks", default=0, min=0, max=1024,
                             tooltip="Workers joining from other machines (torchrun … worker.py --master-addr "
                                     "<this host> --master-port <port>). Default 0, range 0–1024. Needs the same "
                                     "UNICASCADE_RENDEZVOUS_SECRET in the environment of ComfyUI and every worker."),
                io.String.Input("rendezvous", default="",
                                tooltip="host:port this ComfyUI listens on for remote workers, e.g. 10.0.0.1:29600 "
                                        "(that address only; 0.0.0.0 = every interface). Empty (default) = a free "
                                        "loopback port (local ranks only)."),
                io.Combo.Input("backend", options=["auto", "nccl", "gloo"], default="auto",
                               tooltip="torch.distributed backend: auto = NCCL on CUDA, gloo on CPU."),
                io.Float.Input("timeout_seconds", default=300.0, min=1.0, max=86400.0, step=1.0,
                               tooltip="A rank that does not join, or makes no progress on its tiles for this long, "
                                       "ends the prompt with an error naming it; the next prompt restarts the "
                                       "workers. Default 300 s, range 1–86400."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def validate_inputs(cls, rendezvous):
        if rendezvous:
            try:
                MultiGPUSettings(local_ranks=1, rendezvous=rendezvous).address()
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, guider, local_ranks, remote_ranks, rendezvous, backend, timeout_seconds) -> io.NodeOutput:
        if not isinstance(guider, UniMMVSRGuider):
            raise ValueError(f"guider: a UniMMVSR Guider is needed, got {type(guider).__name__}")
        settings = MultiGPUSettings(local_ranks=local_ranks, remote_ranks=remote_ranks, rendezvous=rendezvous.strip(),
                                    backend=backend, timeout=float(timeout_seconds))
        settings.validate()
        if remote_ranks:   # refused here, with how to fix it, rather than when the first step starts the pool
            from ..distributed.rendezvous import secret_from_environment

            secret_from_environment("remote_ranks > 0")
        execution = MultiGPUWindows(settings) if settings.world_size > 1 else LocalWindows()
        return io.NodeOutput(guider.with_execution(execution))


_routes_registered = False


def register_routes() -> None:
    """POST /unicascade/unimmvsr/release ends the resident workers (their GPU memory is freed); during a prompt
    that samples with them, as soon as it ends ({"pending": true}). The teardown runs off the event loop."""
    import sys

    global _routes_registered
    # only a server that exists: importing ComfyUI's server module here would load its whole web stack (and, in a
    # process without a server, find no instance)
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if server is None or _routes_registered:
        return
    from aiohttp import web
    _routes_registered = True

    @server.routes.post("/unicascade/unimmvsr/release")
    async def release_workers(request):
        import asyncio

        from ..distributed.pool import release

        return web.json_response(await asyncio.get_running_loop().run_in_executor(None, release))
