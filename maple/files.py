"""Writing files so that an interruption leaves the old file or the new one, never half of one: the work dirs,
checkpoints and result folders that MAPLE's long jobs resume from are written this way; checking, before such a
job starts, that its output folder can be one; and reading the image files a table names. How a folder's data files
divide into configs and splits is `maple.dataset_layout`'s."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def changed_entries(saved: Any, current: Any, name: str = "") -> list[tuple[str, Any, Any]]:
    """`(name, saved value, current value)` for each entry that differs between a job's saved recipe and the current
    one. Nested dicts are compared key by key, named with dots (`judge_settings.image_processor.size`), so that a
    refusal to resume names the value that changed rather than printing both recipes whole."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            entry
            for key in sorted(saved.keys() | current.keys())
            for entry in changed_entries(saved.get(key), current.get(key), f"{name}.{key}" if name else key)
        ]
    return [] if saved == current else [(name, saved, current)]


def expanded_path(path: str | os.PathLike) -> Path:
    """`path` with a leading `~` or `~user` expanded as the shell and `os.path.expanduser` expand it: one that names
    no home folder (`~nosuchuser/x`) is left as written, so that a check reports it as any other missing path, where
    `Path.expanduser` raises a RuntimeError."""
    return Path(os.path.expanduser(path))


def located(path: str | None, folder: str | os.PathLike | None) -> str | None:
    """A file path read from a data table: as written, unless it is relative and names no file from the current
    folder but does from `folder` (the table's own folder), then that one. Tables of image paths are written relative
    to themselves as often as to where the job runs."""
    if not path or folder is None or os.path.isabs(path) or os.path.exists(path):  # ("": no file, not the folder)
        return path
    beside = os.path.join(folder, path)
    return beside if os.path.exists(beside) else path


def folder_problem(path: str | os.PathLike, name: str) -> str | None:
    """Why `path` can be no folder, as one sentence that begins with `name` (the flag or argument that gave it); None
    when it is a folder or can be made one. A file there, or above it, would otherwise stop a long job with a
    NotADirectoryError or FileExistsError traceback when it first writes. An empty path (an unset variable) is none
    either: read as the current folder, it would put the job's files there. It is refused as text only: `Path("")`
    is `Path(".")`, which names the current folder on purpose (`maple eval --out .`) as often, so an option parsed as
    a path refuses an empty value as it parses it (`maple.cli.output_folder`)."""
    if not os.fspath(path):
        return f"{name} is empty; expected a folder (created if missing)"
    path = expanded_path(path)
    # the first that exists, or is a link (a broken one does not exist, and mkdir then raises FileExistsError)
    existing = next(folder for folder in (path, *path.absolute().parents) if folder.exists() or folder.is_symlink())
    if existing.is_dir():
        return None
    kind = "a broken symbolic link" if existing.is_symlink() and not existing.exists() else "a file"
    where = f"is {kind}" if existing is path else f"is inside {existing}, {kind}"
    return f"{name} {path} {where}; expected a folder (created if missing)"


def stored_images(rows: Any, column: str) -> Iterator[tuple[bytes | None, str | None]]:
    """(bytes, path) of each image of an image column of the `datasets.Dataset` `rows` as the column stores it, read from
    its arrow buffers: no image is decoded, and a path without bytes names the file the image is read from."""
    for chunk in rows.with_format("arrow")[:][column].chunks:  # struct<bytes, path>; zero-copy
        data, paths = chunk.field("bytes"), chunk.field("path")
        for row in range(len(chunk)):
            yield data[row].as_py(), paths[row].as_py()


def holds_relative_image_paths(rows: Any, column: str) -> bool:
    """Whether the image column `column` of the `datasets.Dataset` `rows` (images, or lists of images, as the column
    stores them: decoded or not; or file paths as text) holds an image by a relative file path (without bytes), which
    `located` or `located_image` would look for beside the table. Read from its arrow buffers; an image folder's paths
    are absolute."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for chunk in rows.with_format("arrow")[:][column].chunks:  # struct<bytes, path>, or a list of them; zero-copy
        while pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type) or pa.types.is_fixed_size_list(chunk.type):
            chunk = chunk.flatten()
        if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):  # paths as text
            paths = pc.drop_null(chunk)
        else:
            data, paths = chunk.flatten()  # a null image's fields are null
            paths = pc.filter(paths, pc.and_(data.is_null(), paths.is_valid()))
        if any(not os.path.isabs(path) for path in paths.to_pylist()):
            return True
    return False


def located_image(value: dict[str, Any] | None, folder: str | os.PathLike) -> dict[str, Any] | None:
    """An image as `datasets` stores it undecoded ({"bytes", "path"}), kept as a file path (no bytes): its path
    `located` from `folder` and made absolute where it names a file; else as written, for an input check to name it.
    An image with bytes is left as it is."""
    if value is None or value["bytes"] is not None or value["path"] is None:
        return value
    path = located(value["path"], folder)
    return {"bytes": None, "path": os.path.abspath(path) if os.path.exists(path) else path}


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write` a temporary file beside `path` (named `<name>.tmp-<host>-<pid>-<thread>`: machines, processes and
    threads that write the same file each have their own), sync it to disk and rename it to `path`: the file is whole
    or absent, even after a crash of the machine (a rename alone can reach the disk before the data). A `write` that
    raises leaves no temporary file behind; one of a killed writer is left, and `remove_abandoned_temporaries`, run on
    its machine, removes it."""
    path = Path(path)
    with _locked_temporary_beside(path) as temporary:
        try:
            _write_synced(temporary, write)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def _write_synced(temporary: Path, write: Callable[[Path], None]) -> None:
    """`write` the file `temporary` and sync it to disk, before it is renamed or linked into place."""
    write(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())


def _temporary_beside(path: Path) -> Path:
    """A temporary file name beside `path` for this machine, process and thread (`<name>.tmp-<host>-<pid>-<thread>`),
    the name cut so that the suffix keeps it within the 255 bytes a file name may have."""
    suffix = f".tmp-{_host_label()}-{os.getpid()}-{threading.get_ident()}"
    name = path.name.encode()[: 255 - len(suffix)].decode(errors="ignore")
    return path.with_name(name + suffix)


def _host_label() -> str:
    """This machine's host name as temporary file names hold it: characters other than letters, digits, `.`, `_` and
    `-` replaced by `_`, and cut to the 64 characters a Linux host name may have (the suffix stays ASCII, one byte a
    character)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "_"


@contextlib.contextmanager
def _locked_temporary_beside(path: Path) -> Iterator[Path]:
    """`_temporary_beside(path)`, created empty and locked (`flock`) while the block writes it: the lock, which the
    system releases however its holder ends, tells `remove_abandoned_temporaries` a file being written from one that a
    killed writer left. Without `flock` (Windows, where a file held open cannot be renamed, or a file system that
    refuses it) the file is written unlocked, and is never taken for abandoned."""
    temporary = _temporary_beside(path)
    if fcntl is None:
        yield temporary
        return
    while True:
        descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT, 0o666)
        if not _locked(descriptor, wait=True) or _still_named(descriptor, temporary):
            break
        # a remover took the file (left by a killed writer of this host, pid and thread) between the open and the lock
        os.close(descriptor)
    try:
        yield temporary
    finally:
        os.close(descriptor)  # (after the rename: the file is the target's then)


def _locked(descriptor: int, *, wait: bool) -> bool:
    """Whether an exclusive `flock` on the open file `descriptor` is taken (waiting for it if `wait`); False where it
    is held by another, or where the file system has no such locks."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:  # held by another (BlockingIOError), or no locks on this file system
        return False
    return True


def _still_named(descriptor: int, path: Path) -> bool:
    """Whether `path` still names the file open as `descriptor`."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def remove_abandoned_temporaries(folder: str | os.PathLike, pattern: str = "*", *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files that writers on this machine killed mid-write (`atomic_write`, `created_once`) left
    in `folder` (and in every folder below it if `recursive`) for the files that `pattern` (a glob) names, and return
    their paths; a resumed job calls it, as they are never renamed into place, and a checkpoint's may be large. One
    that a live process is writing holds a lock (`flock`) and is kept; so is every one where the file system has no
    locks. Only this machine's are tested (their name holds its host name): its kernel sees the locks of its own
    processes on any file system, but a mount whose locks are local to each machine (NFS mounted with `local_lock`,
    Lustre's `localflock`, FUSE mounts) hides another machine's, whose writers would look gone and lose their file. A
    job spread over machines removes theirs where it knows that no process writes them any more (the builder's, once
    every shard exists)."""
    removed = []
    if fcntl is None:  # no file is locked: none can be told abandoned
        return removed
    host = _host_label()  # (letters, digits, ".", "_", "-": nothing a glob reads as a wildcard)
    ours = re.compile(rf"\.tmp-{re.escape(host)}-\d+-\d+$")
    for temporary in Path(folder).glob(f"{'**/' if recursive else ''}{pattern}.tmp-{host}-*"):
        if not ours.search(temporary.name):
            continue
        try:
            descriptor = os.open(temporary, os.O_RDWR)  # (write access: NFS locks a file only open for writing)
        except OSError:  # gone meanwhile (its writer renamed it), or not ours to open
            continue
        try:
            if _locked(descriptor, wait=False) and _still_named(descriptor, temporary):
                temporary.unlink(missing_ok=True)
                removed.append(temporary)
        finally:
            os.close(descriptor)
    return removed


# What `os.link` raises on a filesystem without hard links
NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)


def created_once(path: str | os.PathLike, text: str) -> str:
    """The text of file `path`, written as `text` (UTF-8) if there is none: whole, and by one writer however many
    processes try at once (a hard link of a whole temporary file to `path` fails where one is there: the first wins,
    and every caller gets its text). On a filesystem without hard links (SMB, FAT, some FUSE mounts) the file is
    renamed into place instead, whole, but there the last of writers racing wins."""
    path = Path(path)
    if not path.exists():
        with _locked_temporary_beside(path) as temporary:
            try:
                _write_synced(temporary, lambda file: file.write_text(text, encoding="utf-8"))
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    pass
                except OSError as error:
                    if error.errno not in NO_HARD_LINKS:
                        raise
                    if not path.exists():
                        os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
    return path.read_text(encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """`payload` into `path` through `atomic_write`."""
    atomic_write(path, lambda temporary: temporary.write_bytes(payload))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` (UTF-8) into `path` through `atomic_write`."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, value: Any, **dumps_kwargs: Any) -> None:
    """`value` as JSON (indented by 2 unless `dumps_kwargs` say otherwise) into `path` through `atomic_write`."""
    atomic_write_text(path, json.dumps(value, **{"indent": 2, **dumps_kwargs}))
