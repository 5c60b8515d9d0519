"""A fast, strict HTTP/1.1 API gateway."""
__version__ = "0.1.0"
