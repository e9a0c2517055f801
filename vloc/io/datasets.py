"""The interchange layout ``prepared/NAME/`` (images/, ref_model/, queries.txt, gt_queries.txt)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PreparedSet:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def ref_model(self) -> Path:
        return self.root / "ref_model"

    @property
    def queries(self) -> Path:
        return self.root / "queries.txt"

    @property
    def gt(self) -> Path:
        return self.root / "gt_queries.txt"

    @property
    def meta(self) -> dict:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def open_prepared(root: Path | str) -> PreparedSet:
    ds = PreparedSet(Path(root))
    missing = [p.name for p in (ds.images, ds.ref_model, ds.queries) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{root}: not a prepared set, missing {missing}")
    return ds
