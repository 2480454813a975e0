"""Servers that run on ustack."""
