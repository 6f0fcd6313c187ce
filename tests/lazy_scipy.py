"""``scipy.stats``, imported only by the statistical tests that use it.

Those tests skip when scipy is missing (as on a bare GPU machine), and the other tests of the
same file still run there.
"""

from __future__ import annotations

from typing import Any

import pytest


class _LazyStats:
    def __getattr__(self, name: str) -> Any:
        return getattr(pytest.importorskip("scipy.stats"), name)


stats = _LazyStats()
