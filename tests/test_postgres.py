"""labkit.postgres: a private PostgreSQL server on loopback, started, used, and gone without a trace."""

from __future__ import annotations

import os
import socket
import textwrap

import psycopg
import pytest
import sqlalchemy

import orphans
from labkit import db, postgres


if not postgres.available():
    if os.environ.get("CI"):
        raise RuntimeError(f"PostgreSQL cannot run here (CI is set: .ci/run installs it): {postgres.why_not()}")
    pytest.skip(postgres.why_not(), allow_module_level=True)


def _servers(folder: str) -> set[int]:
    """The pids of the postgres processes whose data lives under ``folder``."""
    return orphans.pids("postgres", folder)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_server_answers_at_its_url_in_read_committed_and_leaves_nothing():
    with postgres.Server() as server:
        assert server.url.startswith("postgresql+psycopg://labkit:") and f"@127.0.0.1:{server.port}/" in server.url
        database = db.Database(server.url)
        try:
            with database.engine.connect() as connection:
                assert connection.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
                assert connection.exec_driver_sql("SHOW listen_addresses").scalar() == "127.0.0.1"
        finally:
            database.close()
        with db.scratch(server.url) as url:  # a database of its own on the private server
            engine = sqlalchemy.create_engine(url)
            with engine.begin() as connection:
                connection.exec_driver_sql("CREATE TABLE t (x int)")
                connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            engine.dispose()
        assert len(_servers(server.folder)) == 1
    assert not _servers(server.folder)
    assert not os.path.exists(server.folder)
    assert not _listening(server.port)


def test_only_its_password_signs_in():
    with postgres.Server() as server:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=server.port, user="labkit", password="guess", dbname="postgres",
                            connect_timeout=5)


KERNEL = textwrap.dedent("""
    import threading
    from labkit import postgres
    server = postgres.Server()
    print(server.folder, flush=True)
    threading.Event().wait()
""")


def test_a_kernel_killed_with_sigkill_leaves_no_server():
    before, after = orphans.left_by_killed_kernel(KERNEL, "postgres")
    assert len(before) == 1
    assert not after, "postgres outlived its kernel"
