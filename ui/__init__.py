"""QGIS user interface of DR-Seg: the dock widget, the background task and the result layers."""
