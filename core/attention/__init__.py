"""Attention-logit scaling used by Temperature Modality Alignment (UniVid §2.3) and TACA."""
