"""Errors of Hugging Face checkpoint loading (kept apart so the CLI can catch them without
importing transformers)."""


class UnsupportedCheckpoint(ValueError):
    """A checkpoint whose architecture or settings jaxrank's encoders cannot represent."""


class CheckpointMismatch(ValueError):
    """A checkpoint whose tensors do not fit the module its config describes."""


class CheckpointNotFound(FileNotFoundError):
    """A checkpoint folder, or a file it needs, that is not there (nor fetchable from the hub)."""


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that is damaged: malformed JSON, a truncated or corrupt safetensors."""
