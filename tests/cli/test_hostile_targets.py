"""Issue 10 finding 2: every verb that writes — backup, restore, init, crl publish, get --out — run as the real
``certsrv`` against a read-only mount, a full mount and a directory of another uid (mode 0700) exits 1 with ONE
line ``certsrv: SUBJECT: 0x8007xxxx NAME: ...`` on stderr, no traceback, and leaves nothing half-made behind.

Root makes the mounts and the second uid; the foreign-directory cases run the CLI (and the service it talks to)
as that uid, since root ignores permission bits.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.errors import E_ACCESSDENIED, ERROR_DISK_FULL, ERROR_WRITE_PROTECT, hresult_name
from pycertsrv.home import Home
from support import (
    ONE_LINE,
    Mounts,
    Service,
    User,
    certsrv,
    copy_tree_into,
    leftovers,
    make_csr,
    mounts,
    system_user,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and a second uid need root (CI runs as root)")

_CASES = itertools.count()
VERBS = ["backup", "restore", "init", "crl publish", "get --out"]
TARGETS = {"read-only": ERROR_WRITE_PROTECT, "full": ERROR_DISK_FULL, "foreign": E_ACCESSDENIED}


@dataclass
class World:
    """Two CA homes with a running service each (one root's, one the second uid's), a backup set of each, and
    a password file; shared by the cases of this module."""

    tmp: Path
    user: User
    root_home: Home
    user_home: Home
    root_svc: Service
    user_svc: Service
    root_set: Path
    user_set: Path
    password: Path

    def home(self, foreign: bool) -> Home:
        return self.user_home if foreign else self.root_home

    def set(self, foreign: bool) -> Path:
        return self.user_set if foreign else self.root_set


def _issue(home: Home, n: int) -> None:
    with Authority.open(home.root) as a:
        for i in range(n):
            a.submit(make_csr(f"h{i}.example.com"), requester="test")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # Not under pytest's 0700 temp root: the second uid must reach its own home by ordinary permissions.
    tmp = Path(tempfile.mkdtemp(prefix="certsrv-hostile-"))
    os.chmod(tmp, 0o755)
    try:
        yield from _world(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _world(tmp: Path) -> Iterator[World]:
    password = tmp / "pw"
    password.write_text("hostile-test-password\n")
    os.chmod(password, 0o644)
    with system_user() as user:
        homes = []
        for name in ("root", "user"):
            Authority.init(tmp / name, f"Hostile {name} CA").close()
            h = Home.at(tmp / name)
            _issue(h, 3)
            homes.append(h)
        user.chown(homes[1].root)
        svcs: list[Service] = []
        try:
            svcs.append(Service(homes[0]).start())
            svcs.append(Service(homes[1], user=user).start())
            sets = []
            for h, who in ((homes[0], None), (homes[1], user)):
                d = tmp / f"set-{h.root.name}"
                if who is not None:
                    d.mkdir()
                    who.chown(d)
                r = certsrv("backup", str(d), "--home", str(h.root), "--password-file", str(password), "--quiet",
                            "--keep-log", user=who)
                assert r.returncode == 0, r.stderr
                sets.append(d)
            yield World(tmp, user, homes[0], homes[1], svcs[0], svcs[1], sets[0], sets[1], password)
        finally:
            for s in svcs:
                s.ensure_stopped()


def _target(m: Mounts, base: Path, kind: str, user: User) -> Path:
    """An empty directory of the given hostile kind (the verb writes below it)."""
    if kind == "foreign":
        d = base / "foreign"
        d.mkdir()
        os.chown(d, 0, 0)
        os.chmod(d, 0o700)  # root's, and the CLI runs as the second uid
        return d
    d = m.tmpfs(base / kind, "2m")
    if kind == "read-only":
        m.read_only(d)
    else:
        m.fill(d)
    return d


def _hostile_publish(m: Mounts, home: Home, kind: str, user: User) -> None:
    """Make ``home``'s publish directory (where crl publish writes) the hostile target, keeping its files."""
    pub = home.publish_dir
    keep = home.root.with_name(home.root.name + "-publish.orig")  # outside the home: not a file of the CA
    shutil.copytree(pub, keep)
    if kind == "foreign":
        user.chown(home.root)
        os.chown(pub, 0, 0)
        os.chmod(pub, 0o700)
        return
    shutil.rmtree(pub)
    m.tmpfs(pub, "1m", mode="0755")
    copy_tree_into(keep, pub)
    if kind == "read-only":
        m.read_only(pub)
    else:
        m.fill(pub)


@pytest.mark.parametrize("kind", list(TARGETS))
@pytest.mark.parametrize("verb", VERBS)
def test_verb_on_hostile_target(world: World, verb: str, kind: str) -> None:
    tmp_path = world.tmp / f"case-{next(_CASES)}"
    tmp_path.mkdir(mode=0o755)
    foreign = kind == "foreign"
    who = world.user if foreign else None
    home = world.home(foreign)
    pw = str(world.password)
    with mounts() as m:
        if verb == "crl publish":
            direct = Home.at(tmp_path / "direct")  # no service: the CLI itself writes HOME/publish
            Authority.init(direct.root, "Direct CA").close()
            _hostile_publish(m, direct, kind, world.user)
            before = {p.name: p.read_bytes() for p in direct.publish_dir.iterdir() if p.name != "filler"}
            r = certsrv("crl", "publish", "--home", str(direct.root), user=who)
            after = {p.name: p.read_bytes() for p in direct.publish_dir.iterdir() if p.name != "filler"}
            assert after == before  # nothing half-written, nothing replaced
            if not foreign:  # the CA itself is intact (and the CRL row is stored); root may not open uid's home
                with Authority.open(direct.root) as a:
                    assert a.latest_crl() is not None
        else:
            target = _target(m, tmp_path, kind, world.user)
            if verb == "backup":
                dest = target / "set"
                r = certsrv("backup", str(dest), "--home", str(home.root), "--password-file", pw, "--quiet",
                            "--keep-log", user=who)
                assert not dest.exists()  # no empty or partial set left
            elif verb == "restore":
                dest = target / "home"
                r = certsrv("restore", str(world.set(foreign)), "--home", str(dest), "--password-file", pw,
                            user=who)
                assert not dest.exists()  # nothing of the failed restore is left
            elif verb == "init":
                dest = target / "home"
                r = certsrv("init", "--home", str(dest), "--name", "Hostile Init CA", user=who)
            else:
                dest = target / "cert.pem"
                r = certsrv("get", "1", "--home", str(home.root), "--out", str(dest), user=who)
                assert not dest.exists()  # no truncated certificate
            if kind != "read-only":
                assert leftovers(target) == []
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert ONE_LINE.match(lines[0]), lines[0]
    want = TARGETS[kind]
    assert f"0x{want:08X} {hresult_name(want)}:" in lines[0], lines[0]
    # The services are unharmed: the homes still serve.
    assert world.root_svc.proc is not None and world.root_svc.proc.poll() is None
    assert world.user_svc.proc is not None and world.user_svc.proc.poll() is None


def test_crl_publish_through_the_service_on_a_read_only_publish_dir(world: World) -> None:
    """The service writes HOME/publish itself: its file system error comes back as the same one line (the
    service maps OSError too), and the service keeps serving."""
    tmp_path = world.tmp / f"case-{next(_CASES)}"
    tmp_path.mkdir(mode=0o755)
    home = Home.at(tmp_path / "svc")
    Authority.init(home.root, "Service Publish CA").close()
    with mounts() as m:
        _hostile_publish(m, home, "read-only", world.user)
        svc = Service(home).start()
        try:
            r = certsrv("crl", "publish", "--home", str(home.root))
            assert r.returncode == 1 and "Traceback" not in r.stderr + svc.log()
            line = r.stderr.strip()
            assert ONE_LINE.match(line) and len(r.stderr.splitlines()) == 1, r.stderr
            assert f"certsrv: {home.publish_dir}: 0x{ERROR_WRITE_PROTECT:08X} ERROR_WRITE_PROTECT:" in line
            assert "run certsrv crl publish again" in line
            with Client(f"unix:{svc.socket}") as c:  # still serving, reads unaffected
                assert len(c.view(limit=10)) == 0
        finally:
            assert svc.stop() == 0
