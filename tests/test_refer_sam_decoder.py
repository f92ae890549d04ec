"""core/refer/sam_decoder.py against segment_anything's own MaskDecoder (the oracle): the same
low-res logits and IoU predictions for batches of prompt sets of every make-up, with the image
side shared or not."""
import numpy as np
import pytest
import torch

from drseg.core.refer.sam_decoder import decode_masks, supports
from support.tiny_models import build_tiny_sam


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    model = build_tiny_sam()
    # random weights in the layer norms too, so that no term is the identity by chance
    with torch.no_grad():
        for module in model.mask_decoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def prompts(sam, batch, points, box, masks, rng):
    coords = torch.as_tensor(rng.uniform(0, 1023, (batch, points, 2)), dtype=torch.float)
    labels = torch.as_tensor(rng.integers(0, 2, (batch, points)), dtype=torch.int)
    boxes = None
    if box:
        corners = np.sort(rng.uniform(0, 1023, (batch, 2, 2)), axis=1)
        boxes = torch.as_tensor(corners.reshape(batch, 4), dtype=torch.float)
    mask_input = (torch.as_tensor(rng.normal(0, 5, (batch, 1, 256, 256)), dtype=torch.float)
                  if masks else None)
    with torch.no_grad():
        return sam.prompt_encoder(points=(coords, labels) if points else None, boxes=boxes,
                                  masks=mask_input)


@pytest.mark.parametrize("batch,points,box,masks", [
    (1, 1, False, False), (5, 3, False, False), (4, 4, True, False), (3, 0, True, False),
    (3, 5, True, True), (1, 2, True, True)])
@pytest.mark.parametrize("multimask", [True, False])
def test_decode_masks_equals_segment_anything(sam, batch, points, box, masks, multimask):
    rng = np.random.default_rng(batch * 10 + points)
    image = torch.as_tensor(rng.normal(0, 1, (1, 256, 64, 64)), dtype=torch.float)
    pe = sam.prompt_encoder.get_dense_pe()
    sparse, dense = prompts(sam, batch, points, box, masks, rng)
    with torch.no_grad():
        expected_masks, expected_iou = sam.mask_decoder(image, pe, sparse, dense, multimask)
    got_masks, got_iou = decode_masks(sam.mask_decoder, image, pe, sparse, dense, multimask)
    assert supports(sam.mask_decoder)
    assert got_masks.shape == expected_masks.shape == (batch, 3 if multimask else 1, 256, 256)
    torch.testing.assert_close(got_masks, expected_masks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_iou, expected_iou, rtol=1e-4, atol=1e-5)
    # the masks differ between sets: the batch is not one answer repeated
    if batch > 1:
        assert not torch.allclose(got_masks[0], got_masks[1])
