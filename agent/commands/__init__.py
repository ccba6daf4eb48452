"""CLI subcommands, one module per command group.

Each module exposes ``register(subparsers)`` which adds its parser(s) and sets
``func`` to a handler ``(args: argparse.Namespace) -> int``.  Handlers raise
:class:`agent.errors.EdgeproofError` for user mistakes; :mod:`agent.cli`
turns those into a message and an exit code.
"""
