"""Running the engine on a Dask cluster: one raster split into tasks of blocks (`segment.py`),
or many rasters at once (`core/batch.py`). Dask is imported only when a cluster is asked for, so
the plugin and the plain command line do not need it."""
