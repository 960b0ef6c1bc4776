"""Building a job's job_assign and store spec, without a server (dragoman.scheduler.jobs)."""

from __future__ import annotations

import json

from dragoman import protocol as p
from dragoman.scheduler import jobs


def init(**fields: object) -> p.SessionInit:
    base = {"type": "session_init", "client_version": "web-client-v1.0", "platform": "web"}
    return p.decode_client(json.dumps({**base, "src_lang": "zh", "tgt_lang": "en", **fields}))  # type: ignore[return-value]


def fields(**more: object) -> dict[str, object]:
    """The fields an utterance's path gives its job_assign (§11.2)."""
    audio = {"audio": "AAAA", "audio_format": "opus", "sample_rate": 16_000}
    return {"pipeline": p.DEFAULT_PIPELINE, **audio, **more}


def test_a_session_job_carries_the_session_settings_and_its_paths_fields() -> None:
    two_way = init(src_lang="auto", mode="two_way_auto", lang_a="zh", lang_b="en", auto_langs=["zh", "en"])
    assign = jobs.session_assign(two_way, "s-1", 4, "job-1", "t-1", "auto", "en", "turn-1", fields(is_manual_cut=True))
    frame = json.loads(p.encode(assign))
    assert (frame["session_id"], frame["utterance_index"], frame["job_id"], frame["turn_id"]) == (
        "s-1",
        4,
        "job-1",
        "turn-1",
    )
    assert (frame["mode"], frame["lang_a"], frame["lang_b"], frame["auto_langs"]) == (
        "two_way_auto",
        "zh",
        "en",
        ["zh", "en"],
    )
    assert (frame["audio"], frame["is_manual_cut"], frame["enable_streaming_asr"]) == ("AAAA", True, True)
    spec = jobs.job_spec(assign, tgt="en", owner="inst", result_ttl_ms=60_000, prefer=("n-1",))
    assert (spec.session, spec.index, spec.tgt, spec.job_id, spec.turn) == ("s-1", 4, "en", "job-1", "turn-1")
    assert (spec.pair, spec.pair2) == ("zh:en", "en:zh")  # two-way: both directions
    assert (spec.owner, spec.prefer, spec.guard, spec.room) == ("inst", ("n-1",), False, False)
    assert json.loads(p.assign_frame(spec.body, 0)) == frame  # the stored body is the frame less its attempt


def test_a_room_job_of_a_two_way_speaker_needs_both_its_languages_recognised() -> None:
    two_way = init(src_lang="auto", lang_a="zh", lang_b="en")
    assign = jobs.session_assign(two_way, "s-1", 0, "job-2", "t-1", "auto", "ja", "turn-2", fields())
    spec = jobs.job_spec(assign, tgt="ja", owner="inst", result_ttl_ms=1, guard=True, room=True)
    assert (spec.pair, spec.pair2, spec.guard, spec.room) == ("zh:ja", "en:ja", True, True)


def test_a_one_way_job_has_one_pool_and_auto_without_both_languages_none() -> None:
    one_way = jobs.session_assign(init(), "s-1", 0, "job-3", "t", "zh", "en", "turn", fields())
    assert (jobs.job_spec(one_way, tgt="en", owner="", result_ttl_ms=1).pair2) == ""
    lost = jobs.session_assign(init(src_lang="auto"), "s-1", 0, "job-4", "t", "auto", "en", "turn", fields())
    assert (jobs.job_spec(lost, tgt="en", owner="", result_ttl_ms=1).pair) == ""  # no node can be eligible


def test_affinity_prefers_the_turns_node_then_the_last_one() -> None:
    affinity = jobs.Affinity()
    assert affinity.prefer("turn-1") == ()
    affinity.placed("turn-1", "node-a")
    assert affinity.prefer("turn-1") == ("node-a",)  # the same turn: its node, once
    assert affinity.prefer("turn-2") == ("node-a",)  # another turn: the last node, as a preference
    affinity.placed("turn-2", "node-b")
    assert affinity.prefer("turn-1") == ("node-b",)  # turn-1 is over: only the last node
