"""Self-contained HTML pages a person opens: localization reports (:mod:`.localization`), the
interactive 3D view of a map (:mod:`.view3d`) and a map's health (:mod:`.map_health`). Each page is
one file with its images and scripts inline (plotly.js embedded), so it opens offline."""
