"""safe_extract(): ordinary archives extract; hostile ones are refused and write nothing."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from vprflow.datasets.archive import safe_extract
from vprflow.errors import InputError

GOOD_MEMBERS = {"top.txt": b"top", "landmark/a/0001.jpg": b"jpeg bytes"}


def write_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def all_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tgz"), ("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")])
def test_tar_of_every_compression_is_extracted(tmp_path, mode, suffix):
    archive = write_tar(tmp_path / f"good{suffix}", list(GOOD_MEMBERS.items()), mode)
    target = safe_extract(archive, tmp_path / "out")
    assert {name: (target / name).read_bytes() for name in GOOD_MEMBERS} == GOOD_MEMBERS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "out"])  # no temporary folder


def test_zip_is_extracted(tmp_path):
    archive = tmp_path / "good.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        for name, data in GOOD_MEMBERS.items():
            zip_file.writestr(name, data)
    target = safe_extract(archive, tmp_path / "out")
    assert {name: (target / name).read_bytes() for name in GOOD_MEMBERS} == GOOD_MEMBERS


# case -> (members given the folder outside the target, the member refused; None: the absolute one)
HOSTILE_TARS = {
    "dot-dot": (lambda outside: [("ok.txt", b"ok"), ("../escaped.txt", b"evil")], "../escaped.txt"),
    "nested dot-dot": (lambda outside: [("a/../../escaped.txt", b"evil")], "a/../../escaped.txt"),
    "absolute": (lambda outside: [(str(outside / "escaped.txt"), b"evil")], None),
    "symlink out": (
        lambda outside: [special("link", tarfile.SYMTYPE, str(outside)), ("link/escaped.txt", b"x")],
        "link",
    ),
    "relative symlink": (lambda outside: [special("link", tarfile.SYMTYPE, "../")], "link"),
    "symlink inside": (lambda outside: [("ok.txt", b"ok"), special("link", tarfile.SYMTYPE, "ok.txt")], "link"),
    "hardlink": (lambda outside: [special("hard", tarfile.LNKTYPE, str(outside / "victim.txt"))], "hard"),
    "device": (lambda outside: [special("dev", tarfile.CHRTYPE)], "dev"),
    "fifo": (lambda outside: [special("fifo", tarfile.FIFOTYPE)], "fifo"),
}


@pytest.mark.parametrize("case", HOSTILE_TARS)
def test_hostile_tar_is_refused_and_writes_nothing(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"untouched")
    work = tmp_path / "work"
    work.mkdir()
    make_members, refused = HOSTILE_TARS[case]
    archive = write_tar(work / "hostile.tgz", make_members(outside), "w:gz")
    refused = refused or str(outside / "escaped.txt")
    before = all_files(tmp_path)

    with pytest.raises(InputError) as error:
        safe_extract(archive, work / "out")

    assert str(archive) in str(error.value) and repr(refused) in str(error.value)
    assert all_files(tmp_path) == before  # no target, no temporary folder, nothing outside
    assert (outside / "victim.txt").read_bytes() == b"untouched"


def zip_with(path: Path, name: str, data: bytes = b"evil", unix_mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zip_file:
        zip_file.writestr("ok.txt", b"ok")
        info = zipfile.ZipInfo(name)
        if unix_mode is not None:
            info.create_system = 3
            info.external_attr = unix_mode << 16
        zip_file.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "name, unix_mode",
    [
        ("../escaped.txt", None),
        ("/abs/escaped.txt", None),
        ("a\\..\\..\\escaped.txt", None),
        ("link", stat.S_IFLNK | 0o777),
        ("dev", stat.S_IFCHR | 0o600),
    ],
)
def test_hostile_zip_is_refused_and_writes_nothing(tmp_path, name, unix_mode):
    archive = zip_with(tmp_path / "hostile.zip", name, b"../../outside", unix_mode)
    with pytest.raises(InputError) as error:
        safe_extract(archive, tmp_path / "out")
    assert str(archive) in str(error.value) and repr(name) in str(error.value)
    assert all_files(tmp_path) == {"hostile.zip"}


def test_existing_target_is_not_overwritten(tmp_path):
    archive = write_tar(tmp_path / "good.tar", list(GOOD_MEMBERS.items()))
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="already exists"):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_damaged_archive_leaves_nothing(tmp_path):
    big = [(f"f{i}.bin", bytes([i]) * 50_000) for i in range(20)]
    whole = write_tar(tmp_path / "whole.tgz", big, "w:gz").read_bytes()
    damaged = tmp_path / "damaged.tgz"
    damaged.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="damaged"):
        safe_extract(damaged, tmp_path / "out")
    assert all_files(tmp_path) == {"whole.tgz", "damaged.tgz"}


def test_file_that_is_no_archive_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a tar or zip"):
        safe_extract(tmp_path / "notes.txt", tmp_path / "out")
    assert all_files(tmp_path) == {"notes.txt"}
