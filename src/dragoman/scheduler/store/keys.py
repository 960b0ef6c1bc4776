"""Every store key, by name. Redis key and field names stay in this package.

Scheduling state is split into ``cells``: each cell is one hash tag holding its nodes, their capability
groups and load, its jobs, waiting queues, deadlines and liveness, so a cell's scripts touch one hash slot
and a Redis Cluster spreads the cells over its masters. Session records, instance presence and inboxes
have tags of their own. See docs/ARCHITECTURE.md for the schema.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


@cache
def cell_tags(cells: int) -> tuple[str, ...]:
    """The hash tag of each cell, chosen so that cell k's slot lies in the k-th of ``cells`` equal ranges
    of the slot space: however a Cluster splits the slots among its masters (contiguous ranges), the
    cells spread over them evenly."""
    tags = []
    width = REDIS_CLUSTER_HASH_SLOTS / cells
    for k in range(cells):
        low, high = int(k * width), int((k + 1) * width)
        n = 0
        while True:
            tag = f"sched:{k}" if n == 0 else f"sched:{k}.{n}"
            if low <= key_slot(tag.encode()) < high:
                break
            n += 1
        tags.append(tag)
    return tuple(tags)


def spread(name: str, cells: int) -> int:
    """The cell a node id or session id belongs to: a stable hash, so every instance agrees."""
    return zlib.crc32(name.encode()) % cells


class Keys:
    """The key names of one deployment (``key_prefix``) with ``cells`` scheduling cells."""

    def __init__(self, prefix: str, cells: int) -> None:
        self.prefix = prefix
        self.cells = cells
        self._cell = [f"{prefix}:{{{tag}}}:" for tag in cell_tags(cells)]
        self.instances = f"{prefix}:{{instances}}"
        self.meta_cells = f"{prefix}:{{meta}}:cells"

    # -- a cell's keys ----------------------------------------------------------------------------

    def cell_prefix(self, cell: int) -> str:
        return self._cell[cell]

    def deadlines(self, cell: int) -> str:
        return self._cell[cell] + "deadlines"

    def live(self, cell: int) -> str:
        return self._cell[cell] + "live"

    def job(self, cell: int, job_id: str) -> str:
        return f"{self._cell[cell]}job:{job_id}"

    def node(self, cell: int, node: str) -> str:
        return f"{self._cell[cell]}node:{node}"

    def node_jobs(self, cell: int, node: str) -> str:
        return f"{self._cell[cell]}node:{node}:jobs"

    def slot(self, cell: int, session: str, index: int, tgt: str) -> str:
        return f"{self._cell[cell]}slot:{session}:{index}:{tgt}"

    def session_jobs(self, cell: int, session: str) -> str:
        return f"{self._cell[cell]}sjobs:{session}"

    def waiting(self, cell: int) -> str:
        """The set of pairs that have waiting jobs in the cell."""
        return self._cell[cell] + "waiting"

    def wait(self, cell: int, pair: str) -> str:
        """The jobs waiting in the cell for a node of ``pair`` (zset, FIFO)."""
        return f"{self._cell[cell]}wait:{pair}"

    def job_trace(self, cell: int, job_id: str) -> str:
        """The job's trace: a capped list of msgpack entries, kept as long as the job's record."""
        return f"{self._cell[cell]}job:{job_id}:trace"

    # -- tags of their own ------------------------------------------------------------------------

    def session(self, session: str) -> str:
        return f"{self.prefix}:{{session:{session}}}"

    def session_trace(self, session: str) -> str:
        """The session's cuts (capped list of msgpack entries: index, job id, cell, reason, audio length)."""
        return f"{self.prefix}:{{session:{session}}}:trace"

    def trace_session(self, trace: str) -> str:
        """The session whose utterances carry this trace id (string), for looking a trace up."""
        return f"{self.prefix}:{{trace:{trace}}}"

    def instance(self, instance: str) -> str:
        return f"{self.instances}:{instance}"

    def instance_nodes(self, instance: str) -> str:
        return f"{self.instances}:{instance}:nodes"

    def inbox(self, instance: str) -> str:
        return f"{self.prefix}:{{inbox:{instance}}}"

    def room(self, room: str) -> str:
        return f"{self.prefix}:{{room:{room}}}"

    def room_members(self, room: str) -> str:
        return f"{self.prefix}:{{room:{room}}}:members"

    def room_code(self, code: str) -> str:
        return f"{self.prefix}:{{roomcode:{code}}}"

    def room_join_budget(self, client_key: str) -> str:
        """The failed room joins of one client key (by its name's digest: a name may hold any character)."""
        return f"{self.prefix}:{{roomjoin:{hashlib.sha256(client_key.encode()).hexdigest()[:32]}}}"

    @property
    def rooms(self) -> str:
        """The sweep's index of live rooms: room id -> a lower bound of its last activity (ms)."""
        return f"{self.prefix}:{{rooms}}"

    def node_cell(self, node: str) -> int:
        return spread(node, self.cells)

    def home_cell(self, session: str) -> int:
        return spread(session, self.cells)
