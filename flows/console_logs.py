"""What Prefect's console handler shows of a run while the command line runs a flow.

A flow that fails inside Prefect is logged by its engine with the whole traceback
(``prefect.flow_runs``: "Encountered exception during execution", ``logger.exception``; a task run
that fails in this process likewise on ``prefect.task_runs``), and the console handler of Prefect's
logging configuration printed it above the command's one-line error. While a flow runs, the console
formats those two loggers' records without their traceback: the message stays (it names the run and
the exception), the command's own line follows, ``sleepsound --debug`` leaves the console as Prefect
configured it, and the run's logs in Prefect's database keep the traceback (their handler, ``api``,
is another handler with its own formatting; the record itself is never changed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import prefect.main  # noqa: F401  (importing it configures Prefect's logging: the handlers wrapped here)
from prefect.logging.handlers import PrefectConsoleHandler

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _from_a_run(name: str) -> bool:
    return any(name == run or name.startswith(f"{run}.") for run in RUN_LOGGERS)


class WithoutRunTracebacks(logging.Formatter):
    """The console's own formatter, given a run's records without their traceback (or stack).

    A copy of the record is formatted: the API handler and any other handler see it whole.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if _from_a_run(record.name) and (record.exc_info or record.exc_text or record.stack_info):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.inner.format(record)


def _console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers on the way from the run loggers to the root logger."""
    names = [*RUN_LOGGERS, "prefect", ""]
    found: list[logging.Handler] = []
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and handler not in found:
                found.append(handler)
    return found


@contextmanager
def run_tracebacks_off_the_console() -> Iterator[None]:
    """For the body, Prefect's console handlers print a run's records without their traceback;
    after it, their formatters are as they were (a later command in the same process, or one with
    ``--debug``, sees Prefect's own)."""
    wrapped: list[tuple[logging.Handler, logging.Formatter | None]] = []
    for handler in _console_handlers():
        if isinstance(handler.formatter, WithoutRunTracebacks):
            continue
        wrapped.append((handler, handler.formatter))
        handler.setFormatter(WithoutRunTracebacks(handler.formatter or logging.Formatter()))
    try:
        yield
    finally:
        for handler, formatter in wrapped:
            handler.setFormatter(formatter)
