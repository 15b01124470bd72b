"""Tests that run nova's own code: only in .venv-nova (``make test`` runs them there).

As nova's own test package does: patch before eventlet is imported, register
nova's versioned objects, then import the filter.
"""

from __future__ import annotations

from nova import monkey_patch

monkey_patch.patch()

from nova import objects  # noqa: E402

objects.register_all()
