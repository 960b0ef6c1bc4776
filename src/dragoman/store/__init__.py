"""The store: shared state in Redis/Valkey, its Lua scripts, and the embedded server."""

from dragoman.store.store import (
    Action,
    Assign,
    Cancel,
    Created,
    DropNode,
    InstanceGone,
    JobSpec,
    Notify,
    Outcome,
    Partial,
    Routed,
    SessionSnapshot,
    Store,
    now_ms,
    outcome_of,
)

__all__ = [
    "Action",
    "Assign",
    "Cancel",
    "Created",
    "DropNode",
    "InstanceGone",
    "JobSpec",
    "Notify",
    "Outcome",
    "Partial",
    "Routed",
    "SessionSnapshot",
    "Store",
    "now_ms",
    "outcome_of",
]
