"""Evaluation subcommands of the ``imae`` command line (registered with ``imae.cli.command``)."""
