"""pimail: a complete mail server in one Python process, for a Raspberry Pi."""

__version__ = "0.1.0"
