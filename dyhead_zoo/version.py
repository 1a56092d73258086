"""The dyhead-zoo version (one place; the package, the Hub metadata and the CLI read it)."""
__version__ = "0.1.0"
