"""``sleepsound monitor``: the bedside monitoring service.

Registered by sleepsound/cli.py as ``app.add_typer(monitor_app, name="monitor")``. Heavy
imports happen inside the command so ``--help`` stays instant.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from sleepsound.core.text import without_credentials

monitor_app = typer.Typer(
    help="Bedside monitoring: devices stream a night's audio, every 30-s epoch is scored as it completes.",
    no_args_is_help=True,
    add_completion=False,
)

LOOPBACK = ("127.0.0.1", "::1", "localhost")
TRUST_PROXY_HELP = (
    "Address or network (CIDR) of a reverse proxy whose X-Forwarded-For (the client's address) and "
    "X-Forwarded-Proto are believed (repeatable). Default: none: a client is its connection's address, "
    "so a local process cannot pose as many clients and slip the per-client limits. Behind a TLS proxy, "
    "give its address (e.g. 127.0.0.1): its X-Forwarded-Proto is what makes an https Origin same-origin."
)


@monitor_app.command()
def serve(
    root: Annotated[str, typer.Option(help="Storage root (local disk) holding the champion heads; nights land there.")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default: audio is health data).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file.")] = None,
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a setting: section.key=value (repeatable).")
    ] = None,
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", help="Use this version instead of a task's champion: TASK=VERSION (repeatable)."),
    ] = None,
    max_sessions: Annotated[int, typer.Option(min=1, help="Most sessions open at once.")] = 32,
    max_sessions_per_client: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Most sessions one client address may hold open (default: a quarter of --max-sessions, at least "
            "1, so one address cannot take nearly every bed; raise it when many beds share one address).",
        ),
    ] = None,
    max_clips_per_client: Annotated[
        int,
        typer.Option(min=1, help="Most /analyze-breathing clips one client address may have sent or analysed at once."),
    ] = 2,
    max_chunk_mb: Annotated[float, typer.Option(help="Largest chunk upload, in MiB.")] = 8.0,
    read_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a request's body.")] = 30.0,
    idle_timeout: Annotated[float, typer.Option(help="Seconds without a request after which a session ends.")] = 600.0,
    rate: Annotated[float, typer.Option(help="Requests a second per device token (bursts of 4x).")] = 5.0,
    allowed_host: Annotated[
        Optional[list[str]], typer.Option(help="Another Host name to answer to (the reverse proxy's; repeatable).")
    ] = None,
    allowed_origin: Annotated[
        Optional[list[str]], typer.Option(help="Another origin allowed to POST (repeatable).")
    ] = None,
    trust_proxy: Annotated[Optional[list[str]], typer.Option(help=TRUST_PROXY_HELP)] = None,
    operator_token_env: Annotated[
        str, typer.Option(help="Environment variable holding the operator token needed to open sessions.")
    ] = "SLEEPSOUND_MONITOR_OPERATOR_TOKEN",
    graceful: Annotated[float, typer.Option(help="Seconds SIGTERM waits for running requests.")] = 5.0,
    alerts: Annotated[
        Optional[Path], typer.Option(help="YAML file of alert rules and webhooks (see sleepsound/monitor/alerts.py).")
    ] = None,
    keep_audio: Annotated[
        Optional[Path],
        typer.Option(
            help="Keep each finished night's audio here as <session-id>.flac (health data: off by default), "
            "a plain recording for validate, score and nightly --source."
        ),
    ] = None,
) -> None:
    """Serve the monitoring API (POST /v1/sessions, chunks, DELETE; POST /analyze-breathing; GET /health)."""
    from pydantic import ValidationError

    from sleepsound.cli import _load_config
    from sleepsound.monitor.alerts import load_rules
    from sleepsound.monitor.app import Settings, create_app
    from sleepsound.monitor.limits import parse_trusted_proxies, service_logging
    from sleepsound.monitor.limits import serve as run_server
    from sleepsound.registry.serving import parse_versions

    for option, value in (
        ("--max-chunk-mb", max_chunk_mb),
        ("--read-timeout", read_timeout),
        ("--idle-timeout", idle_timeout),
        ("--rate", rate),
    ):  # NaN passes any range check, and a limit of inf or 0 (or below) is no limit at all
        if not (math.isfinite(value) and value > 0):
            raise _fail(f"{option} {value!r}: give a finite number above 0")
    if not (math.isfinite(graceful) and graceful >= 0):
        raise _fail(f"--graceful {graceful!r}: give a finite number of seconds, 0 or more")
    cfg = _load_config(config, overrides)
    try:
        versions = parse_versions(model)
        proxies = parse_trusted_proxies(trust_proxy or ())
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    operator = os.environ.get(operator_token_env) or None
    if host not in LOOPBACK and operator is None:
        raise _fail(
            f"listening on {host} needs an operator token in ${operator_token_env}: anyone who reaches the port "
            "could open sessions (or keep the default loopback address behind a TLS reverse proxy)"
        )
    try:
        rules = load_rules(alerts)
    except (OSError, ValueError, ValidationError) as exc:
        raise _fail(f"alert rules {alerts}: {exc}") from exc
    settings = Settings(
        keep_audio=str(keep_audio) if keep_audio else None,
        rules=rules,
        host=host,
        max_sessions=max_sessions,
        max_sessions_per_client=max_sessions_per_client,
        max_clips_per_client=max_clips_per_client,
        max_chunk_bytes=int(max_chunk_mb * 2**20),
        read_timeout_s=read_timeout,
        idle_timeout_s=idle_timeout,
        rate_per_s=rate,
        burst=int(max(1, 4 * rate)),
        operator_token_hash=hashlib.sha256(operator.encode()).hexdigest() if operator else None,
        extra_hosts=tuple(allowed_host or ()),
        allowed_origins=tuple(allowed_origin or ()),
    )
    from sleepsound.core.storage import is_local

    if not is_local(root):  # its sessions, users and spooled audio are files on this machine
        raise _fail(f"--root {root}: the monitor keeps its sessions on local disk; give a local storage root")
    service_logging()
    try:
        app = create_app(root, cfg, settings, versions)
    except (OSError, ValueError, LookupError, RuntimeError) as exc:  # LookupError: no champion
        raise _fail(str(exc)) from exc
    typer.echo(f"monitoring with the champions of {root} on http://{host}:{port} (API docs at /docs)")
    if proxies:
        typer.echo(f"client addresses from X-Forwarded-For of {', '.join(proxies)}")
    run_server(app, host, port, graceful_s=graceful, trusted_proxies=proxies)


users_app = typer.Typer(
    help="Dashboard users: names and passwords (scrypt-hashed in ROOT/monitor/users.json) for the dashboard login.",
    no_args_is_help=True,
    add_completion=False,
)
monitor_app.add_typer(users_app, name="users")
RootOpt = Annotated[str, typer.Option(help="Storage root (local disk) the monitor service serves.")]


def _users_file(root: str) -> Path:
    from sleepsound.core.storage import is_local, open_root
    from sleepsound.monitor.users import users_path

    if not is_local(root):
        raise _fail(f"{root}: dashboard users live in a storage root on local disk")
    return users_path(open_root(root).path)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The user's name (letters, digits, '.', '_', '@', '-').")],
    root: RootOpt,
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from the first line of standard input (scripts) instead of asking.")
    ] = False,
) -> None:
    """Add a user, or set an existing user's password (asked twice, never echoed; only its hash is kept)."""
    import sys

    from sleepsound.monitor.users import MIN_PASSWORD, add_user

    path = _users_file(root)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise _fail(f"a password needs at least {MIN_PASSWORD} characters")
    try:
        new = add_user(path, name, password)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{'added' if new else 'changed the password of'} {name} in {path}")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument(help="The user's name.")], root: RootOpt) -> None:
    """Remove a user (their dashboard login ends at once, on a running server too)."""
    from sleepsound.monitor.users import remove_user

    path = _users_file(root)
    try:
        removed = remove_user(path, name)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if not removed:
        raise _fail(f"no user {name} in {path}")
    typer.echo(f"removed {name} from {path}")


@users_app.command("list")
def users_list(root: RootOpt) -> None:
    """The users' names, one a line, with when their password was set (never a hash)."""
    import datetime

    from sleepsound.monitor.users import load_users

    path = _users_file(root)
    try:
        users = load_users(path)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    for name, record in sorted(users.items()):
        when = datetime.datetime.fromtimestamp(record["created"], datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        typer.echo(f"{name}\tpassword set {when}")
    if not users:
        typer.echo(f"no users in {path}", err=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {without_credentials(message)}", err=True)
    return typer.Exit(2)
