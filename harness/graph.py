"""Building API-format prompts in code: ``g.node("KSampler", model=loader[0], ...)``."""
from __future__ import annotations


class Output(tuple):
    pass


class NodeRef:
    def __init__(self, node_id: str):
        self.id = node_id

    def __getitem__(self, index: int) -> list:
        return [self.id, index]


class Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def node(self, class_type: str, node_id: str | None = None, **inputs) -> NodeRef:
        node_id = node_id or str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": dict(inputs)}
        return NodeRef(node_id)

    def prompt(self) -> dict:
        return {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in self.nodes.items()}
