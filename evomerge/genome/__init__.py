"""Genome layer: search spaces and variation operators."""
