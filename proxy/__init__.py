"""llmtap's HTTP side: the ASGI app, forwarding, relaying, the read API and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmtap")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
