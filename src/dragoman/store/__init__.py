"""The store: shared state in Redis/Valkey, its Lua scripts, and the embedded server."""

from dragoman.store.records import (
    Action,
    Assign,
    Cancel,
    Created,
    DropNode,
    InstanceRecord,
    JobRecord,
    JobSpec,
    NodeRecord,
    Notify,
    Outcome,
    Partial,
    Routed,
    SessionSnapshot,
)
from dragoman.store.store import DRAIN_LIMIT, Store, StoreConfigError, assigned_node, group_id, now_ms

__all__ = [
    "DRAIN_LIMIT",
    "Action",
    "Assign",
    "Cancel",
    "Created",
    "DropNode",
    "InstanceRecord",
    "JobRecord",
    "JobSpec",
    "NodeRecord",
    "Notify",
    "Outcome",
    "Partial",
    "Routed",
    "SessionSnapshot",
    "Store",
    "StoreConfigError",
    "assigned_node",
    "group_id",
    "now_ms",
]
