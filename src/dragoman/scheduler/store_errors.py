"""Which exceptions mean "the store is unavailable": the work is answered with ``SCHEDULER_DEPENDENCY_DOWN``
(HTTP 503) and retried later, rather than treated as a bug.

Unavailable is more than unreachable: a store that answers but refuses the command for now — out of
memory, busy running a script, a read-only replica during a failover, loading its data, a cluster
without a master for the slot — is just as unable to take the work, and recovers by itself.
"""

from __future__ import annotations

from redis import exceptions as redis_errors

# ConnectionError covers BusyLoadingError (LOADING) and too many clients; ClusterError covers CLUSTERDOWN
# and MASTERDOWN; OSError covers a socket that fails below redis-py.
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterError,
    redis_errors.SlotNotCoveredError,
    OSError,
)
# The error codes of such replies, for those redis-py raises as a plain ResponseError (BUSY, NOREPLICAS)
# or that arrive wrapped in a script error ("... @user_script:1: -READONLY ..." on older servers).
_UNAVAILABLE_CODES = frozenset(
    {"OOM", "BUSY", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"}
)


def store_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` says the store cannot do the work now (and may later); False for anything else."""
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return True
    if not isinstance(exc, redis_errors.ResponseError):
        return False
    words = str(exc).split()
    codes = set(words[:1]) | {w[1:] for w in words if w.startswith("-")}
    return not codes.isdisjoint(_UNAVAILABLE_CODES)
