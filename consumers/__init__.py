"""Runnable consumers: thin entrypoints wiring objects from ``pipeline``."""
