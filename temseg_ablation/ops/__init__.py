"""Operational commands beside the app: the team tracking server (``ops.server``)."""
