import sys as _sys
from pathlib import Path as _Path

# The benches reuse the tests' process helpers (tests/support) to start the stack.
_TESTS = str(_Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in _sys.path:
    _sys.path.insert(0, _TESTS)
