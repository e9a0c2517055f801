"""Image retrieval against a map, optionally re-ranked by geometric verification, and hloc-style
pair files (what ``vloc retrieve`` writes).

``pairs.txt`` holds ``query_name map_image_name`` per line, best first per query (the format
hloc's ``pairs_from_retrieval`` writes and its matchers read); the scores sit beside it in
``pairs.json`` (``{"queries": {query: [{"name", "score", "inliers"}, ...]}, ...}``) so that the
pair file stays readable by hloc.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from vloc.config import Preset, RerankConf
from vloc.device import resolve_device
from vloc.features import make_extractor
from vloc.io.files import write_text_atomic
from vloc.io.images import read_image
from vloc.mapping.map_dir import global_conf_in_map, open_map
from vloc.matching import make_matcher
from vloc.retrieval import make_global_model
from vloc.retrieval.index import search
from vloc.retrieval.rerank import Candidate, rerank


class MapRetriever:
    """Global-descriptor retrieval over a map's images, with optional re-ranking. Use :meth:`load`."""

    def __init__(self, map_dir: Path | str, preset: str | Preset | None = None, device: str | None = None):
        store, _, preset = open_map(Path(map_dir), preset)  # an adapted map brings its own global model
        self.device = resolve_device(device)
        self.map_dir, self.preset, self.store = Path(map_dir), preset, store
        self.index = store.read_index()
        self.whitening = store.whitening
        self.features = store.feature_map()  # read per candidate when re-ranking
        self.global_model = make_global_model(global_conf_in_map(preset.global_desc, map_dir), self.device)
        self.extractor = make_extractor(preset.query_features, self.device)
        self.matcher = make_matcher(preset.matcher, self.device)

    @classmethod
    def load(cls, map_dir: Path | str, preset: str | Preset | None = None,
             device: str | None = None) -> "MapRetriever":
        """Load ``map_dir``; ``preset`` defaults to the one the map was built with; ``device`` as
        :meth:`vloc.localization.localizer.Localizer.load`'s."""
        return cls(map_dir, preset, device)

    def retrieve(self, image: np.ndarray, k: int, rerank_conf: RerankConf | None = None) -> list[Candidate]:
        """The ``k`` best map images for ``image`` (``(H, W)`` or ``(H, W, 3)`` uint8), best first.

        With ``rerank_conf``, the top ``max(k, rerank_conf.num_candidates)`` by global descriptor
        are fetched and the first ``num_candidates`` of them re-ranked by RANSAC inliers.
        """
        depth = k if rerank_conf is None else max(k, rerank_conf.num_candidates)
        scores, ids = search(self.index, self.whitening(self.global_model(image)), depth)
        candidates = [Candidate(self.store.name(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        if rerank_conf is not None:
            candidates = rerank(self.extractor(image), candidates, self.features, self.matcher, rerank_conf)
        return candidates[:k]


def retrieve_images(retriever: MapRetriever, image_dir: Path, names: Sequence[str], k: int,
                    rerank_conf: RerankConf | None = None) -> dict[str, list[Candidate]]:
    """Retrieve for every image ``image_dir / name``; an unreadable image raises ``ImageReadError``."""
    return {name: retriever.retrieve(read_image(Path(image_dir) / name), k, rerank_conf)
            for name in tqdm(names, desc="retrieve", unit="img")}


def scores_path_for(pairs: Path) -> Path:
    """The JSON beside a pair file: ``pairs.txt`` -> ``pairs.json``."""
    return pairs.with_suffix(".json") if pairs.suffix != ".json" else pairs.with_suffix(".scores.json")


def write_pairs(path: Path, results: dict[str, list[Candidate]], meta: dict | None = None) -> Path:
    """Write ``query map_image`` lines (best first per query) and the scores JSON; returns its path."""
    path = Path(path)
    write_text_atomic(path, "".join(f"{q} {c.name}\n" for q, cands in results.items() for c in cands))
    scores = dict(meta or {}, queries={q: [dict(name=c.name, score=round(c.score, 6), inliers=c.inliers)
                                          for c in cands] for q, cands in results.items()})
    out = scores_path_for(path)
    write_text_atomic(out, json.dumps(scores, indent=1))
    return out
