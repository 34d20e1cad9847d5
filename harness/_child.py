"""A worker process with other numerics than its parent (``harness.numerics.run_in``).

It reads length-prefixed pickled calls ``(sys.path, pickled (function, args, kwargs))`` from stdin
(the parent's import path first, so the function's module resolves) and answers each
with a pickled ``(ok, result or exception)`` on stdout; it ends when stdin closes. The pipe is
private to the parent, which wrote both ends' code: nothing here reads files.
"""

from __future__ import annotations

import os
import pickle
import sys


def main() -> None:
    inp = sys.stdin.buffer
    # the protocol keeps the original stdout; anything else written to fd 1 (Python or C code,
    # MKL_VERBOSE say) goes to stderr instead of corrupting it
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from harness.numerics import FRAME as _HEADER  # importing harness pins numerics first

    while True:
        header = inp.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(header)
        payload = inp.read(size)
        try:
            paths, call = pickle.loads(payload)
            sys.path[:] = [*paths, *(p for p in sys.path if p not in paths)]
            fn, args, kwargs = pickle.loads(call)
            answer: tuple[bool, object] = (True, fn(*args, **kwargs))
        except Exception as err:  # the parent re-raises it
            answer = (False, err)
        try:
            data = pickle.dumps(answer)
        except Exception as err:
            data = pickle.dumps((False, RuntimeError(f"result does not pickle: {err}")))
        out.write(_HEADER.pack(len(data)) + data)
        out.flush()


if __name__ == "__main__":
    main()
