"""SfM's checkpoints (issue 25): a build killed with SIGKILL in the middle of incremental mapping
resumes from the model it last wrote and ends with the same registered images; the rule of
``--mapper auto``; the progress of the mapper.

On the rendered demo scene (its 19 images, SfM without the reference poses), so a build takes
seconds. The kill comes from inside the mapper: a small driver script wraps the checkpoint writer
and sends SIGKILL to its own process once a checkpoint of 5 or more images is on disk, so the
build is always killed mid-mapping, however fast the machine.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pycolmap
import pytest

from vloc.cli import main
from vloc.mapping.map_dir import load_map
from vloc.mapping.mapper import CHECKPOINT, Mapper, choose_mapper, parse_mapper


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from vloc.demo.scene import render_demo_scene

    return render_demo_scene(tmp_path_factory.mktemp("demo") / "scene")


def build_args(scene, out, work):
    return ["map", "build", "--images", str(scene / "images"), "--out", str(out), "--work", str(work),
            "--mapper", "incremental", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def uninterrupted(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    assert main(build_args(scene, root / "map", root / "work")) == 0
    return load_map(root / "map")


KILLER = textwrap.dedent("""
    import os, signal, sys
    from vloc.cli import main
    from vloc.mapping import mapper

    real = mapper._Checkpoints.maybe_write

    def write_then_die(self, model):
        real(self, model)
        if self.written >= 5:  # a checkpoint of 5+ images is on disk: die mid-mapping
            os.kill(os.getpid(), signal.SIGKILL)

    mapper._Checkpoints.maybe_write = write_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_sfm_resumes_from_its_checkpoint(scene, uninterrupted, tmp_path):
    out, work = tmp_path / "map", tmp_path / "work"
    args = build_args(scene, out, work)
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = work / "model" / CHECKPOINT
    kept = pycolmap.Reconstruction(str(checkpoint)).num_reg_images()
    total = uninterrupted.reconstruction.num_reg_images()
    assert 5 <= kept < total and not out.exists()

    rerun = subprocess.run([sys.executable, "-m", "vloc.cli", *args], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    images = len(list((scene / "images").iterdir()))
    assert f"SfM resumes from the checkpoint in {checkpoint}: {kept} of {images} images kept" in rerun.stderr
    assert "extract: complete" in rerun.stderr and "database: complete" in rerun.stderr  # nothing redone
    data = load_map(out)
    assert data.reconstruction.num_reg_images() == total
    assert sorted(im.name for im in data.reconstruction.images.values() if im.has_pose) == \
        sorted(im.name for im in uninterrupted.reconstruction.images.values() if im.has_pose)
    assert not checkpoint.exists()  # gone once the model stage is complete


def test_progress_shows_registered_images(scene, tmp_path):
    run = subprocess.run([sys.executable, "-m", "vloc.cli", *build_args(scene, tmp_path / "map", tmp_path / "w")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    images = len(list((scene / "images").iterdir()))
    assert "sfm:" in run.stderr and f"/{images} [" in run.stderr  # tqdm: registered / total and elapsed


def test_mapper_names_and_the_auto_rule():
    assert choose_mapper(Mapper.GLOBAL, 10) is Mapper.GLOBAL
    assert choose_mapper(Mapper.AUTO, 1000) is Mapper.INCREMENTAL
    assert parse_mapper("global") is Mapper.GLOBAL
    with pytest.raises(ValueError, match="valid: auto, incremental, global"):
        parse_mapper("glomap")
