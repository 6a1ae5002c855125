"""A queuectl home belongs to the user who runs it, and only to them.

Whoever can write a home's conf/supervisord.conf runs commands as the queue's user
(its `command=` lines), and whoever can plant a symlink where queuectl or supervisord
writes a log makes them write elsewhere with the queue's rights.  So on every start
(every command, worker, monitor and supervisord start), before anything in the home
is read or written:

* the home must belong to this user (or root) and no one else may write it: a home
  of ours that others may write loses their write bits; a shared folder (sticky, like
  /tmp) or one of another owner is refused;
* conf/, db/, logs/ and run/ must be real folders of this user: made 0700 if others
  have any access; a symlink or one of another owner is refused;
* conf/supervisord.conf must be a regular file of this user: made 0600 if wider (with
  a warning: anyone may have edited it while it was open); another owner's is refused;
* in a folder that was open to others, or in logs/ and run/ before a process that
  writes there starts, every file must be a regular file of this user (made 0600):
  a symlink or another owner's file is refused, since it was planted.

A refusal is an InvalidInput naming the path (exit 2).  Files queuectl creates itself
are opened with O_NOFOLLOW and mode 0600 (open_private), whatever the umask.

Cheap to import (os, stat and errors only): the enqueue fast path calls secure().
"""

from __future__ import annotations

import os
import stat
import sys

from queuectl.errors import InvalidInput

#: The home's folders queuectl uses: every one owner-only.
FOLDERS = ("conf", "db", "logs", "run")
#: The folders whose files supervisord, workers and the monitor write.
WRITTEN = ("logs", "run")
CONF = "supervisord.conf"


def secure(home: str, *, writers: bool = False) -> None:
    """Check and tighten `home` as the module says; `writers`: also check every file
    in logs/ and run/ (before a process that writes there starts)."""
    uid = os.geteuid()
    _check_home(home, uid)
    for name in FOLDERS:
        folder = os.path.join(home, name)
        opened = _secure_folder(folder, uid)
        if opened is None:
            continue
        if opened or (writers and name in WRITTEN):
            _secure_files(folder, uid)
        elif name == "conf":
            _secure_file(os.path.join(folder, CONF), uid, missing_ok=True)


def _check_home(home: str, uid: int) -> None:
    try:
        st = os.stat(home)
    except OSError:
        return  # the caller says the home does not exist, in its own words
    if not stat.S_ISDIR(st.st_mode):
        return
    if st.st_uid not in (uid, 0):
        raise InvalidInput(f"queuectl home {home} is owned by another user (uid {st.st_uid}): {_YOURS}")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o022:
        return
    if st.st_uid != uid or mode & stat.S_ISVTX:
        raise InvalidInput(
            f"queuectl home {home} is writable by other users: use a folder only you can write"
        )
    _chmod(home, mode & ~0o022, "queuectl home")


def _secure_folder(folder: str, uid: int) -> bool | None:
    """None: no such folder; else whether it was open to others (now 0700)."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"cannot check {folder}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        # Its target could be anywhere (planted while the home was open): queuectl
        # would make it owner-only and write there.  A database elsewhere: --db.
        raise InvalidInput(f"{folder} is a symbolic link: queuectl keeps its files in real folders")
    if not stat.S_ISDIR(st.st_mode):
        return None  # in the way of a folder: the command that needs it says so
    if st.st_uid != uid:
        raise InvalidInput(f"{folder} is owned by another user (uid {st.st_uid}): {_YOURS}")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False  # owner-only already (read-only too: not ours to widen)
    _chmod(folder, 0o700, "folder")
    return True


def _secure_files(folder: str, uid: int) -> None:
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise InvalidInput(f"cannot read {folder}: {exc.strerror}") from None
    for name in names:
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # removed meanwhile (a rotated log)
        if stat.S_ISDIR(st.st_mode):
            _secure_folder(path, uid)
        elif stat.S_ISSOCK(st.st_mode) and st.st_uid == uid:
            continue  # supervisord's socket: its own mode (chmod= in the conf)
        else:
            _secure_file(path, uid)


def _secure_file(path: str, uid: int, *, missing_ok: bool = False) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInput(f"{path} is a symbolic link (planted?): queuectl writes only its own files")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{path} is not a regular file")
    if st.st_uid != uid:
        raise InvalidInput(f"{path} is owned by another user (uid {st.st_uid}): {_YOURS}")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    _chmod(path, 0o600, "file")
    if mode & 0o022 and os.path.basename(path) == CONF:
        sys.stderr.write(
            f"queuectl: warning: {path} was writable by other users (made owner-only now):"
            " check that it holds only what you put there\n"
        )
        sys.stderr.flush()


def _chmod(path: str, mode: int, what: str) -> None:
    """chmod through a descriptor opened without following a symlink: a file swapped
    for a link after it was checked is refused, never the link's target changed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInput(
            f"{what} {path} is open to other users and cannot be made owner-only: {exc.strerror}"
        ) from None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise InvalidInput(f"{path} is owned by another user: {_YOURS}")
        os.fchmod(fd, mode)
    except OSError as exc:
        raise InvalidInput(
            f"{what} {path} is open to other users and cannot be made owner-only: {exc.strerror}"
        ) from None
    finally:
        os.close(fd)


_YOURS = "queuectl runs only from a home whose folders and files are yours"


def identity(home: str) -> str:
    """The name a home is known by in the workers table (with the host): its real
    path, so two spellings of one folder are one home."""
    return os.path.realpath(home)


def open_private(path: str, flags: int) -> int:
    """os.open for a file queuectl writes in its home: owner-only (0600) whatever the
    umask, never through a symlink planted in its place (InvalidInput naming it)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise InvalidInput(
                f"{path} is a symbolic link (planted?): queuectl writes only its own files"
            ) from None
        raise
