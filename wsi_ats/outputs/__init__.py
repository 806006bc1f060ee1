"""What batch prediction writes: ``predictions.csv`` and one folder per slide, every file atomically.

- `atomic`: write-then-rename, the one way wsi-ats writes a file.
- `csvrows`: the rows of ``predictions.csv``.
- `heatmap`: ``attention.png``; `geojson`: ``patches.geojson``; `folder`: the per-slide folder.
- `names`: a slide id as a folder name (never a path) and as text to show.
- `outdir`: ``OUT`` itself: created, locked for one run at a time, its failures one line each.
"""

from wsi_ats.outputs.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_writer, remove_stale_temps
from wsi_ats.outputs.csvrows import (
    ERROR,
    OK,
    PREDICTIONS_CSV,
    TIMING_COLUMNS,
    UNJUDGED,
    Row,
    bytes_columns,
    complete,
    error_row,
    merge_rows,
    read_predictions,
    result_row,
    write_predictions,
)
from wsi_ats.outputs.folder import SLIDE_FILES, slide_files, slide_folder_complete, write_slide_folder
from wsi_ats.outputs.geojson import patches_geojson
from wsi_ats.outputs.heatmap import render_heatmap_png
from wsi_ats.outputs.names import folder_name, printable
from wsi_ats.outputs.outdir import OutputError, claim_output_folder

__all__ = [
    "ERROR",
    "OK",
    "PREDICTIONS_CSV",
    "SLIDE_FILES",
    "TIMING_COLUMNS",
    "OutputError",
    "UNJUDGED",
    "Row",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "bytes_columns",
    "claim_output_folder",
    "complete",
    "error_row",
    "folder_name",
    "merge_rows",
    "patches_geojson",
    "printable",
    "read_predictions",
    "remove_stale_temps",
    "render_heatmap_png",
    "result_row",
    "slide_files",
    "slide_folder_complete",
    "write_predictions",
    "write_slide_folder",
]
