"""``vloc report``: one HTML page for a localization run (the pose list and its JSON log).

The log written by ``vloc localize`` carries every query's 2D-3D correspondences (query
keypoints, point3D ids, inlier indices), retrieval scores, timings and pose uncertainty. The
report draws the query's inliers over its outliers and the match lines to the retrieved map image
that observes most inlier points; that image and its keypoints are recomputed from the map's
stored observations (deterministic: the same log and map give the same page).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vloc.io.poses import read_poses
from vloc.mapping.manifest import GeoInfo
from vloc.report.ground import ground_plane_html
from vloc.report.page import esc, figure_html, jpeg_data_uri, table_html, write_page

logger = logging.getLogger(__name__)

# Sizes chosen for a 1,000-query report under 50 MB (docs/benchmarks.md, "Reports"): map
# thumbnails are embedded once per page, each query's picture once; images decode lazily.
THUMB_SIDE, THUMB_QUALITY = 160, 60  # a retrieved map image (shown 72 px high)
MATCH_PX, MATCH_QUALITY = 200, 65  # height of the query | map image picture
LAZY = "loading='lazy' decoding='async'"


class ReportError(ValueError):
    """A report's input is missing or does not belong together; the message names the file."""


@dataclass
class Run:
    poses: Path
    log_path: Path
    log: dict
    map_dir: Path
    query_images: Path
    map_images: Path | None
    geo: GeoInfo | None = None  # the map's geo-registration (``map build --gps``)


def load_run(poses: Path | str, map_dir: Path | str | None = None, map_images: Path | str | None = None) -> Run:
    """Read ``poses`` and the JSON log beside it, and find the map (``map_dir``, else the log's).

    Raises:
        ReportError: the pose list or its log is missing or unreadable, the map is not found, or
            the log was written against another map.
    """
    from vloc.localization.batch import log_path_for
    from vloc.mapping.manifest import read_manifest

    poses = Path(poses)
    if not poses.is_file():
        raise ReportError(f"{poses}: no such pose list")
    log_path = log_path_for(poses)
    if not log_path.is_file():
        raise ReportError(f"{poses}: its JSON log {log_path} is missing (vloc localize writes it beside the poses; "
                          "the report needs it)")
    try:
        log = json.loads(log_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{log_path}: not a JSON log ({exc})") from None
    if not isinstance(log, dict) or not isinstance(log.get("queries"), list):
        raise ReportError(f"{log_path}: not a vloc localization log (no 'queries' list)")
    map_dir = Path(map_dir) if map_dir is not None else Path(log.get("map", ""))
    if not (map_dir / "manifest.json").is_file():
        raise ReportError(f"{log_path}: its map {map_dir} is not found; give it with --map")
    try:
        manifest = read_manifest(map_dir)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    if log.get("map_created") and log["map_created"] != manifest.created:
        raise ReportError(f"{log_path}: written against a map created {log['map_created']}, but {map_dir} was "
                          f"created {manifest.created}: a log from another map")
    images = Path(log.get("images", ""))
    if map_images is None and manifest.source.images:
        map_images = Path(manifest.source.images)
    return Run(poses, log_path, log, map_dir, images, Path(map_images) if map_images is not None else None,
               manifest.geo)


class _MapSide:
    """The map's stored observations and image thumbnails (each embedded once per page)."""

    def __init__(self, run: Run):
        from vloc.mapping.store import MapStore

        self.store, self.images, self.thumbs = MapStore.open(run.map_dir), run.map_images, {}
        self.names = {self.store.name(r) for r in range(len(self.store))}

    def check(self, log_path: Path, queries: list[dict]) -> None:
        unknown = sorted({n for q in queries for n in q.get("retrieved", [])} - self.names)
        if unknown:
            raise ReportError(f"{log_path}: retrieved images not in the map {self.store.directory}: "
                              f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''} (a log from another map?)")

    def image(self, name: str) -> np.ndarray | None:
        from vloc.io.images import ImageReadError, read_image

        if self.images is None:
            return None
        try:
            return read_image(self.images / name)
        except ImageReadError as exc:
            logger.warning("%s", exc)
            return None

    def thumb(self, name: str) -> str:
        """The key of ``name``'s thumbnail in ``vlocData.thumbs`` ("" when the image is not found)."""
        if name not in self.thumbs:
            image = self.image(name)
            self.thumbs[name] = jpeg_data_uri(image, THUMB_SIDE, THUMB_QUALITY) if image is not None else ""
        return name if self.thumbs[name] else ""

    def best_image(self, retrieved: list[str], inlier_ids: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
        """The retrieved image observing most inlier points: its name, which inliers it sees
        (indices into ``inlier_ids``) and its keypoints ``(K, 2)`` observing them."""
        best = ("", np.zeros(0, int), np.zeros((0, 2)))
        for name in retrieved:
            row = self.store.row(name)
            ids = self.store.image_point3D_ids(row)
            common, where_inlier, where_image = np.intersect1d(inlier_ids, ids, return_indices=True)
            if len(common) > len(best[1]):
                best = (name, where_inlier, self.store.features(row).keypoints[where_image])
        return best


def _errors(run: Run, gt: Path | None) -> tuple[dict, str]:
    """Per-query (dt, dr) and the summary section's HTML, with ``gt``."""
    if gt is None:
        return {}, ""
    import plotly.graph_objects as go

    from vloc.evaluation.metrics import evaluate

    if not Path(gt).is_file():
        raise ReportError(f"{gt}: no such ground-truth pose list")
    truth = read_poses(gt)
    all_names = [q["name"] for q in run.log["queries"]]
    names = [n for n in all_names if n in truth]
    if all_names and not names:
        raise ReportError(f"{gt}: none of the {len(all_names)} queries of {run.log_path} has a ground-truth pose "
                          "there (another set's?)")
    summary = evaluate(read_poses(run.poses), {n: truth[n] for n in names})
    rows = [["localized", f"{summary.localized}/{summary.total}"],
            ["median translation error", f"{summary.median_t:.4g}"], ["median rotation error (deg)",
                                                                      f"{summary.median_r:.4g}"]]
    rows += [[f"within ({t}, {r} deg)", f"{100 * v:.1f} %"] for (t, r), v in summary.recalls.items()]
    curves = go.Figure()
    for k, (label, unit) in enumerate((("translation", "map units"), ("rotation", "deg"))):
        values = np.sort([e[k] for e in summary.errors.values() if np.isfinite(e[k])])
        share = 100 * np.arange(1, len(values) + 1) / max(len(names), 1)
        curves.add_trace(go.Scatter(x=values, y=share, mode="lines", name=f"{label} ({unit})",
                                    xaxis="x" if k == 0 else "x2"))
    curves.update_layout(height=320, margin=dict(l=50, r=20, t=40, b=40), title="cumulative error",
                         xaxis=dict(title="translation error", type="log", domain=[0, 0.45]),
                         xaxis2=dict(title="rotation error (deg)", type="log", domain=[0.55, 1]),
                         yaxis=dict(title="% of queries", range=[0, 100]))
    if len(names) < len(all_names):
        rows.append(["queries without ground truth (not counted)", len(all_names) - len(names)])
    html = "<h2>Errors against the ground truth</h2>" + table_html(["", "value"], rows)
    return summary.errors, html + figure_html(curves)


def _summary(run: Run) -> str:
    import plotly.graph_objects as go

    queries = run.log["queries"]
    ok = sum(q.get("status") == "localized" for q in queries)
    reasons: dict[str, int] = {}
    for q in queries:
        if q.get("status") != "localized":
            key = q.get("reason", "").split(" (")[0] or "unknown"
            reasons[key] = reasons.get(key, 0) + 1
    html = (f"<p><b>{ok}</b> of <b>{len(queries)}</b> queries localized, <b>{len(queries) - ok}</b> failed. "
            f"Map <code>{esc(run.map_dir)}</code>, preset <code>{esc(run.log.get('preset', '?'))}</code>.</p>")
    if reasons:
        html += table_html(["failure reason", "queries"], sorted(reasons.items(), key=lambda kv: -kv[1]))
    stages = sorted({s for q in queries for s in q.get("timings", {})})
    if stages:
        fig = go.Figure([go.Box(y=[q["timings"].get(s, 0.0) for q in queries], name=s, boxpoints=False)
                         for s in stages])
        fig.update_layout(height=300, margin=dict(l=50, r=20, t=40, b=30), title="time per stage (s)",
                          showlegend=False)
        html += figure_html(fig)
    return html


def _card(q: dict, run: Run, side: _MapSide, errors: dict) -> str:
    from vloc.io.images import ImageReadError, read_image
    from vloc.report.draw import draw_matches

    ok = q.get("status") == "localized"
    status = "localized" if ok else "failed"
    head = f"<h3>{esc(q['name'])} <span class='status'>{status}</span></h3>"
    if not ok:
        head += f"<p>reason: {esc(q.get('reason', ''))}</p>"
    facts = [f"intrinsics: {esc(q.get('intrinsics', '') or '?')}", f"layer: {esc(q.get('layer', ''))}",
             f"retrieval: {esc(q.get('retrieval', ''))}", f"keypoints {q.get('num_keypoints', 0)}",
             f"inliers {q.get('num_inliers', 0)} / {q.get('num_matches', 0)} (ratio {q.get('inlier_ratio', 0):.2f})"]
    u = q.get("uncertainty")
    if u:
        facts.append(f"1-sigma position {u['position_sigma']:.3g}, rotation {u['rotation_sigma_deg']:.3g} deg")
    if q["name"] in errors and np.isfinite(errors[q["name"]][0]):
        dt, dr = errors[q["name"]]
        facts.append(f"error {dt:.3g} / {dr:.3g} deg")
    timings = q.get("timings", {})
    facts.append("time " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()) + f" (total {sum(timings.values()):.3f} s)")
    body = head + "<p class='kv'>" + " · ".join(facts) + "</p>"
    scores = q.get("retrieved_scores") or [None] * len(q.get("retrieved", []))
    thumbs = "".join(f"<figure><img {LAZY} data-thumb='{esc(side.thumb(n))}' alt='{esc(n)}'><figcaption>{esc(n)}"
                     f"{'' if s is None else f' {s:.3f}'}</figcaption></figure>" for n, s in zip(q.get("retrieved", []), scores))
    if thumbs:
        body += f"<div class='thumbs'>{thumbs}</div>"
    try:
        query = read_image(run.query_images / q["name"])
    except ImageReadError as exc:
        return f"<div class='card {status}'>{body}<p class='note'>query image not shown: {esc(exc)}</p></div>"
    matches = q.get("matches")
    if not matches:
        return f"<div class='card {status}'>{body}<img {LAZY} class='queryimg' src='{jpeg_data_uri(query, 2 * MATCH_PX, MATCH_QUALITY)}'></div>"
    points = np.asarray(matches["points2D"], float).reshape(-1, 2)
    inlier = np.zeros(len(points), bool)
    inlier[np.asarray(matches["inliers"], int)] = True
    name, seen, map_points = side.best_image(q.get("retrieved", []),
                                             np.asarray(matches["point3D_ids"], int)[inlier])
    map_image = side.image(name) if name else None
    picture = draw_matches(query, points[inlier], points[~inlier], map_image, points[inlier][seen], map_points,
                           height=MATCH_PX)
    caption = "inliers (green) over outliers (red)"
    if map_image is not None:
        caption += f"; right: {esc(name)}, which observes {len(seen)} of the inliers (some drawn as lines)"
    elif name:
        caption += f"; map image {esc(name)} not found"
    return (f"<div class='card {status}'>{body}<img {LAZY} class='matchimg' src='{jpeg_data_uri(picture, 4 * MATCH_PX, MATCH_QUALITY)}'>"
            f"<p class='note'>{caption}</p></div>")


FILL_THUMBS = """document.querySelectorAll('img[data-thumb]').forEach(function (img) {
  var uri = window.vlocData.thumbs[img.dataset.thumb]; if (uri) { img.src = uri; } });"""


def write_localization_report(poses: Path | str, out: Path | str, gt: Path | str | None = None,
                              map_dir: Path | str | None = None, map_images: Path | str | None = None) -> Path:
    """Write the report of the run ``poses`` to ``out``; returns ``out``. Failed queries first."""
    from tqdm import tqdm

    run = load_run(poses, map_dir, map_images)
    side = _MapSide(run)
    queries = run.log["queries"]
    side.check(run.log_path, queries)
    errors, error_html = _errors(run, Path(gt) if gt is not None else None)
    ordered = sorted(queries, key=lambda q: (q.get("status") == "localized", q.get("name", "")))
    cards = [_card(q, run, side, errors) for q in tqdm(ordered, desc="report", unit="query")]
    ground = "" if run.geo is None else ground_plane_html(
        run.geo, {side.store.name(r): side.store.centres[r] for r in range(len(side.store))}, read_poses(run.poses))
    body = (f"<h1>vloc localization report: {esc(run.poses.name)}</h1>" + _summary(run) + ground + error_html
            + f"<h2>Queries ({len(queries)}, failed first)</h2>"
            + ("".join(cards) if cards else "<p>This run has no queries.</p>")
            + f"<script>{FILL_THUMBS}</script>")
    data = {"kind": "localization-report", "queries": len(queries),
            "thumbs": {k: v for k, v in side.thumbs.items() if v}}
    return write_page(out, f"vloc report {run.poses.name}", body, data)
