"""What the fuzz tests share: how many examples to draw, their settings, byte-flip strategy.

CI draws a fixed set (the ``wnconvert`` profile of ``tests/conftest.py`` is derandomized);
``--hypothesis-profile=fuzz`` draws at random and many more.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def examples(count: int) -> int:
    """``count`` in CI; the profile's (larger) number under ``--hypothesis-profile=fuzz``."""
    return max(count, settings().max_examples) if settings().max_examples >= 1000 else count


# The CLI fixtures are function-scoped but hold no state between examples.
FUZZ = settings(max_examples=examples(60), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Up to four (position, new byte) pairs; positions wrap around the bytes they are applied to.
flips = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                 max_size=4)
