"""A throwaway PostgreSQL cluster for the tests: a temporary folder, a free port, no root, no apt.

The server binaries come from the ``pgserver`` wheel (the ``dev`` extra ships PostgreSQL 16 in it),
or from ``LAPSD_TEST_PG_BIN`` (a folder holding ``initdb`` and ``pg_ctl``). PostgreSQL refuses to
run as root, so under root the cluster belongs to ``nobody`` and every server command runs as that
user; the wheel's binaries are then copied into the cluster's folder first (with the libraries
their run path names, ``pgserver.libs`` beside the package), since the checkout may lie under a
folder only root can enter. The cluster listens on 127.0.0.1 only, with
trust authentication, and is stopped and deleted when the context ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "lapsd"
DATABASE = "lapsd_test"


def binaries() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``, or None when neither source has them."""
    if env := os.environ.get("LAPSD_TEST_PG_BIN"):
        return Path(env)
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return folder if (folder / "pg_ctl").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def cluster(bin_dir: Path) -> Iterator[str]:
    """Start a cluster; yield its URL (``postgresql://lapsd@127.0.0.1:PORT/lapsd_test``)."""
    root = Path(tempfile.mkdtemp(prefix="lapsd-pg-"))
    as_root = os.geteuid() == 0
    run_as: dict = {}
    try:
        if as_root:
            nobody = pwd.getpwnam("nobody")
            package = bin_dir.parents[1]
            if package.name == "pgserver":
                shutil.copytree(package, root / "pg" / "pgserver", symlinks=True)
                libs = package.with_name("pgserver.libs")
                if libs.is_dir():
                    shutil.copytree(libs, root / "pg" / "pgserver.libs", symlinks=True)
                bin_dir = root / "pg" / "pgserver" / "pginstall" / "bin"
            os.chmod(root, 0o755)
            for path in [root, *root.rglob("*")]:
                os.lchown(path, nobody.pw_uid, nobody.pw_gid)
            run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        data, port = root / "data", _free_port()

        def pg(*args: str) -> None:
            subprocess.run([str(bin_dir / args[0]), *args[1:]], check=True, cwd=root,
                           capture_output=True, env={"PATH": os.environ.get("PATH", ""),
                                                     "LC_ALL": "C"}, **run_as)

        pg("initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        pg("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
           f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE)
            yield f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
