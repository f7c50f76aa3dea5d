"""ComfyUI nodes of the pack: thin V3 nodes over core/ and samplers/."""
from comfy_api.latest import ComfyExtension, io

from .taca_boost import TextAttentionBoostTACA
from .tma_boost import TemperatureModalityAlignment
from .tma_schedule_preview import TMASchedulePreview

NODES: list[type[io.ComfyNode]] = [
    TemperatureModalityAlignment,
    TextAttentionBoostTACA,
    TMASchedulePreview,
]


class UniCascadeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
