"""``dragoman translate`` to a language pair that no node serves: it says why and exits 1, on both paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_client import run_cli, write_sine_wav

from conftest import StartDragoman
from peers import LinguaNode


@pytest.mark.parametrize("audio_format", ["opus", "pcm16"])
async def test_a_pair_no_node_serves_is_a_failure_that_says_why(
    audio_format: str, dragoman: StartDragoman, tmp_path: Path
) -> None:
    # The default timings: the pending timeout (10 s) outlasts the close grace (5 s), so on the streaming path
    # the utterance's job is still waiting for a node when the session closes.
    d = await dragoman()
    wav = write_sine_wav(tmp_path / "speech.wav", seconds=1.0)
    async with LinguaNode(d.node_url) as node:  # it serves zh -> en only
        await node.start()
        code, out, err = await run_cli(
            "translate", str(wav), "--src", "zh", "--tgt", "ja", "--scheduler", d.session_url,
            "--format", audio_format, "--json",
        )  # fmt: skip
        await node.expect_nothing(0.1, types={"job_assign"})
    assert code == 1, (out, err)
    [line] = [json.loads(x) for x in out.splitlines()]
    assert line["utterance_index"] == 0
    if audio_format == "opus":
        assert line["type"] == "missing_result" and line["never_dispatched"] is True
        assert "never reached a node: no node serves zh:ja" in err
    else:
        assert line["type"] == "error" and "no node available for pair zh:ja" in line["message"]


async def test_an_utterance_a_node_took_and_did_not_answer_is_not_blamed_on_the_pair(
    dragoman: StartDragoman, tmp_path: Path
) -> None:
    d = await dragoman(close_grace_ms=500)
    wav = write_sine_wav(tmp_path / "speech.wav", seconds=1.0)
    async with LinguaNode(d.node_url) as node:  # takes the job, never answers
        await node.start()
        code, out, err = await run_cli(
            "translate", str(wav), "--src", "zh", "--tgt", "en", "--scheduler", d.session_url,
            "--json", "--timeout", "1",
        )  # fmt: skip
    assert code == 0, err
    [line] = [json.loads(x) for x in out.splitlines()]
    assert line["type"] == "missing_result" and line["reason"] == "gap_timeout" and "never_dispatched" not in line
    assert "never reached a node" not in err
