"""Where runs keep what must outlive them: local paths and URIs, told apart in one place.

A location is a local path (relative to the working directory, `~` expanded) or a URI that
pyarrow's filesystems open: `s3://bucket/prefix` (S3-compatible endpoints and credentials
through AWS's own variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), `gs://...`,
`hdfs://...`. `file:///abs/path` is a local path. Nothing else in trainyard looks for "://".

    is_uri(location)                 a URI of a remote filesystem, not a local path
    suffix(location)                 its file suffix, lowercase (".parquet"), URI or path
    absolute(location)               a local path made absolute (Ray's processes run in other
                                     working directories); a URI as it is
    relative_to(folder, location)    a path written in a file, resolved against that file's
                                     folder; absolute paths and URIs as they are
    join(location, *parts)           a location under another (a URI stays a URI)
    default_storage()                where runs persist when no location is given
                                     (TRAINYARD_STORAGE, else runs/)
    uri(filesystem, path)            a pyarrow filesystem's path (what Ray reports) as a location
    exists(location)                 a file or folder is there
    open_input(location)             a random-access file (a Parquet reader reads only the ranges it needs)
    files_under(location, suffixes)  the files a location names: itself, or a folder's, in name order
    downloaded(location)             a local folder holding what is at a location (a context)
    staged(location)                 a local folder whose files end up at a location (a context)
    folder_name(name, what)          a run's name, which names its folder: one folder, never a path
    read_text(location)              a small file's text, None where there is none
    write_text(location, text)       a small file written whole (replaced atomically where local)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlparse

STORAGE_VARIABLE = "TRAINYARD_STORAGE"  # the default location of every command's runs
DEFAULT_STORAGE = "runs"  # relative to the working directory of the process that launches
DURABLE_STORAGE = Path("~/trainyard-runs")  # inside a submitted job (see default_storage)
_LOCAL_SCHEME = "file://"


def is_uri(location: str | os.PathLike) -> bool:
    text = os.fspath(location)
    return "://" in text and not text.startswith(_LOCAL_SCHEME)


def is_local(location: str | os.PathLike) -> bool:
    return not is_uri(location)


def suffix(location: str | os.PathLike) -> str:
    text = os.fspath(location)
    return PurePosixPath(urlparse(text).path).suffix.lower() if is_uri(text) else Path(text).suffix.lower()


def absolute(location: str | os.PathLike) -> str:
    """A local path as an absolute one (`~` expanded, `file://` dropped); a URI as it is."""
    text = os.fspath(location)
    if is_uri(text):
        return text
    if text.startswith(_LOCAL_SCHEME):
        text = text[len(_LOCAL_SCHEME) :]
    return str(Path(text).expanduser().resolve())


def relative_to(folder: str | os.PathLike, location: str | os.PathLike) -> str:
    """`location` as written in a file in `folder`: relative to that folder; absolute local
    paths and URIs as they are."""
    if is_uri(location):
        return os.fspath(location)
    return absolute(Path(folder).expanduser() / Path(os.fspath(location)).expanduser())


def folder_name(name: str, what: str = "run name") -> str:
    """`name` as the folder a run writes under its storage: one plain folder name. A path
    (`../x`, `/abs`, `a/b`) would put the run outside its storage, and is refused."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise ValueError(
            f"{what} {name!r} must be one folder name (letters, digits, '-', '_', '.'), not a path: the run writes in "
            "<storage>/<name>; to write elsewhere choose the storage (--storage, or $TRAINYARD_STORAGE; storage= or storage_path= in Python)"
        )
    return name


def command_digest(inputs: Mapping[str, Any]) -> str:
    """8 hex digits of what a command was given: the same inputs, the same digest (a default
    run name from it makes running the command again find, and resume, its run)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:8]


def join(location: str | os.PathLike, *parts: str) -> str:
    """`location/part/...`: a URI joined as a URI (`s3://b/runs` + `x` is `s3://b/runs/x`), a
    local path as an absolute path."""
    text = os.fspath(location)
    if is_uri(text):
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(absolute(text), *parts))


def default_storage() -> str:
    """Where runs persist when no location is given: $TRAINYARD_STORAGE where it is set, else
    `runs/` in the working directory; but a `ray job submit` job's working directory is Ray's
    temporary copy of the upload, deleted with it, so there `~/trainyard-runs` (on the head
    node; give s3://... or a shared filesystem for a cluster of several nodes)."""
    if os.environ.get(STORAGE_VARIABLE, "").strip():
        return os.environ[STORAGE_VARIABLE].strip()
    cwd = Path.cwd().parts
    if "runtime_resources" in cwd and any(part.startswith("_ray_pkg_") for part in cwd):
        return str(DURABLE_STORAGE.expanduser())
    return DEFAULT_STORAGE


def read_text(location: str | os.PathLike) -> str | None:
    """The text of a small file at a path or URI; None where there is no such file."""
    if is_local(location):
        path = Path(absolute(location))
        return path.read_text() if path.is_file() else None
    import pyarrow.fs

    fs, path = _filesystem(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(location: str | os.PathLike, text: str) -> None:
    """Write a small file whole: locally through a temporary file and a rename, so that a
    reader (or a process killed mid-write) sees the old text or the new, never half; to
    object storage as one PUT, which is whole by nature."""
    if is_local(location):
        path = Path(absolute(location))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(text)
        os.replace(partial, path)
        return
    fs, path = _filesystem(location)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def _filesystem(location: str | os.PathLike):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(os.fspath(location))


def uri(filesystem: Any, path: str) -> str:
    """The location of `path` on a pyarrow `filesystem`: Ray reports a run's and a checkpoint's
    place as such a pair, the bucket's path without its scheme (`bucket/runs/x`)."""
    import pyarrow.fs

    if filesystem is None or isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return path
    if isinstance(filesystem, pyarrow.fs.SubTreeFileSystem):
        return uri(filesystem.base_fs, f"{filesystem.base_path.rstrip('/')}/{path.lstrip('/')}")
    scheme = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}.get(filesystem.type_name, filesystem.type_name)
    return f"{scheme}://{path.lstrip('/')}"


def open_input(location: str | os.PathLike) -> Any:
    """A pyarrow random-access file at `location`: a Parquet reader on it reads its footer,
    then only the byte ranges of what it reads (a row group's columns), local or remote."""
    if is_local(location):
        import pyarrow

        return pyarrow.OSFile(absolute(location))
    fs, path = _filesystem(location)
    return fs.open_input_file(path)


def files_under(location: str | os.PathLike, suffixes: tuple[str, ...], what: str = "data") -> list[str]:
    """The files `location` names: itself when it is a file, else the files under the folder
    (at any depth, in name order) whose suffix is one of `suffixes`; FileNotFoundError naming
    the location when there are none."""
    import pyarrow.fs

    text = absolute(location)
    fs, path = _filesystem(text) if is_uri(text) else (pyarrow.fs.LocalFileSystem(), text)
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.File:
        return [text]
    if info.type != pyarrow.fs.FileType.Directory:
        raise FileNotFoundError(f"{what}: nothing at {text}")
    found = sorted(i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
                   if i.type == pyarrow.fs.FileType.File and PurePosixPath(i.path).suffix.lower() in suffixes)
    if not found:
        others = f" (nor {', '.join(suffixes[1:])})" if len(suffixes) > 1 else ""
        raise FileNotFoundError(f"{what}: the directory {text} holds no {suffixes[0]} files{others}")
    return [uri(fs, f) for f in found]


def exists(location: str | os.PathLike) -> bool:
    """A file or a folder is at `location`."""
    if is_local(location):
        return Path(absolute(location)).exists()
    import pyarrow.fs

    fs, path = _filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


@contextlib.contextmanager
def downloaded(location: str | os.PathLike, keep: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """A local folder with what is under `location`: the folder itself where it is local; for a
    URI a temporary copy of the files whose relative path `keep` accepts (all by default),
    removed afterwards."""
    if is_local(location):
        yield Path(absolute(location))
        return
    import pyarrow.fs

    fs, root = _filesystem(location)
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(f"{location}: nothing is there (check the URI, and AWS_ENDPOINT_URL and the credentials for S3-compatible storage)")
    with tempfile.TemporaryDirectory(prefix="trainyard-download-") as tmp:
        for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
            relative = info.path[len(root.rstrip("/")) + 1 :]
            if info.type != pyarrow.fs.FileType.File or (keep is not None and not keep(relative)):
                continue
            target = Path(tmp, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        yield Path(tmp)


@contextlib.contextmanager
def staged(location: str | os.PathLike) -> Iterator[Path]:
    """A local folder to write what belongs at `location`: the folder itself where it is local
    (created); for a URI a temporary folder whose files are uploaded there when the block ends
    without an error (nothing is uploaded otherwise), then removed."""
    if is_local(location):
        path = Path(absolute(location))
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import pyarrow.fs

    with tempfile.TemporaryDirectory(prefix="trainyard-upload-") as tmp:
        yield Path(tmp)
        fs, root = _filesystem(location)
        pyarrow.fs.copy_files(tmp, root, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
