"""The package version, in a module of its own: code below the Python door reads it without
importing the door."""

__version__ = "0.1.0"
