"""momentbus: clips of the moments that matter, from live or recorded video and audio."""

__version__ = "0.1.0"
