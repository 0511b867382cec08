"""The command-line tools of ``registry-proxy`` besides ``serve``."""
