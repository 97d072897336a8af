"""``python -m eximauthd`` is the ``eximauthd`` command."""

from eximauthd.cli import main

main()
