"""The in-order release of a delivery stream (``scheduler/ordering.py``): pure logic, no server."""

from __future__ import annotations

from dragoman.scheduler.ordering import Ordered, Slot

GAP = 1000


def _slot(index: int) -> Slot:
    return Slot(index, f"job-{index}", 0, False, "zh:en", "trace", None)


def _resolve(slot: Slot, at: float) -> None:
    slot.frames, slot.resolved_at = [b"frame"], at


def test_an_early_outcome_waits_for_the_lower_indexes_then_all_go_in_order() -> None:
    order = Ordered(now=0)
    slots = [_slot(i) for i in range(3)]
    for slot in slots:
        order.add(slot, now=0)
    _resolve(slots[2], at=10)
    _resolve(slots[1], at=20)
    assert order.pop_released(now=30) is None  # index 0 is still out
    _resolve(slots[0], at=40)
    assert [order.pop_released(now=50) for _ in range(4)] == [*slots, None]
    assert len(order) == 0 and order.head() is None


def test_the_gap_deadline_runs_from_the_first_resolved_behind_an_unresolved_head() -> None:
    order = Ordered(now=0)
    head, second, third = _slot(0), _slot(1), _slot(2)
    for slot in (head, second, third):
        order.add(slot, now=0)
    assert order.gap_deadline(GAP) is None  # nothing resolved waits behind the head
    _resolve(third, at=300)
    _resolve(second, at=500)
    assert order.gap_deadline(GAP) == 300 + GAP
    _resolve(head, at=700)
    assert order.gap_deadline(GAP) is None  # the head resolved: no gap


def test_a_new_head_gets_its_own_gap_time() -> None:
    order = Ordered(now=0)
    first, second, third = _slot(0), _slot(1), _slot(2)
    for slot in (first, second, third):
        order.add(slot, now=0)
    _resolve(third, at=100)
    _resolve(first, at=5000)
    assert order.pop_released(now=5000) is first
    # index 1 became the head at 5000, long after index 2 resolved: it gets the whole gap from then
    assert order.gap_deadline(GAP) == 5000 + GAP


def test_unresolved_lists_the_slots_still_waiting_for_an_outcome() -> None:
    order = Ordered(now=0)
    slots = [_slot(i) for i in range(3)]
    for slot in slots:
        order.add(slot, now=0)
    _resolve(slots[1], at=10)
    assert order.unresolved() == [slots[0], slots[2]]
    assert order.get(1) is slots[1] and order.get(7) is None
