"""Atomic folders: whatever moment a stop falls on, the folder or the one before it is complete, and the
next start puts it back and clears what the stop left."""
import os
import shutil

from ergo.files import atomic_dir, previous_of, recover_dir


def write(folder, text):
    with atomic_dir(folder, keep_previous=True) as tmp:
        (tmp / "weights").write_text(text)


def test_a_replaced_folder_keeps_its_previous_and_a_stop_between_the_renames_is_recovered(tmp_path):
    latest = tmp_path / "latest"
    write(latest, "one")
    write(latest, "two")
    assert (latest / "weights").read_text() == "two" and (previous_of(latest) / "weights").read_text() == "one"
    assert not list(tmp_path.glob(".latest.*.tmp"))

    # a SIGKILL between the two renames: the old folder moved aside, the new one still a temp folder
    (tmp_path / ".latest.abc.tmp").mkdir()
    (tmp_path / ".latest.abc.tmp" / "weights").write_text("three, half writ")
    shutil.rmtree(previous_of(latest))
    os.replace(latest, previous_of(latest))
    assert recover_dir(latest, keep_previous=True)
    assert (latest / "weights").read_text() == "two" and not list(tmp_path.glob(".latest.*.tmp"))

    # a folder whose previous is not kept loses a leftover one; a complete folder is left as it is
    best = tmp_path / "best"
    with atomic_dir(best) as tmp:
        (tmp / "card").write_text("b")
    assert not previous_of(best).exists()
    previous_of(best).mkdir()
    assert not recover_dir(best) and not previous_of(best).exists() and (best / "card").read_text() == "b"


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path):
    latest = tmp_path / "latest"
    write(latest, "one")
    try:
        with atomic_dir(latest, keep_previous=True) as tmp:
            (tmp / "weights").write_text("half")
            raise OSError("disk full")
    except OSError:
        pass
    assert (latest / "weights").read_text() == "one" and not list(tmp_path.glob(".latest.*.tmp"))
