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
