"""structlog set-up shared by every process: key=value lines on stderr, bound ``component``."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "warning") -> None:
    """Configure structlog to write human-readable lines to stderr at ``level`` and above."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
