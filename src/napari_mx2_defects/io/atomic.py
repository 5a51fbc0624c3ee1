"""Atomic outputs: nothing half-written, nothing lost.

Every file the package writes goes to a temporary name in the target folder, is flushed to disk
(``fsync``) and then renamed over the target (``os.replace``, atomic on POSIX and Windows), so a
reader sees either the previous file or the complete new one.  Commands that write several files
(a twin, an analysis, a zarr dataset) write them into a staging folder and move them into place
only when all are complete (:class:`StagedOutput`); SIGINT is held back during that short move, so
an interrupted command leaves the complete previous result, the complete new one, or nothing.

``--overwrite`` only ever replaces the names a command itself writes: foreign files in an output
folder are never touched.

Temporary names carry the marker ``.mx2tmp-<pid>-``; :func:`clean_stale_temps` removes those
whose process has died (a killed or crashed run), and nothing else.

Examples
--------
A single file::

    with atomic_path("out/table.csv") as tmp:
        df.to_csv(tmp, index=False)          # out/table.csv appears only when complete

    atomic_write_text("out/settings.json", json.dumps(settings))

Several files, all or nothing::

    stage = StagedOutput("out", ["image.tif", "truth.csv"], overwrite=False)  # checks before work
    ...                                                                       # the long work
    with stage as folder:
        write_calibrated_tiff(folder / "image.tif", image, 0.1)
        truth.to_csv(folder / "truth.csv", index=False)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "TEMP_MARKER",
    "OutputLocationError",
    "StagedOutput",
    "atomic_path",
    "atomic_paths",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "clean_stale_temps",
    "defer_sigint",
    "fsync_tree",
]

#: Part of every temporary name this module makes (followed by ``<pid>-<token>``).
TEMP_MARKER = ".mx2tmp-"
_TEMP_RE = re.compile(re.escape(TEMP_MARKER) + r"(\d+)-[0-9a-f]+")


class OutputLocationError(ValueError):
    """An output location that cannot be used (the message says what to change)."""


def _temp_name(base: str, suffix: str = "") -> str:
    return f".{base}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporaries left in ``folder`` by runs that died (their process no longer exists).

    Only names carrying :data:`TEMP_MARKER` and the id of a dead process are removed; returns them.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.search(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_tree(path: str | Path) -> None:
    """Flush a file, or every file and folder under a folder, to disk."""
    path = Path(path)
    if path.is_file():
        _fsync_file(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_dir(Path(root))


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) for the duration of the block, then deliver it.

    Used around the renames that commit an output, so an interrupt never lands between them.
    Outside the main thread (where signal handlers cannot be set) the block simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:  # pragma: no cover
                raise KeyboardInterrupt


def _probe_writable(folder: Path, option: str, target: Path) -> None:
    """Create and remove a temporary file in ``folder`` (os.access does not see every refusal)."""
    probe = folder / _temp_name("probe")
    try:
        with defer_sigint():  # an interrupt between create and unlink would leave the probe behind
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                os.close(fd)
            finally:
                os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else type(exc).__name__
        where = "" if folder == target else f" in {folder}"
        raise OutputLocationError(f"{option} {target}: cannot write{where} ({reason}); choose a folder you can "
                                  f"write to") from None


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and not current.is_symlink():
        parent = current.parent
        if parent == current:
            break
        current = parent
    return current


def check_output_dir(path: str | Path, *, option: str = "--out", probe: bool = True) -> Path:
    """Check, before any work, that ``path`` can be an output folder; returns it as a Path.

    The folder must exist and be a writable directory, or be creatable (its nearest existing
    ancestor a writable directory).  Nothing is created.

    Raises
    ------
    OutputLocationError
        With a one-line message naming ``option`` and what to change.
    """
    path = Path(path).expanduser()
    if str(path) == "" or str(path) != str(path).strip("\x00"):
        raise OutputLocationError(f"{option} must name a folder")
    try:
        if path.exists():
            if not path.is_dir():
                raise OutputLocationError(f"{option} {path} is a file, not a folder; choose a folder name")
            if probe:
                _probe_writable(path, option, path)
            return path
        if path.is_symlink():
            raise OutputLocationError(f"{option} {path} is a broken symbolic link; choose another folder")
        anchor = _nearest_existing(path.absolute().parent)
        if not anchor.is_dir():
            raise OutputLocationError(f"{option} {path} cannot be created: {anchor} is a file, not a folder")
        if probe:
            _probe_writable(anchor, option, path)
    except OSError as exc:  # e.g. a name too long, a loop of links
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        raise OutputLocationError(f"{option} {path} cannot be used ({reason}); choose another folder") from None
    return path


def check_output_file(path: str | Path, *, overwrite: bool = False, option: str = "--out",
                      others: Iterable[str | Path] = ()) -> Path:
    """Check, before any work, that a file can be written at ``path`` (and at ``others`` beside it).

    Refuses a path that is a folder, one whose folder cannot be made or written, and an existing
    file unless ``overwrite``.
    """
    path = Path(path).expanduser()
    check_output_dir(path.parent if str(path.parent) else Path("."), option=option)
    for target in [path, *map(Path, others)]:
        if target.is_dir():
            raise OutputLocationError(f"{option} {target} is a folder; give a file name inside it instead")
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; choose another {option} or pass --overwrite "
                                  f"(nothing was written)")
    return path


@contextlib.contextmanager
def atomic_paths(*paths: str | Path, fsync: bool = True) -> Iterator[list[Path]]:
    """Yield temporary paths beside each of ``paths`` (same suffixes); rename them all on success.

    Write each complete file to its yielded path.  When the block ends without an exception the
    files are flushed to disk and renamed over their targets one after the other with SIGINT held
    back, so they appear together; on any exception (KeyboardInterrupt included) the temporaries
    are removed and the targets are left as they were.  Missing folders are created.
    """
    targets = [Path(p) for p in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(target))
    temps = [t.with_name(_temp_name(t.stem, t.suffix)) for t in targets]
    try:
        yield temps
        for tmp, target in zip(temps, targets):
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written to {target}")
            if fsync:
                fsync_tree(tmp)
        with defer_sigint():
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
        if fsync:
            for folder in {t.parent for t in targets}:
                _fsync_dir(folder)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it over ``path`` on success.

    Write the complete file to the yielded path (any writer that takes a file name).  When the
    block ends without an exception, the file is flushed to disk and renamed over ``path``
    atomically; on any exception (KeyboardInterrupt included) it is removed and ``path`` is left
    as it was.  The folder is created if missing.
    """
    with atomic_paths(path, fsync=fsync) as (tmp,):
        yield tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


class StagedOutput:
    """Several output files (or folders) written together: all appear at once, or none.

    Constructing it checks the output folder and refuses existing outputs without ``overwrite``
    (call it before the long work).  Entering yields an empty staging folder; write every output
    there under its final name.  On a clean exit the entries are flushed to disk and moved into
    ``out_dir`` with SIGINT held back; on an exception the staging folder is removed and
    ``out_dir`` is left as it was.

    If ``out_dir`` does not exist yet it is staged beside it and appears with a single rename.
    Otherwise each staged entry replaces only the entry of the same name, and with ``overwrite``
    the command's other names (``names`` and ``replaces``, e.g. metadata of an older format) left
    from an earlier result are removed; nothing else in ``out_dir`` is touched.

    Parameters
    ----------
    out_dir : str or Path
        The output folder.
    names : iterable of str
        The names the command writes (checked for existence before work).
    overwrite : bool
        Replace those names if they exist.
    option : str
        The option that named the folder, for messages.
    replaces : iterable of str
        Further names of the command's own making that a new result removes (only with overwrite).
    """

    def __init__(self, out_dir: str | Path, names: Iterable[str], *, overwrite: bool = False,
                 option: str = "--out", replaces: Iterable[str] = ()) -> None:
        self.out = check_output_dir(out_dir, option=option)
        self.names = list(names)
        self.replaces = [n for n in replaces if n not in self.names]
        self.overwrite = overwrite
        self.option = option
        self.staging: Path | None = None
        self.check()

    def existing(self) -> list[str]:
        """The output names already present in the folder."""
        if not self.out.is_dir():
            return []
        return [n for n in self.names if (self.out / n).exists() or (self.out / n).is_symlink()]

    def check(self) -> None:
        """Refuse existing outputs without ``overwrite`` (FileExistsError naming them)."""
        check_output_dir(self.out, option=self.option)
        existing = self.existing()
        if existing and not self.overwrite:
            raise FileExistsError(f"{self.out} already holds {', '.join(existing)}; choose another {self.option} "
                                  f"or pass --overwrite (nothing was written)")
        clean_stale_temps(self.out if self.out.is_dir() else _nearest_existing(self.out.absolute()))

    def __enter__(self) -> Path:
        self.check()
        if self.out.is_dir():
            self.staging = self.out / _temp_name("stage")
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.staging = self.out.parent / _temp_name(self.out.name)
        try:  # an interrupt between making the folder and entering the block would leave it behind
            self.staging.mkdir()
            staging = self.staging
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
            raise
        return staging

    def __exit__(self, exc_type, exc, tb) -> None:
        staging, self.staging = self.staging, None
        if staging is None:
            return
        if exc_type is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        try:
            self.commit(staging)
        finally:
            if staging.exists():  # gone when the whole folder was renamed into place
                shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path) -> list[Path]:
        """Move the staged entries into place (SIGINT held back while renaming)."""
        fsync_tree(staging)
        entries = sorted(p.name for p in staging.iterdir())
        with defer_sigint():
            if not self.out.exists():
                os.rename(staging, self.out)  # the whole folder appears at once
                _fsync_dir(self.out.parent)
                return [self.out / n for n in entries]
            self.check()  # something may have appeared meanwhile
            trash = self.out / _temp_name("old")
            trash.mkdir()
            try:
                for name in [*self.names, *self.replaces]:  # the rest of an older result of this command
                    if name not in entries and self.overwrite and (self.out / name).exists():
                        os.rename(self.out / name, trash / name)
                for name in entries:
                    src, dst = staging / name, self.out / name
                    if dst.is_dir() and not dst.is_symlink():
                        os.rename(dst, trash / name)  # os.replace cannot replace a non-empty folder
                    elif src.is_dir() and (dst.exists() or dst.is_symlink()):
                        os.rename(dst, trash / name)
                    os.replace(src, dst)
                _fsync_dir(self.out)
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        return [self.out / n for n in entries]
