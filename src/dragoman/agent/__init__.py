"""The node agent (``dragoman node``): a compute node that speaks lingua's Electron-node protocol.

The agent connects to a scheduler's ``/ws/node`` socket, registers, heartbeats and runs the jobs it is
assigned through a pluggable :class:`~dragoman.agent.engines.Engine`. It exists so that a Dragoman
deployment can be built and tested without the Electron node: the ``echo`` engine is a deterministic test
double of a node, and the ``http`` engine drives lingua's own ASR/NMT/TTS services (NODE-SERVICES.md).
"""

from __future__ import annotations

from dragoman.agent.agent import AgentConfig, NodeAgent
from dragoman.agent.engines import Engine, EngineConfig, EngineError, EngineResult, load_engine

__all__ = ["AgentConfig", "Engine", "EngineConfig", "EngineError", "EngineResult", "NodeAgent", "load_engine"]
