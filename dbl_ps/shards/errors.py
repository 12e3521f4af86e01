"""The one error type of the shard package."""

from __future__ import annotations

from dbl_ps.data.sources import DataError

__all__ = ["ShardError"]


class ShardError(DataError):
    """A shard directory is missing, incomplete, corrupt or does not match its index.

    The message names the shard file (and the sample key where one is involved),
    what was found, and what is available or how to rebuild it."""
