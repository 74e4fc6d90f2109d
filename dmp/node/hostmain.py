"""``python -m dmp.node.hostmain ENDPOINT [PUBLIC]``: the object host as the daemon starts it.

The authkey comes as hex on stdin, and stdin stays open as the host's lifeline.
A separate entry point so that the host module never imports ``dmp.managers``
(whose ``SyncManager`` registry is what the daemon's host serves).
"""

from __future__ import annotations

import sys

from dmp.managers import SyncManager
from dmp.node.objhost import serve


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m dmp.node.hostmain ENDPOINT [PUBLIC]  (authkey as hex on stdin)", file=sys.stderr)
        return 2
    line = sys.stdin.buffer.readline().strip()
    key = bytes.fromhex(line.decode()) if line else None
    serve(args[0], key, SyncManager._registry, sys.stdin.fileno(), args[1] if len(args) == 2 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
