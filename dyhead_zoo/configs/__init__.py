"""Variant records (TOML), shipped inside the package as ``dyhead_zoo.configs``."""
