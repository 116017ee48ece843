"""``python -m chs``: the same app as the ``chs`` command (torchrun launches it this way)."""

from chs.cli import app

app()
