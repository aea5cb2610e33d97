"""Merging checkpoints: lazy safetensors seeds, merge operators, recipes, streaming writer."""
