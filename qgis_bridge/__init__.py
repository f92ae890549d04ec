"""The QGIS bridge: what the dock (`ui/`) and the Processing algorithms (`processing/`) share
between QGIS and the engine in `core/`. No widgets here.

- `engine`: the engine gate (lazy import, dependency check, defaults mirrored without torch)
- `sources`: a QGIS layer → the file GDAL reads; an area → an extent in the layer's CRS
- `outputs`: default output folder and file names
- `styling`: renderers of the results (one polygon style, the class raster's palette)
- `results`: a finished run's outputs as styled layers in the project
- `tasks`: every QgsTask, and the one list keeping running tasks alive
"""
