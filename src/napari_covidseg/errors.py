"""Errors that mean "the input is wrong", as opposed to a bug.

The CLI turns these into one readable line and exit code 2; the napari docks turn them into notifications.
"""


class InputError(ValueError):
    """A file, folder, array or argument that cannot be used, with a message a user can act on."""


class CheckpointError(InputError):
    """A checkpoint or model card that is missing, malformed, or does not match its network."""
