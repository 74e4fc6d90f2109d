"""``python -m dmp.launch.remote manager|worker ARGS...``: a daemon as ``dmp ssh`` starts it.

The first line of stdin is the authkey (hex), so the secret never appears on
a command line; the rest of stdin is a lifeline: when it reaches EOF (the
launcher stopped, was killed, or its SSH connection dropped) the daemon is
sent SIGTERM and shuts down as under ``systemctl stop``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from dmp import _config, cli

# What the launcher writes first, before the key: lets it tell "this host
# lacks dmp" (no marker) from "the daemon failed" (marker, then an error).
READY_MARKER = "dmp-remote: started"


def _lifeline(stdin: int) -> None:
    while os.read(stdin, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("manager", "worker"):
        print("usage: python -m dmp.launch.remote manager|worker ARGS...  (authkey as hex on stdin)",
              file=sys.stderr)
        return 2
    print(READY_MARKER, file=sys.stderr, flush=True)
    line = sys.stdin.buffer.readline().strip()
    if line:
        try:
            key = bytes.fromhex(line.decode())
        except ValueError:
            print("dmp-remote: the authkey on stdin is not hex", file=sys.stderr)
            return 2
        _config.set_process_authkey(key)
    threading.Thread(target=_lifeline, args=(sys.stdin.fileno(),), name="dmp-lifeline", daemon=True).start()
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
