"""``python -m eximauthd`` is the ``eximauthd`` command."""

from eximauthd.cli.commands import main

main()
