"""Weights: strict checkpoint loading, sources and caches, the Hub folder layout, ImageNet backbones."""
