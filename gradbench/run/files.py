"""Run-dir files: the one place every file of a run dir or sweep dir is read and written.

A run dir may come from anyone (a downloaded sweep, a shared folder), so its files are input
to parse, never objects to trust. This module reads them as a small grammar and refuses the
rest, in one line naming the file (and the key), by construction rather than by spotting bad
spellings:

- **Reading**: the file is opened with O_NOFOLLOW | O_NONBLOCK and must be a regular file
  (fstat): a symlink, a FIFO or a device is refused, and so is a symlinked folder above it in
  the run dir (`.hydra` → elsewhere). At most the kind's size cap (CAPS) is read. JSON and YAML
  come back as plain dicts, lists and scalars no deeper than MAX_DEPTH; YAML's event stream is
  checked before any node is built, refusing anchors, aliases and tags (no alias bomb, no
  constructor). A string holding `${` is refused (UnsafeConfig) in every value a command could
  hand to OmegaConf or Hydra (summary.json, a checkpoint's or model.pt's config, the overrides
  a resume or best.overrides passes on): so nothing read back is ever interpolated or
  resolved, whatever name a resolver is given, however it is built. Hydra's own
  `.hydra/config.yaml` and `hydra.yaml`, and overrides shown as labels, may legitimately hold
  interpolations: they are read `opaque` (strings kept as text) and used as plain data only,
  never turned into an OmegaConf node. Checkpoints load with torch's weights_only unpickler
  from the opened regular file.
- **Writing**: every output goes to a fresh temporary file in its folder (O_EXCL | O_NOFOLLOW)
  renamed over its final name, so a symlink planted at that name is replaced, never written
  through; the lock is opened with O_NOFOLLOW and never truncated unless it is this dir's own
  (one link); the log file handler refuses a symlink.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import stat
import sys
from pathlib import Path
from typing import Callable

import yaml

from gradbench.errors import BadRunFile, UnsafeConfig, WriteFailed

MiB = 1 << 20
# the most bytes read of each kind of file: far above what gradbench writes (a 10⁶-step
# metrics.csv is ~150 MiB, a summary of a 1000-class run ~10 MiB), far below what hangs the tool
CAPS = {"summary.json": 64 * MiB, "overrides.yaml": MiB, "config.yaml": 8 * MiB, "hydra.yaml": 8 * MiB,
        "metrics.csv": 1024 * MiB, "bench.csv": 64 * MiB, "checkpoint.pt": 8192 * MiB, "model.pt": 8192 * MiB}
DEFAULT_CAP = 16 * MiB
MAX_DEPTH = 64  # gradbench's own files nest 6 deep
MAX_COLUMNS = 1024  # metrics.csv and bench.csv: gradbench writes a few dozen
HEADER_CAP = 64 * 1024  # a CSV header longer than this is no gradbench header
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def cap_of(path: Path) -> int:
    return CAPS.get(Path(path).name, DEFAULT_CAP)


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file (not a symlink, FIFO,
    device or folder), under a folder that is not a symlink; BadRunFile otherwise."""
    path = Path(path)
    if path.parent.name and os.path.islink(path.parent):
        raise BadRunFile(f"{path.parent} is a symbolic link: a run dir's files are read only inside it")
    try:
        fd = os.open(path, FLAGS)
    except OSError as e:
        why = "a symbolic link" if e.errno == 40 else (e.strerror or str(e)).lower()  # ELOOP: O_NOFOLLOW
        raise BadRunFile(f"{path} is unreadable ({why})") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise BadRunFile(f"{path} is not a regular file: a run dir's files are plain files")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: Path, cap: int | None = None) -> bytes:
    """The file's bytes, refused beyond `cap` (the kind's CAPS by default) without reading more."""
    cap = cap_of(path) if cap is None else cap
    fd = open_regular(path)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(cap + 1)
        size = len(data)
    finally:
        os.close(fd)
    if size > cap:
        raise BadRunFile(f"{path} is larger than {cap} bytes: not a file gradbench writes")
    return data


def read_text(path: Path, cap: int | None = None) -> str:
    try:
        return read_bytes(path, cap).decode()
    except UnicodeDecodeError as e:
        raise BadRunFile(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def exists(path: Path) -> bool:
    """True where `path` names something at all, a broken symlink included (then reading it is
    refused, rather than the file being taken as absent)."""
    return os.path.lexists(path)


def read_json(path: Path, opaque: bool = False):
    """A JSON file as plain data (see check_data)."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except RecursionError:
        raise BadRunFile(f"{path} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise BadRunFile(f"{path} is not JSON ({str(e).splitlines()[0]})") from None
    check_data(data, path, opaque)
    return data


YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where installed: 2000 run dirs in seconds
EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


def read_yaml(path: Path, opaque: bool = False):
    """A YAML file as plain data: one document, no anchors, aliases or tags (see check_data).
    The event stream is checked first (flat, so no nesting can exhaust the checker): an alias
    bomb or a `!!python/...` tag is refused before any node is built."""
    text = read_text(path)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=YAML_LOADER):
            where = f"line {event.start_mark.line + 1}"
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise BadRunFile(f"{path}: an anchor or alias at {where}: a run dir's YAML is plain data")
            if isinstance(event, EVENTS) and event.tag is not None:
                raise BadRunFile(f"{path}: a tag ({event.tag}) at {where}: a run dir's YAML is plain data")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise BadRunFile(f"{path} is nested deeper than {MAX_DEPTH} levels")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        data = yaml.load(text, Loader=YAML_LOADER)  # noqa: S506  (a safe loader, on a checked stream)
    except yaml.YAMLError as e:
        raise BadRunFile(f"{path} is not plain YAML ({str(e).splitlines()[0]})") from None
    check_data(data, path, opaque)
    return data


def check_data(data, path: Path, opaque: bool = False, tensors: bool = False) -> None:
    """Refuse data nested deeper than MAX_DEPTH, keys that are not strings or numbers, values
    that are not JSON's (dict, list, str, number, bool, null), and, unless `opaque`, any string
    (key or value) holding `${`: nothing read from a run dir is ever interpolated."""
    leaves = PLAIN + ((_tensor(),) if tensors else ())  # model.pt's PCA statistics are tensors
    if _plain(data, 0, opaque, leaves):
        return
    _explain(data, path, opaque, leaves)  # the slow walk, for the one line naming the key


PLAIN = (int, float, bool, type(None))


def _tensor() -> type:
    import torch

    return torch.Tensor


def _plain(node, depth: int, opaque: bool, leaves: tuple = PLAIN) -> bool:
    """The fast check (types, not isinstance; no key names built): True if `node` passes."""
    kind = type(node)
    if kind is str:
        return opaque or "${" not in node
    if kind in leaves:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        return all(type(k) in (str, int, float) and (opaque or "${" not in str(k)) and _plain(v, depth + 1, opaque, leaves)
                   for k, v in node.items())
    if kind is list:
        return all(_plain(v, depth + 1, opaque, leaves) for v in node)
    return False


def _explain(data, path: Path, opaque: bool, leaves: tuple = PLAIN) -> None:
    stack = [(data, "", 0)]
    while stack:
        node, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRunFile(f"{path}: {key or 'the document'} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, (str, int, float)) or isinstance(k, bool):
                    raise BadRunFile(f"{path}: {key or 'the document'} has a key of type {type(k).__name__}")
                name = f"{key}.{k}" if key else str(k)
                if not opaque and "${" in str(k):
                    raise UnsafeConfig(_interpolation(path, name, k))
                stack.append((v, name, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, f"{key}.{i}" if key else str(i), depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str):
            if not opaque and "${" in node:
                raise UnsafeConfig(_interpolation(path, key, node))
        elif not isinstance(node, leaves):
            raise BadRunFile(f"{path}: {key or 'the document'} is a {type(node).__name__}, not plain data")


def _interpolation(path, key: str, value: str) -> str:
    shown = value if len(value) <= 60 else value[:57] + "..."
    return (f"{path}: {key or 'the document'} = {shown!r} holds '${{': an interpolation or resolver call; a run dir "
            f"is data, nothing in it is resolved")


def read_overrides(path: Path, opaque: bool = False) -> list[str]:
    """.hydra/overrides.yaml: a list of override strings (checked further by
    gradbench.run.targets.check_overrides before Hydra sees them). `opaque`: for labels only
    (report's groups, figure titles), where a `${` stays text; never for what Hydra reads."""
    lines = read_yaml(path, opaque)
    if lines is None:
        return []
    if not isinstance(lines, list) or not all(isinstance(a, str) for a in lines):
        raise BadRunFile(f"{path} is not a list of overrides (a YAML {type(lines).__name__})")
    return lines


# summary.json keys that are read, with the JSON type each must have (null aside)
SHAPE = {"stop_reason": str, "steps": (int, float), "epochs": (int, float), "train_time_s": (int, float),
         "mean_step_time_s": (int, float), "choices": dict, "config": dict, "initial": dict, "final": dict,
         "class_names": list, "test_confusion": list, "overrides": list, "seed": (int, str), "outputs": list,
         "diverged_at_step": int, "error": str}


def read_summary(path: Path) -> dict:
    """summary.json: an object of the shape gradbench writes (SHAPE; metrics are numbers)."""
    summary = read_json(path)
    check_summary(summary, path)
    return summary


def check_summary(summary, path: Path | str = "summary.json") -> None:
    """BadRunFile naming the first key of a summary of another shape than the one gradbench
    writes (`[]`, `"x"`, `final` a string, a metric a list)."""
    if not isinstance(summary, dict):
        raise BadRunFile(f"{path} is a JSON {type(summary).__name__}, not an object")
    for key, kind in SHAPE.items():
        value = summary.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise BadRunFile(f"{path}: {key} is a JSON {type(value).__name__}")
    for key in ("initial", "final"):
        for split, metrics in (summary.get(key) or {}).items():
            if not isinstance(metrics, dict) or not all(
                    v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
                raise BadRunFile(f"{path}: {key}.{split} is not metric → number")
    if not all(isinstance(name, str) for name in summary.get("outputs") or []):
        raise BadRunFile(f"{path}: outputs is not a list of file names")


def whole_lines(data: bytes) -> memoryview:
    """The bytes up to the last newline: a line cut short by a kill is left out."""
    return memoryview(data)[: data.rfind(b"\n") + 1]


class _Window(io.RawIOBase):
    """The first `end` bytes of an open file, read as a stream (pandas parses it in chunks:
    a 10⁶-row metrics.csv is never held whole in memory as bytes)."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd, self.end, self.pos = fd, end, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.end - self.pos)
        if n <= 0:
            return 0
        chunk = os.pread(self.fd, n, self.pos)
        buffer[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def _last_newline(fd: int, size: int) -> int:
    """The offset just past the file's last newline (0 without one)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        block = os.pread(fd, pos - start, start)
        if (i := block.rfind(b"\n")) >= 0:
            return start + i + 1
        pos = start
    return 0


SMALL = 256 * 1024  # bytes: a CSV this small is parsed here (pandas' per-call cost is most of a tiny file's)


def _small_csv(data: bytes, path: Path, usecols=None):
    """A small CSV of numbers as a float64 frame (empty cells NaN), in one block; `usecols`: a
    predicate on column names, as pandas takes it."""
    import numpy as np
    import pandas as pd

    try:
        lines = data.decode().split("\n")[:-1]
        header = lines[0].split(",")
        rows = [[float(c) if c else math.nan for c in line.rstrip("\r").split(",")] for line in lines[1:]]
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRunFile(f"{path} is not a CSV of numbers ({str(e).splitlines()[0]})") from None
    if len(set(header)) != len(header) or any(len(row) != len(header) for row in rows):
        raise BadRunFile(f"{path} is not a CSV of numbers (a row of another width than the header, or a name twice)")
    frame = pd.DataFrame(np.array(rows, dtype=float).reshape(len(rows), len(header)), columns=header)
    return frame[[c for c in header if usecols(c)]] if usecols is not None else frame


def read_csv(path: Path, usecols=None, numbers: bool = True):
    """A CSV written by gradbench (metrics.csv, bench.csv) as a frame, without a last row cut
    mid-line; a file over its cap, a header wider than MAX_COLUMNS or longer than HEADER_CAP
    is refused first. `numbers` (metrics.csv): every cell a number, float64 (empty: NaN);
    else (bench.csv, with text columns) pandas' own types. Empty frame if the file has no whole line. Streamed from the opened
    regular file into pandas' C parser, up to the last newline found when it was opened."""
    import pandas as pd

    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > cap_of(path):
            raise BadRunFile(f"{path} is larger than {cap_of(path)} bytes: not a file gradbench writes")
        head = os.pread(fd, HEADER_CAP, 0)
        if (newline := head.find(b"\n")) < 0:
            if len(head) >= HEADER_CAP:
                raise BadRunFile(f"{path}: its header is longer than {HEADER_CAP} bytes: not a gradbench CSV")
            return pd.DataFrame()
        if head.count(b",", 0, newline) >= MAX_COLUMNS:
            raise BadRunFile(f"{path}: its header has more than {MAX_COLUMNS} columns: not a gradbench CSV")
        end = _last_newline(fd, size)
        if numbers and end <= SMALL:
            return _small_csv(os.pread(fd, end, 0), path, usecols)
        stream = io.BufferedReader(_Window(fd, end), buffer_size=MiB)
        try:  # every cell a number (float64, empty = NaN), as _small_csv reads it
            return pd.read_csv(stream, usecols=usecols, engine="c", encoding="utf-8", dtype=float if numbers else None)
        except (ValueError, pd.errors.ParserError) as e:  # UnicodeDecodeError is a ValueError
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BadRunFile(f"{path} is not a CSV of numbers ({why})") from None
    finally:
        os.close(fd)


def load_torch(path: Path):
    """A checkpoint.pt or model.pt: tensors and plain data only (weights_only), from the opened
    regular file (no symlink, FIFO or device; at most its cap)."""
    import torch

    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > cap_of(path):
            raise BadRunFile(f"{path} is larger than {cap_of(path)} bytes: not a file gradbench writes")
        with os.fdopen(os.dup(fd), "rb") as f:
            try:
                return torch.load(f, weights_only=True, map_location="cpu")
            except Exception as e:  # truncated, not a zip, a pickle of other objects: torch's many errors
                why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise BadRunFile(f"{path} is unreadable ({why})") from None
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable, binary: bool = False) -> None:
    """`write(file)` into a fresh temporary file beside `path` (O_EXCL | O_NOFOLLOW: nothing
    planted there is written through), then rename it over `path` (a symlink at `path` is
    replaced, its target untouched). A write that fails (a full disk) removes the temporary
    file, leaves `path` as it was and raises WriteFailed; a kill mid-write leaves the temporary
    file (gradbench.run.metrics.remove_stale)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # this process's own leftover (a failed earlier try)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and (cause := os_error(e)):
            raise WriteFailed(path, cause) from None
        raise


def write_text(path: Path, text: str) -> None:
    """`text` (UTF-8, newlines as given) as `path`, atomically (atomic_write)."""
    atomic_write(path, lambda f: f.write(text))


def os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or the one torch.save turns into a RuntimeError."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def open_append(path: Path):
    """`path` (a regular file this process just wrote) opened to append text, refusing a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    return os.fdopen(fd, "a", newline="", encoding="utf-8")


def open_lock(path: Path, create: bool = True) -> tuple[int, bool]:
    """(descriptor, created) of the run dir's lock file: O_NOFOLLOW, never truncated on open;
    it must be a regular file with one link (a hard link to a file elsewhere is refused, since
    the lock file is rewritten with the holder's PID). With create=False a missing lock is
    not made (returns (-1, False))."""
    from gradbench.errors import OccupiedRunDir

    flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        try:
            fd, created = os.open(path, flags), False
        except OSError as e:
            why = "a symbolic link" if e.errno == 40 else (e.strerror or str(e)).lower()
            raise OccupiedRunDir(f"{path} is {why}: not a lock gradbench made; remove it to use this run dir") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise OccupiedRunDir(f"{path} is not a plain file of this run dir (a link or special file): not a lock "
                             f"gradbench made; remove it to use this run dir")
    return fd, created


class NoFollowFileHandler(logging.FileHandler):
    """Hydra's job log file (`<run dir>/train.log`), opened with O_NOFOLLOW: a symlink planted
    at its name is never written through (the run logs to the terminal only, saying so once)."""

    def _open(self):
        try:
            fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o644)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(40, "not a regular file")
        except OSError as e:
            why = "a symbolic link or special file" if e.errno == 40 else (e.strerror or str(e)).lower()
            print(f"gradbench: warning: {self.baseFilename} is {why}: not written (the log goes to the terminal only)",
                  file=sys.stderr)
            return open(os.devnull, "a", encoding=self.encoding)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
