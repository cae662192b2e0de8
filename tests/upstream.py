"""The real upstream theia collector (``theia`` 0.9.2 from PyPI), run in a process of its own.

``theia`` 0.9.2 pins ``websockets==3.3``, which does not install on current
Pythons; it runs with ``websockets==10.4`` and ``SQLAlchemy==1.3.24``. It gets
a virtual environment of its own (so its old websockets never meets ours),
built once and cached, keyed by the versions below, under
``$THEIA_UPSTREAM_CACHE`` (default ``~/.cache/theia-frames``). One shim is
needed: the collector calls ``asyncio.sleep(..., loop=...)``, whose ``loop``
keyword Python 3.10 removed; a ``sitecustomize.py`` in that environment drops it.

If the environment cannot be built, :func:`upstream_python` raises, so the
tests that need it fail loudly; ``THEIA_SKIP_UPSTREAM=1`` skips them instead
(for offline development only; CI never sets it).

    >>> UpstreamCollector.__name__
    'UpstreamCollector'
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

__all__ = ["PACKAGES", "UpstreamCollector", "UpstreamUnavailable", "upstream_python"]

PACKAGES = ("websockets==10.4", "SQLAlchemy==1.3.24", "lorem==0.1.1")
THEIA = "theia==0.9.2"

_SHIM = '''\
"""asyncio.sleep lost its loop keyword in Python 3.10; theia 0.9.2 still passes it."""
import asyncio
import functools
import os

_sleep = asyncio.sleep


@functools.wraps(_sleep)
async def _sleep_without_loop(delay, result=None, *, loop=None):
    return await _sleep(delay, result)


asyncio.sleep = _sleep_without_loop

if os.environ.get("THEIA_UPSTREAM_SQL_TIMESTAMP_FIX") == "1":
    # The SQL store reads timestamps back as text, which the serializer cannot
    # format: every /find of that store dies on its first event. Only for the
    # tests of that store's matching; the unpatched behaviour is tested too.
    from theia import model

    _serialize = model.EventSerializer.serialize

    def _serialize_float_timestamp(self, event, *args, **kwargs):
        event.timestamp = float(event.timestamp)
        return _serialize(self, event, *args, **kwargs)

    model.EventSerializer.serialize = _serialize_float_timestamp
'''


class UpstreamUnavailable(RuntimeError):
    """The upstream collector's environment could not be built or started."""


def _cache_root() -> Path:
    root = os.environ.get("THEIA_UPSTREAM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "theia-frames"


def _key() -> str:
    text = "\n".join((sys.version.split()[0], THEIA, *PACKAGES, _SHIM))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _python_in(env: Path) -> Path:
    return env / "bin" / "python"


def upstream_python() -> Path:
    """The Python of the upstream collector's environment, built on first use (cached).

    Built in place (a virtual environment's scripts name their own folder),
    under a lock so that concurrent runs build it once; a failed build leaves
    nothing behind.
    """
    env = _cache_root() / f"upstream-theia-0.9.2-{_key()}"
    python = _python_in(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env / "ready").exists() and python.exists():
            return python
        shutil.rmtree(env, ignore_errors=True)
        try:
            venv.create(env, with_pip=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            for args in ([*PACKAGES], ["--no-deps", THEIA]):
                done = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600)
                if done.returncode:
                    raise UpstreamUnavailable(f"pip install {' '.join(args)} failed:\n{done.stderr[-2000:]}")
            site = subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
            (Path(site) / "sitecustomize.py").write_text(_SHIM)
            (env / "ready").write_text(THEIA + "\n")
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UpstreamCollector:
    """The real upstream collector on a free loopback port, with its file store or its SQL store.

    ``store="file"`` runs ``collect -d DATA_DIR``; ``store="sql"`` runs
    ``collect --rdbs-store -U sqlite:///DATA_DIR/events.db``. Use it as a context
    manager; ``url`` is its address, ``data_dir`` its folder, ``log`` what it printed.

    Unpatched, the SQL store's ``/find`` answers ``ok`` and then dies on the
    first matching event (it reads timestamps back as text); ``sql_fix=True``
    (the default) converts them back to numbers in its serializer so that its
    matching can be compared at all.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, store: str = "file", sql_fix: bool = True) -> None:
        if store not in ("file", "sql"):
            raise ValueError(f"store must be 'file' or 'sql', got {store!r}")
        self.store = store
        self.sql_fix = sql_fix and store == "sql"
        self.data_dir = Path(data_dir)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> UpstreamCollector:
        python = upstream_python()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            self.port = _free_port()
            args = [str(python), "-m", "theia.cli", "-H", "127.0.0.1", "-P", str(self.port), "collect"]
            if self.store == "file":
                args += ["-d", str(self.data_dir)]
            else:
                args += ["--rdbs-store", "-U", f"sqlite:///{self.data_dir / 'events.db'}"]
            with open(self._log_path, "ab") as log:
                env = {**os.environ, "THEIA_UPSTREAM_SQL_TIMESTAMP_FIX": "1" if self.sql_fix else "0"}
                env.pop("PYTHONPATH", None)
                self._proc = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir, env=env
                )
            if self._wait_listening(timeout):
                return self
            self.stop()
        raise UpstreamUnavailable(f"the upstream collector did not start:\n{self.log[-3000:]}")

    def _wait_listening(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            # its stop waits for every connection to close: do not wait for that
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> UpstreamCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
