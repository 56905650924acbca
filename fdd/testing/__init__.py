"""Tiny randomly initialised models written in the real on-disk formats, and a demo clip.

Tests, benches and the demo use these; nothing here downloads anything.
"""
