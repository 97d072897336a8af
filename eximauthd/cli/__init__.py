"""The ``eximauthd`` command.

:mod:`.app` holds the root group, the exit codes and :func:`main`; :mod:`.startup` what ``serve``
needs of the database before it starts; every other module holds one group of commands and
registers it on the root group when imported, which this package does.
"""

# Imported for their registration on `cli`: a command module no one imports has no command.
from . import (  # noqa: F401
    audit,
    configcmd,
    db,
    doctor,
    exim,
    grants,
    limits,
    passwords,
    postfix,
    serve,
    show,
    users,
)
from .app import EXIT_DB, EXIT_NO, EXIT_OK, EXIT_USAGE, cli, main

__all__ = ["EXIT_DB", "EXIT_NO", "EXIT_OK", "EXIT_USAGE", "cli", "main"]
