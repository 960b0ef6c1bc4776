"""``ui_event``s only to the sessions that take them: the ``ui_events`` setting, and a client's own say in its
``session_init`` (the extension ``ui_events``). Their outcomes never change. Real server and sockets."""

from __future__ import annotations

import pytest

from dragoman.client import SessionClient, SessionConfig

from conftest import Running, StartDragoman
from peers import LinguaNode, LinguaWebClient, pcm16


async def _ui_events_of_one_utterance(d: Running, **init: object) -> tuple[list[str], str]:
    """The ui_events a lingua-style session gets for one utterance (init: extra session_init keys), and the
    type of its outcome."""
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False, **init)
        await client.utterance(0, pcm16(100))
        await node.result(await node.next_job())
        [outcome] = await client.outcomes(1)
        return [f["event"] for f in client.skipped_of("ui_event")], outcome["type"]


@pytest.mark.parametrize(
    ("setting", "asked", "expected"),
    [
        (True, None, ["DISPATCHED", "ASR_FINAL", "NMT_DONE"]),  # lingua's behaviour: the default
        (True, False, []),  # the client declines them
        (False, None, []),  # a deployment of web clients, which ignore them
        (False, True, ["DISPATCHED", "ASR_FINAL", "NMT_DONE"]),  # the client asks for them
    ],
)
async def test_ui_events_follow_the_setting_unless_the_client_says(
    dragoman: StartDragoman, setting: bool, asked: bool | None, expected: list[str]
) -> None:
    d = await dragoman(ui_events=setting)
    init = {} if asked is None else {"ui_events": asked}
    events, outcome = await _ui_events_of_one_utterance(d, **init)
    assert outcome == "translation_result"
    assert events == expected


@pytest.mark.parametrize("wanted", [True, False])
async def test_the_client_library_says_whether_it_wants_ui_events(dragoman: StartDragoman, wanted: bool) -> None:
    d = await dragoman(ui_events=not wanted)  # the setting says the opposite: the client's word wins
    async with SessionClient(d.session_url, SessionConfig.one_way("zh", "en"), ui_events=wanted) as client:
        assert client.session_id is not None
        assert d.scheduler.sessions[client.session_id].ui_events is wanted
