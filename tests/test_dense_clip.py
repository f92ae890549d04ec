"""Dense CLIP on a tiny open_clip model of the real architecture (random weights)."""
import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from support.rasters import write_raster
from support.tiny_models import TINY_CLIP_CONFIG, TINY_DINO_DIMS, load_tiny_clip
from drseg.core.dense_clip import DenseClip, dense_logits, encode_prompts, encode_text
from drseg.core.disk_cache import DiskCache
from drseg.core.models.clip import load_clip
from drseg.core.errors import InputError, ModelError
from drseg.core.segment import SegmentationRequest, run_segmentation


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return load_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)


def dense(tiny_clip, **kw):
    model, tokenizer, _ = tiny_clip
    return DenseClip(model, tokenizer, torch.device("cpu"), templates=["a photo of a {}.", "{}"], **kw)


def test_vanilla_forward_matches_open_clip(tiny_clip):
    """Our re-implemented forward (with positional embeddings) equals open_clip's image encoder."""
    model = tiny_clip[0]
    clip = dense(tiny_clip)
    pixels = torch.randn(2, 3, 224, 224)
    _, cls = clip.dense_features(pixels, vanilla=True)
    with torch.no_grad():
        reference = model.encode_image(pixels)
    assert torch.allclose(cls, reference, atol=1e-5)


def test_self_self_attention_matches_a_direct_computation(tiny_clip):
    model = tiny_clip[0]
    clip = dense(tiny_clip)
    block = model.visual.transformer.resblocks[-1]
    x = torch.randn(1, 5, 64)
    got = clip._self_self_attention(block, x)
    y = block.ln_1(x)[0]
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    q, k, v = (y @ w[i * 64:(i + 1) * 64].T + b[i * 64:(i + 1) * 64] for i in range(3))
    heads = []
    for h in range(2):  # head_width 32 -> 2 heads
        s = slice(32 * h, 32 * (h + 1))
        attn = sum(torch.softmax(t[:, s] @ t[:, s].T / np.sqrt(32), dim=-1) for t in (q, k, v))
        heads.append(attn @ v[:, s])
    expected = block.attn.out_proj(torch.cat(heads, dim=-1))
    assert torch.allclose(got[0], expected, atol=1e-5)


def test_text_embedding_averages_normalised_templates(tiny_clip):
    model, tokenizer, _ = tiny_clip
    clip = dense(tiny_clip)
    got = clip.encode_texts(["water"])[0]
    with torch.no_grad():
        each = F.normalize(model.encode_text(tokenizer(["a photo of a water.", "water"])), dim=-1)
    assert torch.allclose(got, F.normalize(each.mean(0), dim=0), atol=1e-6)
    assert len(clip.templates) == 2 and len(DenseClip(model, tokenizer, torch.device("cpu")).templates) == 80


def test_one_prompt_encoder_serves_dense_clip_and_the_referring_localizer(tiny_clip):
    from drseg.core.refer.localize import Localizer, LocalizerSettings

    model, tokenizer, _ = tiny_clip
    clip = dense(tiny_clip)
    names = ["water", "road", "a red roof"]
    together = encode_prompts(model, tokenizer, torch.device("cpu"), names, clip.templates)
    assert torch.allclose(together, clip.encode_texts(names), atol=1e-6)   # one name per batch
    localizer = Localizer(clip, LocalizerSettings(templates=tuple(clip.templates)))
    for name, expected in zip(names, together):
        assert torch.allclose(localizer.text_embedding(name), expected, atol=1e-6)


def test_dense_logits_without_the_bias_term_are_plain_cosines():
    patches = F.normalize(torch.randn(2, 8, 3, 4), dim=1)
    cls = F.normalize(torch.randn(2, 8), dim=-1)
    text = F.normalize(torch.randn(5, 8), dim=-1)
    expected = torch.stack([torch.stack([(patches[b] * text[q][:, None, None]).sum(0)
                                         for q in range(5)]) for b in range(2)])
    assert torch.allclose(dense_logits(patches, None, text, -0.3), expected, atol=1e-6)
    assert torch.allclose(dense_logits(patches, cls, text, 0.0), expected, atol=1e-6)
    shifted = dense_logits(patches, cls, text, -0.3)
    assert torch.allclose(shifted - expected, -0.3 * (cls @ text.T)[:, :, None, None].expand_as(shifted),
                          atol=1e-6)


def test_logits_follow_the_global_bias_formula(tiny_clip):
    clip = dense(tiny_clip, bias_lambda=-0.3)
    clip.set_queries(["building", "water", "road"])
    images = np.random.default_rng(0).integers(0, 255, (1, 3, 224, 320), dtype=np.uint8)
    logits = clip.score_windows(images)
    assert logits.shape == (1, 3, 14, 20)  # non-square window: positional embedding interpolated
    patches, cls = clip.dense_features(clip.normalise(images))
    patches, cls = F.normalize(patches, dim=1), F.normalize(cls, dim=-1)
    t = clip.text_features
    expected = torch.einsum("bdhw,qd->bqhw", patches, t) - 0.3 * (cls @ t.T)[:, :, None, None]
    assert np.allclose(logits, expected.numpy(), atol=1e-5)


def test_end_to_end_output_grid_equals_input(tmp_path, tiny_clip):
    _, _, config = tiny_clip
    data = np.random.default_rng(1).integers(0, 255, (3, 150, 260), dtype=np.uint8)
    transform = rasterio.transform.from_origin(300000.0, 5000000.0, 0.3, 0.3)
    path = write_raster(tmp_path / "in.tif", data, crs="EPSG:32631", transform=transform)
    result = run_segmentation(SegmentationRequest(
        raster=path, classes="building; road,street; water", out_vector=str(tmp_path / "o.gpkg"),
        out_raster=str(tmp_path / "o.tif"), clip_model=config, clip_weights="random", device="cpu"))
    with rasterio.open(result.raster_path) as out:
        assert (out.width, out.height, out.crs.to_epsg()) == (260, 150, 32631)
        assert out.transform.almost_equals(transform)
        classes = out.read(1)
    assert set(np.unique(classes)) <= {0, 1, 2, 3}
    assert sum(result.class_pixels.values()) == 150 * 260
    assert result.polygon_count > 0 and result.device == "cpu"


def test_checkpoint_file_round_trip_and_wrong_architecture(tmp_path, tiny_clip):
    model, _, config = tiny_clip
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded, _ = load_clip(config, str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    other = dict(TINY_CLIP_CONFIG, embed_dim=16)
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    with pytest.raises(ModelError, match="do not fit"):
        load_clip(str(other_path), str(path))


def test_unknown_model_and_offline_weights_are_clear_errors(monkeypatch, tmp_path):
    import huggingface_hub.constants
    from drseg.core.models import clip as clip_models

    monkeypatch.setenv("DRSEG_CACHE_DIR", str(tmp_path))
    with pytest.raises(InputError, match="Unknown CLIP model"):
        load_clip("ViT-Nope-99", "openai")
    with pytest.raises(InputError, match="neither a file nor a pretrained tag"):
        load_clip("ViT-B-16", "no-such-tag")
    monkeypatch.setattr(clip_models, "_cached_hub_file", lambda hub: None)
    from drseg.core.models import download
    monkeypatch.setattr(clip_models, "server_reachable", lambda url, timeout=5.0: False)
    monkeypatch.setattr(download, "server_reachable", lambda url, timeout=5.0: False)
    # 'openai' for ViT-B-16 is a catalog model: the message names the URL and the import command.
    with pytest.raises(ModelError, match="'clip-vit-b-16-openai' .* are not in the model cache .*"
                                         "vit_base_patch16_clip_224.openai.*models import"):
        load_clip("ViT-B-16", "openai")
    # Other open_clip tags go through open_clip's own download.
    with pytest.raises(ModelError, match="Cannot reach huggingface.co .*ViT-B-16/laion2b_s34b_b88k"):
        load_clip("ViT-B-16", "laion2b_s34b_b88k")
    monkeypatch.setattr(clip_models, "server_reachable", lambda url, timeout=5.0: True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="Could not download the CLIP weights ViT-B-16/laion2b_s34b_b88k"):
        load_clip("ViT-B-16", "laion2b_s34b_b88k")


def test_catalog_weights_download_verify_and_load(monkeypatch, tmp_path, tiny_clip):
    """A catalog CLIP is fetched once over HTTP (here 127.0.0.1), verified, cached and loaded."""
    import functools
    import hashlib
    import http.server
    import threading

    import open_clip
    from safetensors.torch import save_file
    from drseg.core.models import catalog

    model, _, config = tiny_clip
    arch = tmp_path / "drseg-tiny-test.json"
    arch.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(str(arch))
    served = tmp_path / "served"
    served.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(served / "tiny.safetensors"))
    data = (served / "tiny.safetensors").read_bytes()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        entry = catalog.parse_catalog({"models": [{
            "name": "tiny-clip-test", "family": "clip", "architecture": "drseg-tiny-test",
            "url": f"http://127.0.0.1:{server.server_port}/tiny.safetensors",
            "file": "tiny-clip-test.safetensors", "licence": "test", "good_for": "tests",
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]})
        monkeypatch.setattr(catalog, "list_models", lambda family=None: entry)
        monkeypatch.setenv("DRSEG_CACHE_DIR", str(tmp_path / "cache"))
        loaded, _ = load_clip("ViT-B-16", "tiny-clip-test")
        loaded_again, _ = load_clip("ViT-B-16", "tiny-clip-test")
    finally:
        server.shutdown()
    assert len(requests) == 1  # the second load came from the verified cache
    assert (tmp_path / "cache" / "tiny-clip-test.safetensors").read_bytes() == data
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
        assert torch.equal(loaded_again.state_dict()[key], value)


def test_drseg_method_end_to_end_with_tiny_clip_and_dino(tmp_path, tiny_clip, monkeypatch):
    """DR-Seg through the engine's request path: a tiny DINO checkpoint of the real timm
    architecture, the modules switched by the request, output on the input's grid."""
    from drseg.core.models import shared as model_cache
    from drseg.core.drseg.dino import make_dino

    _, _, config = tiny_clip
    dino = make_dino("dino_vits8", **TINY_DINO_DIMS)
    weights = tmp_path / "dino.pth"
    torch.save(dino.model.state_dict(), weights)
    built = []
    real_load = model_cache.dino_backbone

    def tiny_dino(name, path, device="auto"):
        from drseg.core.drseg.dino import load_dino_checkpoint
        built.append((name, path))
        return load_dino_checkpoint(name, path, **TINY_DINO_DIMS)

    monkeypatch.setattr(model_cache, "dino_backbone", tiny_dino)
    data = np.random.default_rng(2).integers(0, 255, (3, 130, 170), dtype=np.uint8)
    path = write_raster(tmp_path / "in.tif", data, crs="EPSG:3857")
    outputs = {}
    for name, flags in {"full": {}, "no_rectify": {"rectify": False}}.items():
        result = run_segmentation(SegmentationRequest(
            raster=path, classes="building; water; tree", out_raster=str(tmp_path / f"{name}.tif"),
            clip_model=config, clip_weights="random", device="cpu", method="drseg",
            dino_model="dino_vits8", dino_weights=str(weights), **flags))
        assert result.method == "drseg" and result.note == ""
        with rasterio.open(result.raster_path) as out:
            assert (out.width, out.height, out.crs.to_epsg()) == (170, 130, 3857)
            outputs[name] = out.read(1)
    assert built and built[0] == ("dino_vits8", str(weights))
    # Without rectification DR-Seg is plain dense CLIP: same map as the 'clip' method.
    plain = run_segmentation(SegmentationRequest(
        raster=path, classes="building; water; tree", out_raster=str(tmp_path / "clip.tif"),
        clip_model=config, clip_weights="random", device="cpu", method="clip"))
    with rasterio.open(plain.raster_path) as out:
        assert np.array_equal(out.read(1), outputs["no_rectify"])
    assert plain.method == "clip"


def test_drseg_without_dino_weights(tmp_path, tiny_clip, monkeypatch):
    monkeypatch.setenv("DRSEG_CACHE_DIR", str(tmp_path / "empty-cache"))
    _, _, config = tiny_clip
    path = write_raster(tmp_path / "in.tif", np.full((3, 40, 40), 90, np.uint8))
    request = dict(raster=path, classes="water; road", out_raster=str(tmp_path / "o.tif"),
                   clip_model=config, clip_weights="random", device="cpu")
    with pytest.raises(InputError, match="DR-Seg needs DINO weights"):
        run_segmentation(SegmentationRequest(method="drseg", **request))
    result = run_segmentation(SegmentationRequest(method="auto", **request))
    assert result.method == "clip" and "no DINO weights" in result.note
    with pytest.raises(ModelError, match="not in the model cache"):
        run_segmentation(SegmentationRequest(method="drseg", dino_weights="dino-vit-s8", **request))


def test_text_embeddings_are_encoded_once_per_query(tiny_clip):
    clip = dense(tiny_clip)
    encoded = []
    real = clip.encode_texts
    clip.encode_texts = lambda names, *rest: (encoded.append(list(names)), real(names))[1]
    clip.set_queries(["water", "road"])
    first = clip.text_features.clone()
    clip.set_queries(["road", "building", "water"])
    assert encoded == [["water", "road"], ["building"]]
    assert torch.equal(clip.text_features[0], first[1]) and torch.equal(clip.text_features[2], first[0])
    assert torch.allclose(clip.text_features[1], real(["building"])[0])


def test_text_tower_on_trimmed_tokens_equals_open_clip(tiny_clip):
    model, tokenizer, _ = tiny_clip
    tokens = tokenizer(["a", "a satellite image of the largest pond north of the road .", "{}"])
    with torch.no_grad():
        expected = model.encode_text(tokens)
        got = encode_text(model, tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_query_embeddings_come_back_from_the_disk_cache(tiny_clip, tmp_path):
    first = dense(tiny_clip)
    first.disk_cache = DiskCache(str(tmp_path))
    first.set_queries(["water", "road"])
    assert first.text_encodes == 2
    second = dense(tiny_clip)                          # another process: an empty memory cache
    second.disk_cache = DiskCache(str(tmp_path))
    second.set_queries(["road", "tree"])
    assert second.text_encodes == 1                    # only 'tree' went through the text tower
    assert torch.equal(second.text_features[0], first.text_features[1])
    other = DenseClip(tiny_clip[0], tiny_clip[1], torch.device("cpu"), templates=["{}"])
    other.disk_cache = DiskCache(str(tmp_path))
    other.set_queries(["road"])                        # other templates: another key
    assert other.text_encodes == 1


def test_batched_text_encoding_equals_one_name_at_a_time(tiny_clip):
    model, tokenizer, _ = tiny_clip
    clip = DenseClip(model, tokenizer, torch.device("cpu"))           # the 80 ImageNet templates
    names = ["water", "a red roof", "road", "tree", "bare soil"]
    one_by_one = torch.cat([encode_prompts(model, tokenizer, torch.device("cpu"), [name],
                                           clip.templates) for name in names])
    started = []
    for batch_size in (None, 7, 80, 256):                  # batches cutting through names too
        started.clear()
        got = encode_prompts(model, tokenizer, torch.device("cpu"), names, clip.templates,
                             batch_size=batch_size, started=started.append)
        torch.testing.assert_close(got, one_by_one, rtol=1e-5, atol=1e-6)
        assert started == list(range(len(names)))          # each name once, in order
    reported = []
    clip.set_queries(["road", "water", "road", "tree"], progress=reported.append)
    assert reported == [0, 1, 3]                            # query indices, each name once
    torch.testing.assert_close(clip.text_features,
                               one_by_one[[2, 0, 2, 3]], rtol=1e-5, atol=1e-6)
