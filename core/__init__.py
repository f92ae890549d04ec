"""DR-Seg engine: raster in by windows, vectors and rasters out. No QGIS import anywhere here."""
