"""CHS face alignment toolchain."""
__version__ = "0.1.0"
