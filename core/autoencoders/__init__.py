"""Autoencoders the pack provides itself (pure PyTorch)."""
