"""Processing provider `drseg`."""
from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

ICON_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "resources", "icon.svg")


class DrSegProvider(QgsProcessingProvider):
    def id(self) -> str:  # noqa: A003
        return "drseg"

    def name(self) -> str:
        return "DR-Seg"

    def longName(self) -> str:  # noqa: N802
        return "DR-Seg: segmentation of rasters from text"

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def loadAlgorithms(self) -> None:  # noqa: N802
        from .adapt_algorithm import AdaptModelAlgorithm
        from .refer_algorithm import ReferringSegmentationAlgorithm
        from .score_algorithm import ScoreClassificationAlgorithm
        from .segment_algorithm import OpenVocabSegmentationAlgorithm

        self.addAlgorithm(OpenVocabSegmentationAlgorithm())
        self.addAlgorithm(ScoreClassificationAlgorithm())
        self.addAlgorithm(ReferringSegmentationAlgorithm())
        self.addAlgorithm(AdaptModelAlgorithm())

    # Polygons go through QGIS feature sinks (any vector format); the class raster is a GeoTIFF.
    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def defaultVectorFileExtension(self, hasGeometry=True):  # noqa: N802, N803
        return "gpkg"

    def defaultRasterFileExtension(self):  # noqa: N802
        return "tif"
