"""The trained path learns: a few dozen steps on a handful of synthetic samples drop the loss,
and the head file, loaded by `refer --prompter`, changes what `refer` returns."""
import copy

import numpy as np
import pytest
import rasterio
import torch

from support.rasters import write_raster
from drseg.core.dense_clip import DenseClip
from drseg.core.refer.head import base_metadata, save_head
from drseg.core.refer.prompter import PromptedSegmenter, PrompterConfig
from drseg.core.refer.request import ReferringRequest
from drseg.core.refer.run import run_referring
from drseg.core.refer.sessions import SESSIONS
from drseg.core.refer.synthetic import synthetic_set, tiny_clip, tiny_sam
from drseg.core.refer.train import TrainConfig, train_prompter
from drseg.core.refer.train_data import TrainingSample

CLIP = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompter")
    clip, tokenizer = tiny_clip(CLIP)
    sam = tiny_sam(64, prompt_dim=32)
    base = base_metadata(clip, sam, "tiny", "tiny")
    torch.manual_seed(0)
    model = PromptedSegmenter(copy.deepcopy(clip), tokenizer, copy.deepcopy(sam),
                              PrompterConfig(width=32, heads=2, lora_rank=4))
    samples = [TrainingSample(s.expression, s.image, s.mask)
               for s in synthetic_set(4, seed=3, size=32)]
    head = str(folder / "head.safetensors")
    untrained = save_head(str(folder / "untrained.safetensors"), model, base)
    result = train_prompter(model, samples, None,
                            TrainConfig(epochs=30, batch_size=4, lr=3e-3, eval_every=30),
                            out_path=head, base=base)
    return dict(clip=clip, tokenizer=tokenizer, sam=sam, samples=samples, head=head,
                untrained=untrained,
                history=result.history, folder=folder)


def test_loss_drops_substantially(trained):
    history = trained["history"]
    assert len(history) == 30
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.75 * first, (first, last)
    assert history[-1]["gIoU"] is not None and history[-1]["cIoU"] is not None


def test_head_changes_refer_output(trained):
    """The head file through `refer --prompter`'s engine path: its answer differs from the same
    head before training and from no head at all (the training-free path on the same models),
    and it is the closest to the truth."""
    sample = trained["samples"][0]
    raster = write_raster(trained["folder"] / "scene.tif", sample.image.transpose(2, 0, 1))
    clip = DenseClip(trained["clip"], trained["tokenizer"], torch.device("cpu"),
                     templates=["a photo of {}."], window_size=32)
    SESSIONS.clear()
    masks = {}
    for name, head in (("none", None), ("untrained", trained["untrained"]),
                       ("learned", trained["head"])):
        request = ReferringRequest(raster=raster, expressions=[sample.expression],
                                   out_vector=str(trained["folder"] / f"{name}.gpkg"),
                                   device="cpu", prompter=head)
        result = run_referring(request, sam=trained["sam"], clip=clip)
        assert (result.session.prompter is None) == (head is None)
        mask = np.zeros(sample.mask.shape, bool)
        for item in result.expressions[0].results:
            mask |= item.mask
        masks[name] = mask
    truth = sample.mask

    def iou(a):
        union = (a | truth).sum()
        return (a & truth).sum() / union if union else 0.0

    for other in ("none", "untrained"):
        assert not np.array_equal(masks[other], masks["learned"])
        assert iou(masks["learned"]) > iou(masks[other]), (other, iou(masks[other]))
