"""imae.atomic: the one way files are written. A failure raises OSError naming the target, leaves what was there
before and no temporary file; several files are written all or none."""

from __future__ import annotations

import pytest
import torch

from imae.atomic import save_atomic, write_all_atomic, write_atomic, write_reason


def test_a_failed_write_raises_oserror_and_keeps_the_previous_file(tmp_path):
    path = write_atomic(tmp_path / "a.json", "before")

    def full(f):
        f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] unexpected pos 64\nmore")  # torch.save's

    with pytest.raises(OSError) as e:
        write_atomic(path, full)
    assert e.value.filename == str(path) and write_reason(e.value).startswith("[enforce fail")
    assert path.read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    save_atomic({"w": torch.ones(2)}, tmp_path / "w.pth")
    assert torch.equal(torch.load(tmp_path / "w.pth", weights_only=True)["w"], torch.ones(2))


def test_several_files_are_written_all_or_none(tmp_path):
    write_all_atomic({tmp_path / "r.md": "old md", tmp_path / "r.html": b"old html"})
    with pytest.raises(OSError) as e:
        write_all_atomic({tmp_path / "r.md": "new md", tmp_path / "missing" / "r.html": "new html"})
    assert e.value.filename == str(tmp_path / "missing" / "r.html")
    assert (tmp_path / "r.md").read_text() == "old md" and sorted(p.name for p in tmp_path.iterdir()) == [
        "r.html", "r.md"]
