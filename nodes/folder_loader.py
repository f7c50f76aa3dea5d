"""The base of the pack's folder-loader nodes (Depth Anything V2, SigLIP2, local LLM / VLM): a model chosen by
its sub-folder (or file) in one of ComfyUI's model folders, and a precision. A subclass names its node and socket
and points at its loading functions in model_loaders/; the schema, the model-name check and the cache
fingerprint are shared here (the way ComfyUI-GGUF shares its loaders' code by inheritance)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.model_folders import fingerprint
from ..kit import category, choice_error, first_error, node_id, plain_errors
from ..model_loaders.transformers_models import PRECISIONS


def precision_input():
    return io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                          tooltip="Weights dtype. Default auto: fp16 or bf16 where ComfyUI says the device supports "
                                  "it, else fp32 (always on a CPU). fp32/fp16/bf16 force one.")


class FolderModelLoader(io.ComfyNode):
    """Subclasses set ``loader_id`` (the node id without the pack's prefix), ``loader_title``, ``loader_help``,
    ``model_tooltip``, ``output()`` (the socket), and ``model_roots`` / ``list_models`` / ``load(name, precision)``
    (the model_loaders module's functions, as staticmethods). (Upper-case names such as DESCRIPTION are ComfyUI's
    own class properties.)"""

    loader_id = loader_title = loader_help = model_tooltip = ""

    @staticmethod
    def output():
        raise NotImplementedError

    @staticmethod
    def model_roots() -> list[str]:
        raise NotImplementedError

    @staticmethod
    def list_models() -> list[str]:
        raise NotImplementedError

    @staticmethod
    def load(name: str, precision: str):
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id(cls.loader_id),
            display_name=cls.loader_title,
            category=category("loaders"),
            description=cls.loader_help,
            inputs=[io.Combo.Input("model_name", options=cls.list_models(), tooltip=cls.model_tooltip),
                    precision_input()],
            outputs=[cls.output()],
        )

    @classmethod
    def validate_inputs(cls, model_name=None):
        """The model is listed (the precision is checked when it runs, by choose_dtype)."""
        return first_error(choice_error("model_name", model_name, cls.list_models()))

    @classmethod
    def fingerprint_inputs(cls, model_name, precision):
        """Stable while the model's files are unchanged (ComfyUI's cache is reused); changes when they do."""
        return model_name, precision, fingerprint(model_name, cls.model_roots())

    @classmethod
    @plain_errors
    def execute(cls, model_name, precision) -> io.NodeOutput:
        return io.NodeOutput(cls.load(model_name, precision))
