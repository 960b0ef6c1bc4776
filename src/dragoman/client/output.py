"""What ``dragoman translate`` shows and writes: results as they arrive (rich text or JSON lines) and each
utterance's synthesized speech as a WAV file.

Both reporters take the same calls, so the command's logic does not care which one the user chose. JSON
mode prints exactly one line per outcome on stdout, and nothing else there, so that it can be piped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import msgspec

from dragoman import protocol as p
from dragoman.client.tracker import TrackedOutcome
from dragoman.errors import AudioError
from dragoman.opus import decode_plan_a, opus_available
from dragoman.pcm import write_wav


@dataclass(frozen=True, slots=True)
class SavedAudio:
    path: Path
    #: Why the file is not a WAV, if it is not.
    note: str | None = None


class TtsWriter:
    """Writes each result's ``tts_audio`` into a directory as ``utt-0000.wav`` (numbered by utterance).

    ``"pcm16"`` (and, as the web client reads it, any format but ``"opus"``) is raw s16le 16 kHz: it gets a
    WAV header. ``"opus"`` is Plan A: decoded when the codec is installed, else saved as ``utt-0000.opus.bin``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._can_decode = opus_available()

    def save(self, number: int, result: p.TranslationResult) -> SavedAudio | None:
        if not result.tts_audio:
            return None
        data = p.decode_base64(result.tts_audio)
        if data is None:
            return self._raw(number, result.tts_audio.encode(), ".b64", "tts_audio is not valid base64; saved as sent")
        if not data:
            return None
        if result.tts_format != "opus":
            path = self.directory / f"utt-{number:04d}.wav"
            write_wav(path, data)
            return SavedAudio(path)
        if not self._can_decode:
            return self._raw(number, data, ".opus.bin", "Plan A Opus saved undecoded (install PyAV to get WAV)")
        try:
            pcm = decode_plan_a(data)
        except AudioError as exc:
            return self._raw(number, data, ".opus.bin", f"Plan A Opus saved undecoded ({exc})")
        path = self.directory / f"utt-{number:04d}.wav"
        write_wav(path, pcm)
        return SavedAudio(path)

    def _raw(self, number: int, data: bytes, suffix: str, note: str) -> SavedAudio:
        path = self.directory / f"utt-{number:04d}{suffix}"
        path.write_bytes(data)
        return SavedAudio(path, note)


@dataclass(frozen=True, slots=True)
class Summary:
    session_id: str
    results: int
    missing: int  # no speech, or timed out on a node
    errors: int
    never_dispatched: int  # waited for a node until the session closed (none serves the pair, or all busy)
    outstanding: int
    elapsed_s: float


class Reporter(Protocol):
    def started(self, url: str, session_id: str, what: str, total_s: float) -> None: ...
    def sent(self, seconds: float) -> None: ...
    def waiting(self) -> None: ...
    def partial(self, index: int, text: str) -> None: ...
    def outcome(self, tracked: TrackedOutcome, saved: SavedAudio | None) -> None: ...
    def notice(self, text: str) -> None: ...
    def finished(self, summary: Summary) -> None: ...
    def close(self) -> None: ...


def outcome_json(tracked: TrackedOutcome, saved: SavedAudio | None) -> dict[str, Any]:
    """One outcome as a JSON object: the wire message without its base64 audio, plus where it was saved."""
    message = tracked.message
    data: dict[str, Any] = msgspec.to_builtins(message)
    if isinstance(message, p.TranslationResult):
        data["tts_bytes"] = len(p.decode_base64(message.tts_audio) or b"")
        del data["tts_audio"]
        data["audio_file"] = str(saved.path) if saved else None
    elif isinstance(message, p.Error) and tracked.index is not None:
        data["utterance_index"] = tracked.index
    elif tracked.never_dispatched:
        data["never_dispatched"] = True
    return data


class JsonReporter:
    """One JSON object per outcome on stdout; notices on stderr."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def started(self, url: str, session_id: str, what: str, total_s: float) -> None:
        pass

    def sent(self, seconds: float) -> None:
        pass

    def waiting(self) -> None:
        pass

    def partial(self, index: int, text: str) -> None:
        pass

    def outcome(self, tracked: TrackedOutcome, saved: SavedAudio | None) -> None:
        self.out.write(json.dumps(outcome_json(tracked, saved), ensure_ascii=False) + "\n")
        self.out.flush()

    def notice(self, text: str) -> None:
        self.err.write(f"dragoman translate: {text}\n")
        self.err.flush()

    def finished(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        pass


class RichReporter:
    """A progress bar for the audio sent, the live ASR partial, and each outcome printed as it arrives."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(highlight=False)
        self.progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.1f} s"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[partial]}", style="dim italic"),
            console=self.console,
            transient=True,
        )
        self._task: Any = None

    def started(self, url: str, session_id: str, what: str, total_s: float) -> None:
        self.console.print(f"[dim]session [bold]{session_id}[/bold] on {url} — {what}[/dim]")
        if self.console.is_terminal:  # a bar only makes sense on a terminal; piped output gets the lines alone
            self.progress.start()
            self._task = self.progress.add_task("sending", total=max(total_s, 0.001), partial="")

    def sent(self, seconds: float) -> None:
        if self._task is not None:
            self.progress.update(self._task, completed=seconds)

    def waiting(self) -> None:
        if self._task is not None:
            self.progress.update(self._task, description="waiting for results")

    def partial(self, index: int, text: str) -> None:
        if self._task is not None:
            self.progress.update(self._task, partial=f"[{index}] {text[-60:]}")

    def outcome(self, tracked: TrackedOutcome, saved: SavedAudio | None) -> None:
        from rich.markup import escape

        message = tracked.message
        label = f"[{tracked.index}]" if tracked.index is not None else "[-]"
        if isinstance(message, p.TranslationResult):
            line = f"[bold]{escape(label)}[/bold] {escape(message.text_asr) or '[dim](no text)[/dim]'}"
            if message.text_translated:
                line += f"\n      [green]→ {escape(message.text_translated)}[/green]"
            if saved is not None:
                note = f" — {escape(saved.note)}" if saved.note else ""
                line += f"\n      [dim]{escape(str(saved.path))}{note}[/dim]"
        elif tracked.never_dispatched:
            line = f"[bold]{escape(label)}[/bold] [red](never reached a node before the session closed)[/red]"
        elif isinstance(message, p.MissingResult):
            why = {"silence_detected": "no speech recognised", "gap_timeout": "timed out"}.get(message.reason)
            line = f"[bold]{escape(label)}[/bold] [yellow]({why or message.reason})[/yellow]"
        else:
            line = f"[bold]{escape(label)}[/bold] [red]error {escape(message.code)}: {escape(message.message)}[/red]"
        self.console.print(line)
        if self._task is not None:
            self.progress.update(self._task, partial="")

    def notice(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]{escape(text)}[/yellow]")

    def finished(self, summary: Summary) -> None:
        self.close()
        parts = [f"{summary.results} result{'s' if summary.results != 1 else ''}"]
        if summary.missing:
            parts.append(f"{summary.missing} without speech or timed out")
        if summary.errors:
            parts.append(f"[red]{summary.errors} error{'s' if summary.errors != 1 else ''}[/red]")
        if summary.never_dispatched:
            parts.append(f"[red]{summary.never_dispatched} never reached a node[/red]")
        if summary.outstanding:
            parts.append(f"[yellow]{summary.outstanding} never answered[/yellow]")
        self.console.print(f"[dim]{', '.join(parts)} in {summary.elapsed_s:.1f} s (session {summary.session_id})[/dim]")

    def close(self) -> None:
        if self._task is not None:
            self.progress.stop()
            self._task = None
