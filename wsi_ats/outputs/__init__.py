"""What batch prediction writes: ``predictions.csv`` and one folder per slide, every file atomically.

- `atomic`: write-then-rename, the one way wsi-ats writes a file.
- `csvrows`: the rows of ``predictions.csv``.
- `heatmap`: ``attention.png``; `geojson`: ``patches.geojson``; `folder`: the per-slide folder.
"""

from wsi_ats.outputs.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_writer, remove_stale_temps
from wsi_ats.outputs.csvrows import (
    ERROR,
    OK,
    PREDICTIONS_CSV,
    TIMING_COLUMNS,
    Row,
    bytes_columns,
    complete,
    error_row,
    ok_row,
    read_predictions,
    write_predictions,
)
from wsi_ats.outputs.folder import SLIDE_FILES, slide_files, slide_folder_complete, write_slide_folder
from wsi_ats.outputs.geojson import patches_geojson
from wsi_ats.outputs.heatmap import render_heatmap_png

__all__ = [
    "ERROR",
    "OK",
    "PREDICTIONS_CSV",
    "SLIDE_FILES",
    "TIMING_COLUMNS",
    "Row",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "bytes_columns",
    "complete",
    "error_row",
    "ok_row",
    "patches_geojson",
    "read_predictions",
    "remove_stale_temps",
    "render_heatmap_png",
    "slide_files",
    "slide_folder_complete",
    "write_predictions",
    "write_slide_folder",
]
