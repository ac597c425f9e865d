"""The engine thread: the only code that touches the `LLMEngine` while the server runs.

Each iteration takes the pending commands (blocking when the engine is idle), runs one
engine step when there is work, posts the step's updates to the event loop in one
``call_soon_threadsafe`` call, and refreshes the gauges. Prompts arrive as token ids
(`AsyncEngine` tokenizes in a thread of its own), so a long prompt never delays a step.

Failures stay contained: a request whose input the engine refuses is rejected at add time
(its handler gets the error); a request the engine failed alone (its output carries
``error``) ends with an error while the others go on; an exception out of ``step()`` itself
(the shared forward) is logged with the ids of the requests that were running, those
requests end with an error, and the loop goes on.
This module must not decide scheduling; it only feeds the engine and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import time
from dataclasses import dataclass
from typing import Any

from spinserve.engine.engine import LLMEngine
from spinserve.engine.outputs import RequestOutput
from spinserve.server.errors import ApiError, bad_request, internal_error
from spinserve.server.messages import (
    STOP,
    AbortAllCommand,
    AbortCommand,
    AddCommand,
    SubRequest,
    Update,
)
from spinserve.server.metrics import ServerMetrics

logger = logging.getLogger("spinserve.server")

Sink = asyncio.Queue[Update]


@dataclass
class _Live:
    """A request the engine runs for a listener; times are ``time.monotonic()``."""

    index: int
    sink: Sink
    arrival_time: float
    last_token_time: float
    first: bool = True


class EngineLoop:
    def __init__(
        self,
        engine: LLMEngine,
        metrics: ServerMetrics,
        commands: queue.SimpleQueue[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._commands = commands
        self._loop = loop
        self._live: dict[str, _Live] = {}
        self._outbox: list[tuple[Sink, Update]] = []

    def run(self) -> None:
        """Serve until STOP; an unexpected error is logged and the loop goes on."""
        while True:
            try:
                if not self._serve_once():
                    return
            except Exception:
                logger.exception("engine loop error (requests: %s)", ", ".join(self._live))
                self._flush()

    def _serve_once(self) -> bool:
        for command in self._take_commands():
            if command is STOP:
                self._abort(list(self._live), notify=True)
                self._flush()
                return False
            self._apply(command)
        if self._engine.has_unfinished():
            self._step()
        self._flush()
        engine = self._engine
        prefix = engine.prefix_cache_stats
        self._metrics.observe_engine(
            engine.num_running,
            engine.num_waiting,
            engine.blocks.usage,
            engine.drafter_stats,
            (prefix.queries, prefix.hits),
        )
        return True

    def _take_commands(self) -> list[Any]:
        """Every pending command; waits for one when the engine has nothing to do."""
        commands = [] if self._engine.has_unfinished() else [self._commands.get()]
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: Any) -> None:
        if isinstance(command, AddCommand):
            self._add(command)
        elif isinstance(command, AbortCommand):
            self._abort(list(command.request_ids), command.notify)
        elif isinstance(command, AbortAllCommand):
            self._abort(list(self._live), notify=True)

    # --- adding --------------------------------------------------------------------------

    def _add(self, command: AddCommand) -> None:
        """Add all of the command's sub-requests, or none; reply with their prompt lengths."""
        if not command.reply.set_running_or_notify_cancel():
            return  # the client left before we got here
        added: list[str] = []
        try:
            lengths = []
            for sub in command.subrequests:
                ids = list(sub.prompt.token_ids or ())  # tokenized before it was sent
                self._add_one(sub, ids, command.sink)
                added.append(sub.request_id)
                lengths.append(len(ids))
        except Exception as exc:
            try:
                self._drop(added)
            except Exception:
                logger.exception("taking back %s failed", ", ".join(added))
            if not isinstance(exc, ApiError | ValueError):  # bad input: the handler reports it
                logger.exception("adding %s failed", command.subrequests[0].request_id)
            command.reply.set_exception(exc)
            return
        for length in lengths:
            self._metrics.observe_added(length)
        command.reply.set_result(lengths)

    def _drop(self, request_ids: list[str]) -> None:
        """Take back requests added by a command that failed as a whole."""
        for request_id in request_ids:
            self._engine.abort(request_id)
            del self._live[request_id]

    def _add_one(self, sub: SubRequest, ids: list[int], sink: Sink) -> None:
        params = dataclasses.replace(sub.params, max_tokens=self._max_tokens(sub, len(ids)))
        self._engine.add_request(ids, params, sub.request_id, sub.spec)
        self._live[sub.request_id] = _Live(sub.index, sink, sub.arrival_time, sub.arrival_time)

    def _max_tokens(self, sub: SubRequest, num_prompt: int) -> int:
        """The request's max_tokens, checked against the context; None fills the context."""
        limit = self._engine.max_model_len
        if num_prompt == 0:
            raise bad_request("the prompt is empty", sub.prompt_param)
        if num_prompt >= limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{num_prompt} tokens. Please shorten the prompt.",
                sub.prompt_param,
                "context_length_exceeded",
            )
        room = limit - num_prompt
        if sub.max_tokens is None:
            return room
        if sub.max_tokens > room:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{num_prompt + sub.max_tokens} tokens ({num_prompt} in the prompt, "
                f"{sub.max_tokens} for the completion). Please reduce max_tokens to at most "
                f"{room}.",
                "max_tokens",
                "context_length_exceeded",
            )
        return sub.max_tokens

    # --- stepping ------------------------------------------------------------------------

    def _step(self) -> None:
        try:
            outputs = self._engine.step()
        except Exception:
            self._fail_running()
            return
        now = time.monotonic()
        for out in outputs:
            live = self._live.get(out.request_id)
            if live is not None:
                self._on_output(out, live, now)

    def _on_output(self, out: RequestOutput, live: _Live, now: float) -> None:
        num_new = len(out.new_token_ids)
        self._metrics.observe_tokens(num_new, now - live.last_token_time, live.first)
        if num_new:
            live.first, live.last_token_time = False, now
        if out.finished:
            self._finish(out, live, now)
        if out.error is not None:  # the engine failed this request alone
            self._outbox.append((live.sink, _error_update(out.request_id, live.index)))
        elif out.new_text or out.finished:
            self._outbox.append((live.sink, _update(out, live.index)))

    def _finish(self, out: RequestOutput, live: _Live, now: float) -> None:
        del self._live[out.request_id]
        reason = out.finish_reason or "stop"
        self._metrics.observe_finished(reason, now - live.arrival_time, out.drafter)
        logger.info(
            "%s finished (%s): %d prompt (%d cached) + %d output tokens in %.3f s, drafter %s",
            out.request_id,
            reason,
            out.num_prompt_tokens,
            out.num_cached_tokens,
            len(out.token_ids),
            now - live.arrival_time,
            out.drafter or "none",
        )

    def _fail_running(self) -> None:
        """``step()`` raised: end the requests it was running with an error, keep serving."""
        running = self._engine.running_request_ids()
        ids = running or list(self._live)  # nothing running: do not fail the same way forever
        logger.exception("engine step failed; failing requests %s", ", ".join(ids) or "(none)")
        for request_id in ids:
            try:
                self._engine.abort(request_id)
            except Exception:
                logger.exception("%s: abort after a failed step failed too", request_id)
            live = self._live.pop(request_id, None)
            if live is None:
                continue
            self._metrics.observe_finished("error", time.monotonic() - live.arrival_time, None)
            self._outbox.append((live.sink, _error_update(request_id, live.index)))

    # --- aborting and delivering -------------------------------------------------------------

    def _abort(self, request_ids: list[str], notify: bool) -> None:
        for request_id in request_ids:
            out = self._engine.abort(request_id)
            live = self._live.pop(request_id, None)
            if out is None or live is None:
                continue
            self._metrics.observe_finished("abort", time.monotonic() - live.arrival_time, None)
            logger.info("%s aborted after %d output tokens", request_id, len(out.token_ids))
            if notify:
                self._outbox.append((live.sink, _update(out, live.index)))

    def _flush(self) -> None:
        """Hand this iteration's updates to the event loop in one wake-up."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody listens any more
            self._loop.call_soon_threadsafe(_deliver, outbox)


def _deliver(outbox: list[tuple[Sink, Update]]) -> None:
    for sink, update in outbox:
        sink.put_nowait(update)


def _error_update(request_id: str, index: int) -> Update:
    return Update(
        request_id, index, finished=True, finish_reason="error", error=internal_error(request_id)
    )


def _update(out: RequestOutput, index: int) -> Update:
    """What the handler needs of an output; statistics are copied while still consistent."""
    finished = out.finished
    return Update(
        request_id=out.request_id,
        index=index,
        new_text=out.new_text,
        num_output_tokens=len(out.token_ids),
        num_prompt_tokens=out.num_prompt_tokens,
        num_cached_tokens=out.num_cached_tokens,
        finished=finished,
        finish_reason=out.finish_reason,
        text=out.text if finished else "",
        drafter=out.drafter,
        speculation=out.spec_stats.to_dict() if finished and out.spec_stats else None,
        choices=out.choice_counts if finished else None,
    )
