"""Errors raised while reading or writing checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint is unreadable, incomplete or does not match the model (the message names file and tensor)."""
