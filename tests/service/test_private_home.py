"""Issue 9: a private home (finding 3), socket_group (finding 7), the non-owner's one line, and OpenFile's
hard-link side door (finding 5a), with real second uids made here (useradd) and a real service.

The homes live under a 0755 directory in /tmp, so the second users can reach them as far as the home's own
modes allow: every refusal below is the home's doing, not pytest's private tmp directory's. Each user acts
in a forked child that has setgroups/setgid/setuid to it (the interpreter itself may sit in a directory the
user cannot read, so nothing is exec'ed as them except the real ``sqlite3`` tool).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pycertsrv.cli
import pycertsrv.service.app
import pycertsrv.service.server  # (imported before forking: the child may not read the stdlib's dir)
import support
from pycertsrv import config as config_mod
from pycertsrv.client import Client
from pycertsrv.client.backup import BackupSession
from pycertsrv.errors import E_ACCESSDENIED, CertSrvError
from pycertsrv.home import Home
from pycertsrv.spec import FULL
from support import Service, User, as_user, make_csr, make_home, system_user

from .helpers import db_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="needs root to make users (CI runs as root)")
SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"
PW = "private home pw"


@dataclass
class Users:
    group: str
    gid: int
    member: User  # in the socket group, granted Enrollee
    outsider: User  # in no group of ours


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    """A throwaway group and two system users (removed at teardown)."""
    tag = secrets.token_hex(3)
    group = f"cstg{tag}"
    subprocess.run(["groupadd", "--system", group], check=True)
    try:
        import grp

        with system_user(f"cstm{tag}", groups=[group], user_group=True) as member, \
                system_user(f"csto{tag}", user_group=True) as outsider:
            yield Users(group, grp.getgrnam(group).gr_gid, member, outsider)
    finally:
        subprocess.run(["groupdel", group], check=False)


def try_read(paths: list[Path]) -> Callable[[], dict[str, Any]]:
    """Open and read a byte of each path (list each directory): ``"ok"`` or the errno's name."""
    def work() -> dict[str, Any]:
        import errno

        out: dict[str, Any] = {}
        for p in paths:
            try:
                if p.is_dir():
                    os.listdir(p)
                else:
                    with open(p, "rb") as f:
                        f.read(1)
                out[str(p)] = "ok"
            except OSError as e:
                out[str(p)] = errno.errorcode.get(e.errno or 0, str(e.errno))
        return out

    return work


def sqlite_as(u: User, db: Path) -> subprocess.CompletedProcess[str]:
    """The real sqlite3 tool, run as ``u``, reading the CA database read-only (the issue's attack)."""
    return subprocess.run([SQLITE3, f"file:{db}?mode=ro", "SELECT COUNT(*) FROM request"], user=u.uid,
                          group=u.gid, extra_groups=u.groups, capture_output=True, text=True, timeout=60)


def certsrv(*args: str) -> subprocess.CompletedProcess[str]:
    return support.certsrv(*args, check=True, timeout=180)


def walk(root: Path) -> list[Path]:
    """The home and everything in it but the running service's socket (its mode is checked on its own)."""
    every = [root, *sorted(Path(d) / n for d, ds, fs in os.walk(root) for n in ds + fs)]
    return [p for p in every if not stat.S_ISSOCK(p.lstat().st_mode)]


def assert_private_modes(root: Path, gid: int) -> None:
    """0700/0600 (closed log generations 0400) everywhere but publish/ (0755/0644); the root 0700, or 0710
    with the socket group."""
    for p in walk(root):
        st = p.lstat()
        mode, rel = stat.S_IMODE(st.st_mode), p.relative_to(root)
        assert not stat.S_ISLNK(st.st_mode), p
        if p == root:
            assert (mode, st.st_gid) == (0o710, gid) or mode == 0o700, f"{p} {mode:o}"
        elif rel.parts[0] == "publish":
            assert mode == (0o755 if p.is_dir() else 0o644), f"{p} {mode:o}"
        elif p.is_dir():
            assert mode == 0o700, f"{p} {mode:o}"
        else:
            assert mode in (0o600, 0o400), f"{p} {mode:o}"


def assert_unreadable_by_others(root: Path, us: Users) -> None:
    files = [p for p in walk(root) if p != root]
    assert any(p.name.endswith(".db") for p in files) and any(p.suffix == ".log" for p in files)
    for u in (us.member, us.outsider):
        got = as_user(u, try_read(files))
        readable = sorted(p for p, res in got.items() if res == "ok")
        publish = root / "publish"
        if u is us.member and stat.S_IMODE(root.stat().st_mode) == 0o710:
            # The group may traverse the home (0710) and read publish/ alone: this read succeeding shows the
            # probe can succeed, so the refusals next to it are the modes' doing.
            assert readable == sorted(str(p) for p in files if p.is_relative_to(publish)), readable
            assert str(publish / "ca.crt") in readable
        else:
            assert readable == [], readable
        for p, res in got.items():
            if res != "ok":
                assert res == "EACCES", (p, res)
        db = next(p for p in files if p.suffix == ".db" and p.parent.name == "db")
        out = sqlite_as(u, db)
        assert out.returncode != 0 and "unable to open" in out.stderr.lower(), (u.name, out.stdout, out.stderr)
    # Positive control for the sqlite3 probe itself: the owner reads the same database.
    own = subprocess.run([SQLITE3, f"file:{next(root.glob('db/*.db'))}?mode=ro", "SELECT COUNT(*) FROM request"],
                         capture_output=True, text=True, timeout=60)
    assert own.returncode == 0 and int(own.stdout) > 0, own.stderr


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own tmp directories are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="cph", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_home_private_after_init_serve_backup_restore(base: Path, users: Users) -> None:
    """Finding 3 and 7: no file of the home or of a restored home is readable by another uid (publish/
    excepted); the group member reaches the socket and acts per its grant, the outsider cannot connect."""
    old_umask = os.umask(0)  # the modes must not depend on the caller's umask
    try:
        home = make_home(base / "ca", pending=True, roles=[(f"uid:{users.member.uid}", ["Enrollee"])],
                         socket_group=users.group)
    finally:
        os.umask(old_umask)
    assert_private_modes(home.root, users.gid)  # as init made it (under umask 0)
    svc = Service(home).start()
    try:
        with svc.client() as c:
            for i in range(3):
                c.issue(int(c.submit(make_csr(f"h{i}.example.com"))["request_id"]))
            c.publish_crl()
            before = db_state(c, home)
        sock = svc.socket
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660 and sock.stat().st_gid == users.gid

        def member_work() -> dict[str, Any]:
            with Client(f"unix:{sock}") as c:
                out: dict[str, Any] = {"roles": c.status()["caller"]["roles"]}
                out["submit"] = c.submit(make_csr("member.example.com"))
                try:
                    c.issue(int(out["submit"]["request_id"]))
                    out["issue"] = "allowed"
                except CertSrvError as e:
                    out["issue"] = e.hresult
            return out

        got = as_user(users.member, member_work)
        assert got["roles"] == ["Enrollee"] and got["issue"] == E_ACCESSDENIED
        assert got["submit"]["requester"] == f"uid:{users.member.uid}"

        def outsider_work() -> dict[str, Any]:
            try:
                with Client(f"unix:{sock}") as c:
                    c.submit(make_csr("outsider.example.com"))
                return {"connected": True}
            except CertSrvError as e:
                return {"connected": False, "hresult": e.hresult, "error": str(e)}

        got = as_user(users.outsider, outsider_work)
        assert got["connected"] is False and got["hresult"] == E_ACCESSDENIED, got
        assert "permission denied on the socket" in got["error"], got
        with svc.client() as c:
            after = db_state(c, home)
            rows = c.view(limit=100)
        assert after[1] == before[1]
        assert [r for r in rows if r["request_id"] not in {x["request_id"] for x in json.loads(before[0])}] == [
            r for r in rows if r["requester"] == f"uid:{users.member.uid}"]  # only the member's request is new
        pwfile = base / "pw"
        pwfile.write_text(PW + "\n")
        certsrv("backup", str(base / "set"), "--home", str(home.root), "--password-file", str(pwfile), "--quiet")
        assert_private_modes(home.root, users.gid)
        assert_unreadable_by_others(home.root, users)
    finally:
        svc.stop()
    assert "tightened" not in svc.log()  # nothing was created wider than the private modes
    restored = Home.at(base / "restored")
    certsrv("restore", str(base / "set"), "--home", str(restored.root), "--password-file", str(pwfile))
    assert_private_modes(restored.root, users.gid)  # as restore left it, before any start
    assert_unreadable_by_others(restored.root, users)
    rsvc = Service(restored).start()  # completes the restore (recovery)
    try:
        with rsvc.client() as c:
            assert len(c.view(limit=100)) == len(rows)
    finally:
        rsvc.stop()
    assert "tightened" not in rsvc.log()
    assert_private_modes(restored.root, users.gid)
    assert_unreadable_by_others(restored.root, users)


def test_default_socket_is_owner_only_and_old_homes_are_tightened(base: Path, users: Users) -> None:
    """Without socket_group the socket is 0600 in a 0700 home; a home left world-readable (as before issue 9)
    is tightened when opened, and says so."""
    home = make_home(base / "ca", roles=[(f"uid:{users.member.uid}", ["Enrollee"])])
    for p in walk(home.root):  # what an old pycertsrv left: 0755 directories, 0644/0444 files
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert as_user(users.outsider, try_read([home.root / "certsrv.toml"]))[str(home.root / "certsrv.toml")] == "ok"
    svc = Service(home).start()
    try:
        assert stat.S_IMODE(svc.socket.stat().st_mode) == 0o600
        assert "tightened" in svc.log()
        sock = svc.socket

        def connect() -> dict[str, Any]:
            try:
                with Client(f"unix:{sock}") as c:
                    return {"roles": c.status()["caller"]["roles"]}
            except CertSrvError as e:
                return {"hresult": e.hresult, "exists": os.path.exists(sock)}

        # The uid grant alone does not reach an owner-only socket: socket_group is what opens it.
        assert as_user(users.member, connect) == {"hresult": E_ACCESSDENIED, "exists": False}
    finally:
        svc.stop()
    assert_private_modes(home.root, -1)
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o700


def test_non_owner_verb_gets_one_line(base: Path, users: Users) -> None:
    """A user who does not own the home runs a verb on it: one line naming the owner, E_ACCESSDENIED."""
    home = make_home(base / "ca")
    for member in (False, True):
        if member:  # a socket_group member can traverse the home, yet still does not own it
            cfg = config_mod.load(home.root)
            config_mod.save(home.root, cfg.model_copy(update={"service": cfg.service.model_copy(
                update={"socket_group": users.group})}))
            os.chown(home.root, -1, users.gid)
            home.root.chmod(0o710)
        u = users.member if member else users.outsider
        for argv in (["view", "--home", str(home.root)], ["serve", "--home", str(home.root)],
                     ["crl", "publish", "--home", str(home.root)]):
            got = as_user(u, lambda argv=argv: _run_cli(argv))
            assert got["code"] == 1, got
            lines = got["stderr"].splitlines()
            assert len(lines) == 1 and "Traceback" not in got["stderr"], got
            assert "0x80070005 E_ACCESSDENIED" in lines[0] and "root (uid 0)" in lines[0], lines
            assert "run the command as its owner" in lines[0] and "--server" in lines[0], lines


def _run_cli(argv: list[str]) -> dict[str, Any]:
    """``certsrv ARGV`` in this (forked, setuid) process: exit code, stdout, stderr; a traceback would show."""
    err, out = io.StringIO(), io.StringIO()
    code: Any = 0
    old = sys.argv
    sys.argv = ["certsrv", *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                pycertsrv.cli.main()
            except SystemExit as e:
                code = e.code
            except BaseException:
                import traceback

                err.write(traceback.format_exc())
                code = "exception"
    finally:
        sys.argv = old
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def test_open_file_refuses_a_hard_link_to_the_key(service_home: Home) -> None:
    """Finding 5a: publish/ca.crl made a hard link to private/ca.key; a real backup session lists it among
    the dynamic files, and OpenFile refuses it (E_ACCESSDENIED): no key byte is sent."""
    home = service_home
    key = (home.private_dir / "ca.key").read_bytes()
    crl = home.publish_dir / "ca.crl"
    crl.unlink(missing_ok=True)
    os.link(home.private_dir / "ca.key", crl)
    svc = Service(home).start()
    try:
        with svc.client() as c, BackupSession.prepare(c, FULL) as s:
            dyn = s.dynamic_files()
            assert str(crl) in dyn
            received = b""
            with pytest.raises(CertSrvError) as ei:
                s.open_file(str(crl))
                received += s.read()
            assert ei.value.hresult == E_ACCESSDENIED and "hard link" in ei.value.message
            with pytest.raises(CertSrvError):
                received += s.read()  # nothing is open
            # The other dynamic file still streams: the refusal is the link's, not the session's.
            other = next(n for n in dyn if n.endswith("ca.crt"))
            size = s.open_file(other)
            while chunk := s.read():
                received += chunk
            s.close_file()
            assert len(received) == size and received == (home.publish_dir / "ca.crt").read_bytes()
            assert key not in received and key[40:80] not in received
        with svc.client() as c:
            c.publish_crl()  # publishing replaces the link with a file of its own (a rename)
    finally:
        svc.stop()
    assert (home.private_dir / "ca.key").read_bytes() == key
    assert crl.stat().st_nlink == 1 and crl.read_bytes() != key


@pytest.fixture
def service_home(tmp_path: Path) -> Home:
    home = make_home(tmp_path / "ca")
    svc = Service(home).start()
    try:
        with svc.client() as c:
            c.publish_crl()
    finally:
        svc.stop()
    return home
