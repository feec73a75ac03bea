"""The package version, in a module of its own (read by the package and by the file format)."""

__version__ = "0.1.0"
