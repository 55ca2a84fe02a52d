"""The file-name rule of BackupOpenFile (spec §2.6, CSRA §3.1.4.1.22: the server MUST check that the name is
one it listed).

``BackupManager.open_file`` compares the name, exactly as a string, with the names this session
listed (tag removed). Anything else -- a relative name, ``..``, another absolute path, a name
still carrying its tag -- fails with ERROR_FILE_NOT_FOUND (0x80070002) before anything is
opened, so a caller learns nothing about files outside the list. A listed file is opened with
``O_NOFOLLOW`` and must be a regular file: a listed path that was replaced by a symlink or
something else fails with E_ACCESSDENIED (0x80070005). Dynamic files (published CA
certificates and CRLs) may be opened once listed by GetDynamicFileList (spec §6 item 7:
we follow the client section, CSRA §3.2.4.1.22).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import (
    E_ACCESSDENIED,
    AccessDenied,
)


def check_listed_file(fd: int, path: Path, root: Path) -> os.stat_result:
    """The descriptor ``fd`` (opened O_NOFOLLOW on ``path``) is the listed file itself, or AccessDenied.

    Side doors out of the home (issue 9, finding 5): a hard link (``publish/ca.crl`` -> ``private/ca.key``)
    passes O_NOFOLLOW, so a file with more than one link is refused; so is anything not a regular file, a
    directory on the way that is a symlink (O_NOFOLLOW checks the last component only), and a path that no
    longer names the opened file (swapped between open and check).
    """
    fn = "BackupOpenFile"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise AccessDenied(E_ACCESSDENIED, fn, f"{path.name} is not a regular file")
    if st.st_nlink != 1:
        raise AccessDenied(E_ACCESSDENIED, fn, f"{path} has {st.st_nlink} hard links: it may be another file of "
                           "the home under a listed name; remove the link and publish the file again")
    try:
        now = os.lstat(path)
    except OSError as e:
        raise AccessDenied(E_ACCESSDENIED, fn, f"{path.name} cannot be checked: {e.strerror}") from None
    inside = path.parent.is_relative_to(root)
    real_parent = os.path.join(os.path.realpath(root), path.parent.relative_to(root)) if inside else None
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or (
            real_parent is not None and os.path.realpath(path.parent) != os.path.normpath(real_parent)):
        raise AccessDenied(E_ACCESSDENIED, fn, f"{path} is not the listed file (replaced, or reached through a "
                           "symbolic link)")
    return st
