"""The staged build: resume after an interruption in each stage, refusal of outputs written under
another configuration, and the executors (local processes, Ray) giving the same map.

On the rendered demo scene (14 map images, triangulation from its exact poses), so each build takes
seconds. An interruption is a KeyboardInterrupt (what Ctrl-C raises) thrown from inside the
stage, after part of its work is on disk; one test kills a build process with SIGKILL.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pycolmap
import pytest

from vloc.config import MatcherConf, get_preset
from vloc.mapping import build as build_module
from vloc.mapping import extract as extract_module
from vloc.mapping import match as match_module
from vloc.mapping import reconstruct as reconstruct_module
from vloc.mapping.build import build_map, default_work_dir
from vloc.mapping.map_dir import load_map
from vloc.mapping.stages import StageConfigError

SIFT = get_preset("sift")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from vloc.demo.scene import render_demo_scene

    return render_demo_scene(tmp_path_factory.mktemp("demo") / "scene")


@pytest.fixture(scope="module", autouse=True)
def small_chunks():
    """Several matching chunks on a small scene (the chunk size is part of the stage's config)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(match_module, "CHUNK", 8)
        yield


def build(scene, out, **kwargs):
    return build_map(scene / "images", out, SIFT, reference=scene / "ref_model", **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "map"
    build(scene, out)
    return load_map(out)


def assert_same_map(a, b):
    """Same images, keypoints, SIFT descriptors and observations; the same points up to float
    rounding; global descriptors within float32 rounding (torch's reductions depend on its thread
    count, which differs between one process and N workers)."""
    ra, rb = a.reconstruction, b.reconstruction
    assert sorted(im.name for im in ra.images.values() if im.has_pose) == \
        sorted(im.name for im in rb.images.values() if im.has_pose)
    assert a.manifest.counts == b.manifest.counts
    xa = np.array(sorted(tuple(p.xyz) for p in ra.points3D.values()))
    xb = np.array(sorted(tuple(p.xyz) for p in rb.points3D.values()))
    np.testing.assert_allclose(xa, xb, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(a.store.descriptors), np.asarray(b.store.descriptors))
    np.testing.assert_allclose(a.global_raw, b.global_raw, atol=1e-6)


class Interrupt:
    """Call ``fn`` normally ``after`` times, then raise KeyboardInterrupt."""

    def __init__(self, fn, after: int):
        self.fn, self.after, self.calls = fn, after, 0

    def __call__(self, *args, **kwargs):
        if self.calls >= self.after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.fn(*args, **kwargs)


def interrupt_in_database(monkeypatch):
    real = reconstruct_module.write_database

    def failing(path, cameras, images, keypoints, matches, *args, **kwargs):
        def some():
            for k, item in enumerate(matches):
                if k == 5:
                    raise KeyboardInterrupt
                yield item
        real(path, cameras, images, keypoints, some(), *args, **kwargs)
    monkeypatch.setattr(reconstruct_module, "write_database", failing)


STAGES = {
    # stage: (how to interrupt it, the log line that shows finished work was reused on the rerun)
    "extract": (lambda mp: mp.setattr(extract_module, "extract_chunk", Interrupt(extract_module.extract_chunk, 1)),
                "extract: 8 of 14 images already extracted"),
    "pairs": (lambda mp: mp.setattr(build_module, "pairs_stage", Interrupt(build_module.pairs_stage, 0)),
              "extract: complete"),
    "matches": (lambda mp: mp.setattr(match_module, "match_chunk", Interrupt(match_module.match_chunk, 2)),
                "match: 2 of"),
    "database": (interrupt_in_database, "matches: complete"),
    "model": (lambda mp: mp.setattr(reconstruct_module, "save_reconstruction",
                                    Interrupt(reconstruct_module.save_reconstruction, 0)),
              "database: complete"),
    "write": (lambda mp: mp.setattr(build_module, "write_map", Interrupt(build_module.write_map, 0)),
              "model: complete"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_interrupted_build_resumes_to_the_same_map(stage, scene, uninterrupted, tmp_path, caplog):
    out = tmp_path / "map"
    interrupt, reused = STAGES[stage]
    with pytest.MonkeyPatch.context() as mp:
        interrupt(mp)
        with pytest.raises(KeyboardInterrupt):
            build(scene, out)
    assert not out.exists()  # the map appears only complete
    assert default_work_dir(out).is_dir()
    assert not list(tmp_path.glob(".map.writing-*"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build(scene, out)
    assert reused in caplog.text
    assert not default_work_dir(out).exists()  # the default work directory goes once the map is written
    assert_same_map(load_map(out), uninterrupted)


def test_killed_build_resumes(scene, uninterrupted, tmp_path):
    """SIGKILL during extraction (no Python handler runs), then the same command again."""
    out, work = tmp_path / "map", tmp_path / "work"
    cmd = [sys.executable, "-m", "vloc.cli", "map", "build", "--images", str(scene / "images"), "--out", str(out),
           "--reference", str(scene / "ref_model"), "--work", str(work)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    features = work / "extract" / "features"
    deadline = time.monotonic() + 120
    while len(list(features.glob("[!.]*.npz"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, "the build ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(features.glob("[!.]*.npz")))
    assert 2 <= done < 14 and not out.exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"extract: {done} of 14 images already extracted" in rerun.stderr
    assert work.is_dir()  # a given --work is kept
    # (the rerun is a new process: its matching chunks are the default size, the fixture's are not)
    data = load_map(out)
    assert data.manifest.counts.images == uninterrupted.manifest.counts.images
    np.testing.assert_allclose(data.global_raw, uninterrupted.global_raw, atol=1e-6)


def test_stage_written_under_another_configuration_is_refused(scene, tmp_path, caplog):
    out, work = tmp_path / "map", tmp_path / "work"
    build(scene, out, work=work)
    other = SIFT.with_overrides(matcher=MatcherConf(ratio=0.7))
    with pytest.raises(StageConfigError, match=r"matches: written under another configuration.*matcher\.ratio"):
        build_map(scene / "images", tmp_path / "map2", other, reference=scene / "ref_model", work=work)
    assert not (tmp_path / "map2").exists()
    with caplog.at_level(logging.INFO):
        build_map(scene / "images", out, other, reference=scene / "ref_model", work=work, overwrite=True)
    assert "extract: complete" in caplog.text and "pairs: complete" in caplog.text
    assert "matches: configuration changed (matcher.ratio: 0.8 -> 0.7)" in caplog.text
    assert "database: configuration changed" in caplog.text  # every later stage follows
    assert load_map(out).manifest.preset["matcher"]["ratio"] == 0.7


def test_local_processes_give_the_same_map(scene, uninterrupted, tmp_path):
    build(scene, tmp_path / "map", workers=2)
    assert_same_map(load_map(tmp_path / "map"), uninterrupted)


def test_ray_gives_the_same_map(scene, uninterrupted, tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional extra vloc[ray]; the test set-up installs it")
    build(scene, tmp_path / "map", ray=True, workers=2)
    assert_same_map(load_map(tmp_path / "map"), uninterrupted)


def test_fallback_layer_resumes(scene, tmp_path, caplog):
    """A preset with a layer: the layer's stages live in WORK/fallback and resume too."""
    from vloc.config import FallbackConf, Preset

    preset = Preset(name="with-layer", fallback=FallbackConf(preset="sift-fast"))
    out, work = tmp_path / "map", tmp_path / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_module, "write_map", Interrupt(build_module.write_map, 1))  # the layer's write
        with pytest.raises(KeyboardInterrupt):
            build_map(scene / "images", out, preset, reference=scene / "ref_model", work=work)
    assert (work / "fallback" / "model" / "stage.json").is_file()
    with caplog.at_level(logging.INFO):
        build_map(scene / "images", out, preset, reference=scene / "ref_model", work=work)
    assert caplog.text.count("model: complete") == 2  # the map's and the layer's
    assert (out / "fallback" / "manifest.json").is_file()
    assert pycolmap.Reconstruction(str(out / "fallback" / "model")).num_reg_images() == 14
