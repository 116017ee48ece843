"""CHS face alignment toolchain."""
