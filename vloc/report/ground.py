"""The ground plane of a geo-registered map (``map build --gps``): camera positions seen from
above, in metres east and north of the map's WGS84 origin, for ``vloc report`` and ``vloc view``."""
from __future__ import annotations

import numpy as np
import pycolmap

from vloc.mapping.manifest import GeoInfo
from vloc.report.page import figure_html

MAP_COLOUR, QUERY_COLOUR = "rgb(120,120,120)", "rgb(31,119,180)"


def ground_plane_html(geo: GeoInfo | None, map_centres: dict[str, np.ndarray],
                      queries: dict[str, pycolmap.Rigid3d] | None = None) -> str:
    """A top-down plot (east, north; equal scales) of the map's camera centres (name -> ``(3,)``)
    and the localized ``queries``; ``""`` for a map that is not geo-registered (its frame has no
    ground plane)."""
    if geo is None:
        return ""
    import plotly.graph_objects as go

    fig = go.Figure()
    groups = [("map images", MAP_COLOUR, map_centres)]
    if queries:
        groups.append(("localized queries", QUERY_COLOUR, {n: p.inverse().translation for n, p in queries.items()}))
    for label, colour, centres_of in groups:
        names = sorted(centres_of)
        centres = np.array([centres_of[n] for n in names], np.float64).reshape(-1, 3)
        fig.add_trace(go.Scatter(x=centres[:, 0], y=centres[:, 1], mode="markers", name=f"{label} ({len(names)})",
                                 text=names, hovertemplate="%{text}<br>%{x:.1f} m E, %{y:.1f} m N<extra></extra>",
                                 marker=dict(size=6 if label == "map images" else 8, color=colour)))
    fig.update_layout(height=520, margin=dict(l=60, r=20, t=40, b=50), xaxis_title="east (m)",
                      yaxis=dict(title="north (m)", scaleanchor="x", scaleratio=1),
                      title=f"ground plane: metres from {geo.latitude:.6f}, {geo.longitude:.6f} (WGS84)")
    return "<h2>Ground plane</h2>" + figure_html(fig)
