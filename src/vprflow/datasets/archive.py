"""Extracting downloaded archives (tar of any compression, zip) without letting them escape.

Refused members, each reported with the archive and the member name:

* absolute names and names with a ``..`` component;
* links of every kind (symlinks and hardlinks). None of the dataset archives vprflow
  knows contains a link, and a link that points inside the target can still be used by a
  later member to write through it, so "safe" links would need every name resolved
  against the tree extracted so far. Refusing them all is simpler and cannot be wrong;
* device files, FIFOs and anything else that is not a regular file or a directory.

Extraction goes to a hidden temporary sibling of the target that is renamed to the target
only after the last member is written: a target folder that exists is complete. A failed
extraction removes the temporary folder (a killed process leaves one behind, named
``.<target>.*.extracting``, never the target itself).
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import InputError

DAMAGED_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract ``archive`` into the new folder ``target`` (which must not exist yet); return it."""
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise InputError(f"{archive}: archive not found")
    if target.exists():
        raise InputError(f"{target} already exists; remove it to extract {archive} again")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, staging)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, staging)
        else:
            raise InputError(f"{archive}: not a tar or zip archive")
        staging.rename(target)
    except DAMAGED_ARCHIVE_ERRORS as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, tarfile.FilterError):
            raise InputError(f"{archive}: refused member: {error}; nothing was extracted") from None
        raise InputError(f"{archive}: damaged archive ({error}); delete it and download it again") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _extract_tar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # one pass: compressed streams are read once
            _refuse_if(archive, member.name, _name_problem(member.name) or _tar_type_problem(member))
            tar.extract(member, staging, filter="data")  # the filter also drops setuid bits and the like


def _extract_zip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as zip_file:
        members = zip_file.infolist()
        for member in members:  # check all first: a zip's directory lists every member up front
            _refuse_if(archive, member.filename, _name_problem(member.filename) or _zip_type_problem(member))
        for member in members:
            zip_file.extract(member, staging)


def _refuse_if(archive: Path, member: str, problem: str | None) -> None:
    if problem:
        raise InputError(f"{archive}: refused member {member!r}: {problem}; nothing was extracted")


def _name_problem(name: str) -> str | None:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.drive or windows.root:
        return "absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "'..' in its path would write outside the target folder"
    return None


def _tar_type_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r} (links are refused)"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device file or FIFO"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or directory"
    return None


def _zip_type_problem(member: zipfile.ZipInfo) -> str | None:
    mode = member.external_attr >> 16  # Unix mode, when the zip was made on Unix; 0 otherwise
    if not stat.S_IFMT(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symbolic link (links are refused)"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "device file or other special file"
    return None
