"""DR-Seg for QGIS: text in, georeferenced and styled segmentation layers out.

QGIS calls `classFactory`; everything heavy is imported lazily so that `import drseg` (the command
line, the tests) never needs QGIS and QGIS start-up never waits for torch.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import DrSegPlugin

    return DrSegPlugin(iface)
