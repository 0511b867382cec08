"""registry-proxy: a pull-through caching container registry."""

__version__ = "0.1.0"
