"""Test-only node: loads the tiny UMT5 fixture as a CLIP (stands in for CLIPLoader's umt5-xxl)."""
import folder_paths

from . import tiny_text_encoder


class UniCascadeTestTinyTextEncoderLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),)},
                "optional": {"type": ("STRING", {"default": "wan"})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "UniCascade tests"

    def load(self, clip_name, type="wan"):
        return (tiny_text_encoder.load_clip(folder_paths.get_full_path_or_raise("text_encoders", clip_name)),)


NODE_CLASS_MAPPINGS = {"UniCascadeTestTinyTextEncoderLoader": UniCascadeTestTinyTextEncoderLoader}


class UniCascadeTestDynamicInputs:
    """Exercises the pack's js generically: a variable-length image group and widgets with validation rules.
    Reports (as ui text, shown by the text panel) which inputs the backend received."""
    MAX_IMAGES = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "width": ("INT", {"default": 64, "min": 1, "max": 4096, "unicascade_rule": "multiple_of_16"}),
                "length": ("INT", {"default": 33, "min": 1, "max": 1000, "unicascade_rule": "4n+1"}),
            },
            "optional": {f"image_{i}": ("IMAGE", {"unicascade_dynamic": "image"})
                         for i in range(1, cls.MAX_IMAGES + 1)},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "UniCascade tests"

    def run(self, width, length, **images):
        received = sorted(images, key=lambda k: int(k.split("_")[1]))
        if not received:
            raise ValueError("connect at least one image")
        batch = images[received[0]]
        report = "received: " + ", ".join(f"{k} {tuple(images[k].shape)}" for k in received)
        return {"ui": {"text": [report]}, "result": (batch,)}


NODE_CLASS_MAPPINGS["UniCascadeTestDynamicInputs"] = UniCascadeTestDynamicInputs


class ModelPatchFixture:
    """MODEL → MODEL test nodes: a clone of the model with ``patch_clone``'s change."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "UniCascade tests"

    def patch(self, model):
        m = model.clone()
        self.patch_clone(m)
        return (m,)


class UniCascadeTestReplaceAttentionOverride(ModelPatchFixture):
    """Stands for another pack's attention patch that replaces the override without chaining to it."""

    def patch_clone(self, m):
        def replace(func, *args, **kwargs):
            return func(*args, **kwargs)
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = replace


NODE_CLASS_MAPPINGS["UniCascadeTestReplaceAttentionOverride"] = UniCascadeTestReplaceAttentionOverride


class UniCascadeTestRotatedQueryPatch(ModelPatchFixture):
    """Stands for a node that sets an ``attn1_patch`` reading the rotated queries (as newer ComfyUI's MultiTalk
    patch does on Wan): it adds a small multiple of the rotated q to the attention output."""

    def patch_clone(self, m):
        def add_rotated_query(args):
            x, q = args["x"], args["q"]
            return x + 0.05 * q.reshape(x.shape)
        m.set_model_attn1_patch(add_rotated_query)


NODE_CLASS_MAPPINGS["UniCascadeTestRotatedQueryPatch"] = UniCascadeTestRotatedQueryPatch
