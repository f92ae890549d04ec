"""Evaluation on benchmarks and against reference rasters.

datasets/   benchmark readers, one module per job (label files, label decoding, JSON descriptions,
            OVSS layouts, referring sets, COCO masks, the restricted pickle)
metrics.py  confusion-matrix mIoU/mACC/aAcc and referring gIoU/cIoU/Pr@X, as papers report them
loops.py    scoring a predictor or a folder of saved predictions over a split
predictors.py  the predictor interface, and the engine wrapped as a predictor
reports.py, writers.py, rendering.py  what a run returns, the files it writes, the heat map PNG
scoring.py  a predicted class raster against a reference raster or polygons (Processing)
"""
