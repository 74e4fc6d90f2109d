"""A local fork pool of picklable functions loads only what it needs (docs/performance.md).

Every module the pool's process holds is in the page tables each fork
copies: cloudpickle (with platform and uuid), hashlib's OpenSSL, secrets,
uuid and ctypes are loaded on first use, and a local pool of importable
functions never uses them. A lambda still maps, and then cloudpickle loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = '''
import json, sys
import dmp

LAZY = ("cloudpickle", "dmp._cloud", "hashlib", "_hashlib", "hmac", "secrets", "uuid", "_uuid", "ctypes")


def double(x):
    return 2 * x


def fail(x):
    raise ValueError(x)


def loaded(_=None):
    return [name for name in LAZY if name in sys.modules]


if __name__ == "__main__":
    out = {}
    with dmp.Pool(2) as pool:
        assert pool.map(double, range(10)) == [2 * x for x in range(10)]
        assert pool.apply(double, (4,)) == 8
        assert pool.apply_async(double, (5,)).get(30) == 10
        try:
            pool.apply(fail, ("boom",))
        except ValueError as exc:
            assert exc.args == ("boom",)
        out["workers"] = pool.map(loaded, range(4), chunksize=1)
        out["parent"] = loaded()
        assert pool.map(lambda x: x + 1, range(3)) == [1, 2, 3]
        base = 10
        assert pool.apply(lambda: base + 1) == 11  # a closure
        out["after_lambda"] = "cloudpickle" in sys.modules
    print(json.dumps(out))
'''


def test_a_local_pool_of_picklable_functions_loads_no_cloudpickle_hashlib_secrets_uuid_ctypes(tmp_path: Path) -> None:
    script = tmp_path / "lean.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}  # local mode, whatever the caller set
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["parent"] == []
    assert out["workers"] == [[], [], [], []]
    assert out["after_lambda"] is True


HELPER = '''
class Thing:
    def __eq__(self, other):
        return type(other).__name__ == "Thing"
'''

BY_VALUE = '''
import importlib, os, pickle, sys

from dmp import serialization

plain = serialization.dumps_quick(((1, "x"), {}))
assert plain == [pickle.dumps(((1, "x"), {}), protocol=5)], plain
assert "cloudpickle" not in sys.modules  # plain data: no cloudpickle
import cloudpickle
import helper

for module in (helper,):  # by the program itself (a process of its own), before dmp loaded cloudpickle
    cloudpickle.register_pickle_by_value(module)
assert "dmp._cloud" not in sys.modules
frames = serialization.dumps_quick(helper.Thing())
assert frames != [pickle.dumps(helper.Thing(), protocol=5)]  # by value, as cloudpickle was told
del sys.modules["helper"]
os.remove(helper.__file__)
importlib.invalidate_caches()
assert serialization.loads(frames) == helper.Thing()  # no module to import: it came by value
print("ok")
'''


def test_a_module_registered_with_cloudpickle_before_dmp_loads_it_still_travels_by_value(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "by_value.py").write_text(BY_VALUE)
    run = subprocess.run([sys.executable, "by_value.py"], capture_output=True, text=True, timeout=50, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


SLOW_MODULE = '''
import builtins, time
builtins.slow_import_started.set()
time.sleep(0.5)
VALUE = 1
'''

FORK_DURING_IMPORT = '''
import builtins, os, signal, threading
from dmp import _lazy

builtins.slow_import_started = threading.Event()
loader = threading.Thread(target=_lazy.load, args=("slow",))
loader.start()
builtins.slow_import_started.wait()
pid = os.fork()  # while the other thread imports: waits for it (dmp._lazy)
if pid == 0:
    signal.alarm(20)  # a half-imported module would make the import below wait forever
    import slow
    os._exit(0 if slow.VALUE == 1 else 3)
_, status = os.waitpid(pid, 0)
loader.join()
print(os.waitstatus_to_exitcode(status))
'''


def test_a_fork_while_another_thread_imports_on_first_use_waits_for_the_import(tmp_path: Path) -> None:
    """What a pool's replacement worker, forked while the caller's thread loads cloudpickle
    for its first lambda, would otherwise inherit: a half-imported module it can never import."""
    (tmp_path / "slow.py").write_text(SLOW_MODULE)
    (tmp_path / "fork_during_import.py").write_text(FORK_DURING_IMPORT)
    run = subprocess.run([sys.executable, "fork_during_import.py"], capture_output=True, text=True, timeout=50,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0"  # not -14: the child's import did not hang until its alarm
