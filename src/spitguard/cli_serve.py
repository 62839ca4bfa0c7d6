"""`spitguard serve`: run the edge in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
EXIT_ERROR = 2


def add_serve(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the SIP edge (registrar and proxy) in the foreground",
        description="Run spitguard until SIGTERM or SIGINT. Without --config the embedded "
        "default applies: SQLite under ./var/, listening on 127.0.0.1 only.",
    )
    p.add_argument("--config", metavar="FILE", type=Path, default=None, help="TOML file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--demo", action="store_true", help="create the demo tenant and lines on first start"
    )
    p.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    from .app import banner, run
    from .config import ConfigError, load_settings
    from .store import StoreError

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR

    def ready(edge: object) -> None:
        from .app import Edge

        assert isinstance(edge, Edge)
        sys.stdout.write(banner(edge))
        sys.stdout.flush()

    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop  # optional: a faster event loop when installed

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run(settings, ready=ready, demo=args.demo))
    except (StoreError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        # Typically the address is in use or not ours to bind: say which and stop.
        print(f"error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
