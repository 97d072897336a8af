"""``eximauthd serve``: answer Exim on the Unix socket and serve the HTTP API."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

import click

from ..errors import ConfigError, StorageError
from ..files import warn_if_readable_by_others
from ..settings import Config, mask_url
from . import startup
from .app import State, cli, pass_state


@cli.command("serve")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines as key=value text or JSON (default: service.log_format).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Append logs to FILE (created 0640) instead of stderr; reopened on SIGHUP.")
@click.option("--syslog", is_flag=True, default=False,
              help="Log to syslog (/dev/log), facility mail, instead of stderr.")
@click.option("--wait-for-database", is_flag=True,
              help="Wait for the database (reachable, schema upgraded) instead of exiting 3.")
@pass_state
def serve(state: State, log_format: str | None, log_file: str | None, syslog: bool,
          wait_for_database: bool) -> None:
    """Answer Exim on the Unix socket and serve the HTTP API until SIGTERM.

    With [dovecot_auth] enabled, also Dovecot's auth-client protocol (Exim's dovecot driver,
    Postfix's SASL); with [postfix_policy] enabled, Postfix's policy protocol.
    """
    from ..service.decider import Decider  # noqa: PLC0415 -- keep other commands' start-up light
    from ..service.dovecot import DovecotAuthServer  # noqa: PLC0415
    from ..service.logs import SYSLOG_ADDRESS, configure_logging  # noqa: PLC0415
    from ..service.policy import PostfixPolicyServer  # noqa: PLC0415
    from ..service.quiet import RepeatFilter  # noqa: PLC0415
    from ..service.server import Service  # noqa: PLC0415

    config = state.config
    fmt = log_format or config.service.log_format
    if syslog and log_file:
        raise click.UsageError("--syslog and --log-file are exclusive: choose one")
    handler = configure_logging(fmt, log_file, SYSLOG_ADDRESS if syslog else None)
    _preflight(config)
    # Every record would look up its thread's and process's names, once per decision line;
    # no formatter of the service writes them.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    log = logging.getLogger("eximauthd.serve")
    if config.source != "built-in defaults":
        # The file may hold the database password or http.token: warn, do not refuse (an
        # upgrade must not stop mail over a mode the admin can fix at leisure).
        warn_if_readable_by_others(config.source, "the configuration (database URL, token)")
    if wait_for_database:
        try:
            with startup.stoppable():
                startup.wait_for_database(lambda: startup.database_problem(state))
        except startup.Stopped:
            log.info("stopped")
            return
    elif (problem := startup.database_problem(state)) is not None:
        raise StorageError(problem)
    if (unindexed := startup.legacy_index_warning(state)) is not None:
        # Once at start-up, never per request: the lookups themselves stay silent.
        log.warning("%s", unindexed)
    # For the running service's loops (the wait above paces its own lines); one filter for the
    # life of the process, so a reopened log keeps counting.
    repeats = RepeatFilter()
    handler.addFilter(repeats)
    service = Service(config, Decider(config, db=state.db))
    dovecot = (DovecotAuthServer(service, config.dovecot_auth)
               if config.dovecot_auth.enabled else None)
    policy = (PostfixPolicyServer(service, config.postfix_policy)
              if config.postfix_policy.enabled else None)
    frontends = [f for f in (dovecot, policy) if f is not None]

    def ready() -> None:
        # Said once everything listens: a mistake found while starting stays the only line.
        log.info("%s", service.decider.verifier_line)
        http = f"http://{config.http.listen}" if config.http.enabled else "disabled"
        also = f" dovecot={dovecot.where}" if dovecot is not None else ""
        also += f" postfix-policy={policy.where}" if policy is not None else ""
        log.info("serving socket=%s http=%s%s database=%s workers=%d config=%s",
                 os.path.abspath(config.socket.path), http, also,
                 mask_url(config.database.url), service.workers, config.source)

    def reopen_logs() -> None:
        # SysLogHandler reconnects by itself; only a file needs reopening after logrotate.
        if not syslog:
            configure_logging(fmt, log_file).addFilter(repeats)

    asyncio.run(service.run(ready, on_hangup=reopen_logs,
                            frontends=frontends))
    log.info("stopped")


def _preflight(config: Config) -> None:
    """Refuse, in one line and before anything is logged or created, what would stop the
    service half-way: a socket directory it cannot create the socket in, an HTTP port in use.

    The binds themselves still check (another process may take the port meanwhile); this only
    spares the operator the start-up lines and the token file in front of the error.
    """
    directory = os.path.dirname(os.path.abspath(config.socket.path))
    if not os.path.isdir(directory):
        raise ConfigError(f"socket.path: the directory {directory} does not exist (create it, "
                          "writable by eximauthd's user, or set socket.path)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"socket.path: the directory {directory} is not writable by this user "
                          "(make it so, or set socket.path)")
    if not config.http.enabled:
        return
    host, _, port = config.http.listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEADDR as uvicorn sets it, so a port left in TIME_WAIT is not taken for in use.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            why = ("in use by another process" if exc.errno == errno.EADDRINUSE
                   else exc.strerror)
            raise ConfigError(f"http.listen: cannot listen on {config.http.listen}: {why} "
                              "(stop the other process, or change http.listen)") from None
