"""Run one of these examples against multiprocessing or against dmp.

    python docs/examples/run.py stdlib pool_callbacks.py   # the standard library
    python docs/examples/run.py dmp pool_callbacks.py      # dmp, local mode
    DMP_ADDRESS=tcp://host:port DMP_AUTHKEY=... \\
        python docs/examples/run.py dmp pool_callbacks.py  # dmp, on a cluster

The examples are ordinary multiprocessing programs: they ``import
multiprocessing`` (and ``from multiprocessing.managers import ...``). With
``dmp`` the runner executes the script as ``__main__`` with an ``__import__``
of its own, in the script's globals only, that answers those imports with
``dmp`` and ``dmp.managers``; everything else in the process, dmp included,
still gets the standard library under its own name. A script name without a
directory is looked up next to this file.
"""

from __future__ import annotations

import builtins
import importlib
import os
import runpy
import sys
from typing import Any

PREFIX = "multiprocessing"


def dmp_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    """``__import__``, with ``multiprocessing[.sub]`` answered by ``dmp[.sub]``."""
    if level == 0 and (name == PREFIX or name.startswith(PREFIX + ".")):
        module = importlib.import_module("dmp" + name[len(PREFIX):])
        return module if fromlist else importlib.import_module("dmp")
    return builtins.__import__(name, globals, locals, fromlist, level)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("stdlib", "dmp"):
        sys.exit("usage: run.py {stdlib,dmp} SCRIPT [ARGS...]")
    impl, script, *rest = argv
    if os.sep not in script and not os.path.exists(script):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    init: dict[str, Any] = {}
    if impl == "dmp":
        init["__builtins__"] = {**vars(builtins), "__import__": dmp_import}
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, init_globals=init, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
