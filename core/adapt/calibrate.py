"""Level 1, calibration (no gradient, seconds): λ, and per class its prompt (synonym × template
set) and a logit bias, chosen by coordinate ascent on the training chips' mIoU.

A per-class bias is the per-class threshold of an argmax decision: raising a class's bias by b
lowers the probability it needs to win by the same margin in logits."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .adapter import ClassPrompt
from .features import (LABEL_GRID, TEMPLATE_SETS, chip_features, class_iou, class_logits,
                       labels_at, mean_iou, prompt_embedding)

LAMBDA_GRID = tuple(np.round(np.arange(-0.8, 0.21, 0.1), 2))
BIAS_GRID = tuple(np.round(np.arange(-0.06, 0.0601, 0.005), 3))
ROUNDS = 2


def calibrate(clip, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              synonyms: Optional[Dict[str, List[str]]] = None, monitor=None,
              template_sets: Sequence[str] = tuple(TEMPLATE_SETS)) -> Dict:
    """-> {"bias_lambda": λ, "prompts": {class: ClassPrompt}, "train_miou": float}."""
    synonyms = synonyms or {}
    patches, cls = chip_features(clip, images)
    target = labels_at(labels, LABEL_GRID)
    k = len(class_names)
    candidates = []   # per class: [(text, template key, embedding)]
    for name in class_names:
        texts = list(dict.fromkeys([name] + list(synonyms.get(name, []))))
        candidates.append([(t, key, prompt_embedding(clip, t, key)) for t in texts for key in template_sets])
        if monitor is not None:
            monitor.say(f"Encoded the prompts of '{name}'")
    choice = [0] * k
    bias = torch.zeros(k, device=patches.device)
    lam = float(getattr(clip, "bias_lambda", -0.3))

    def score(lam_, choice_, bias_):
        text = torch.stack([candidates[i][c][2] for i, c in enumerate(choice_)])
        return mean_iou(class_iou(class_logits(patches, cls, text, lam_, bias_), target, k))

    best = score(lam, choice, bias)
    for round_ in range(ROUNDS):
        for value in LAMBDA_GRID:
            trial = score(float(value), choice, bias)
            if trial > best + 1e-9:
                best, lam = trial, float(value)
        for i in range(k):
            for c in range(len(candidates[i])):
                trial_choice = choice[:i] + [c] + choice[i + 1:]
                trial = score(lam, trial_choice, bias)
                if trial > best + 1e-9:
                    best, choice = trial, trial_choice
            for value in BIAS_GRID:
                trial_bias = bias.clone()
                trial_bias[i] = float(value)
                trial = score(lam, choice, trial_bias)
                if trial > best + 1e-9:
                    best, bias = trial, trial_bias
            if monitor is not None:
                monitor.report((round_ * k + i + 1) / (ROUNDS * k), f"Calibrating '{class_names[i]}'")
    prompts = {name: ClassPrompt(candidates[i][choice[i]][0], candidates[i][choice[i]][1],
                                 round(float(bias[i]), 4))
               for i, name in enumerate(class_names)}
    return {"bias_lambda": lam, "prompts": prompts, "train_miou": best}
