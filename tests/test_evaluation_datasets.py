"""core/evaluation/datasets/: benchmark readers on tiny data sets written here in each released
and converted layout.

Every expected label below is decoded by hand from the dataset's documented encoding
(e.g. LoveDA raw 0 = no-data, 1..7 = classes 0..6; Potsdam white = impervious surface).
"""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from drseg.core.errors import InputError
from drseg.core.evaluation.datasets import (IGNORE_INDEX, OvssDataset, ReferDataset, dataset_spec,
                                            get_dataset, list_datasets, polygons_to_mask,
                                            rle_counts_from_string, rle_decode, safe_load_pickle,
                                            segmentation_to_mask)

X = IGNORE_INDEX


def png(path, array, mode=None):
    """mode "P": a palette image whose pixel values are class indices (as mmseg converters write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, np.uint8))
    if mode == "P":
        image = Image.frombytes("P", image.size, image.tobytes())
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)
    return str(path)


def tif(path, array):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array, np.uint8)
    data = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype="uint8", crs="EPSG:32632",
                       transform=from_origin(300000.0, 5600000.0, 0.5, 0.5)) as dst:
        dst.write(data)
    return str(path)


def rgb_image(h=2, w=3):
    return np.full((h, w, 3), 120, np.uint8)


def colour_label(rows):
    """rows of RGB triples -> H x W x 3"""
    return np.array(rows, np.uint8)


# ----------------------------------------------------------------------------------------
# OVSS
# ----------------------------------------------------------------------------------------

LOVEDA_RAW = [[0, 1, 2], [7, 3, 255]]
LOVEDA_DECODED = [[X, 0, 1], [6, 2, X]]       # 0 no-data; 255 unknown -> ignored


def test_builtin_list_and_aliases():
    names = list_datasets()
    for name in ["OpenEarthMap", "LoveDA", "iSAID", "Potsdam", "Vaihingen", "UAVid", "UDD5", "VDD",
                 "RRSIS-D", "RefSegRS", "RISBench"]:
        assert name in names
    assert set(list_datasets("refer")) == {"RRSIS-D", "RefSegRS", "RISBench"}
    assert dataset_spec("oem")["name"] == "OpenEarthMap"
    assert dataset_spec("rrsis_d")["name"] == "RRSIS-D"
    assert dataset_spec("LOVEDA")["prob_thd"] == 0.3


@pytest.mark.parametrize("name,thd,bg", [("OpenEarthMap", 0.1, 0), ("LoveDA", 0.3, 0),
                                         ("iSAID", 0.4, 0), ("Potsdam", 0.1, 5),
                                         ("Vaihingen", 0.1, 5), ("UAVid", 0.3, 0),
                                         ("UDD5", 0.4, 4), ("VDD", 0.3, 0)])
def test_protocol_settings_match_design(name, thd, bg):
    spec = dataset_spec(name)
    assert spec["prob_thd"] == thd
    assert spec["background_index"] == bg
    assert spec["ignore_index"] == 255


def test_loveda_released_layout(tmp_path):
    png(tmp_path / "Val/Urban/images_png/3514.png", rgb_image())
    png(tmp_path / "Val/Urban/masks_png/3514.png", LOVEDA_RAW)
    png(tmp_path / "Val/Rural/images_png/10.png", rgb_image())
    png(tmp_path / "Val/Rural/masks_png/10.png", [[1, 1, 1], [1, 1, 1]])
    png(tmp_path / "Train/Urban/images_png/1.png", rgb_image())
    png(tmp_path / "Train/Urban/masks_png/1.png", [[2, 2, 2], [2, 2, 2]])
    ds = get_dataset("loveda", tmp_path)
    assert isinstance(ds, OvssDataset)
    assert (ds.name, ds.split, ds.layout, len(ds)) == ("LoveDA", "val", "released", 2)
    assert ds.classes == ["background", "building", "road", "water", "barren", "forest",
                          "agricultural"]
    assert ds.prompt == "background; building,roof,house; road; water; barren; forest; agricultural"
    assert (ds.background_index, ds.ignore_index, ds.threshold) == (0, 255, 0.3)
    keys = [s.key for s in ds]
    assert keys == ["Val/Rural/masks_png/10", "Val/Urban/masks_png/3514"]
    stats = {}
    label = ds[1].load_label(stats)
    assert label.dtype == np.uint8
    assert label.tolist() == LOVEDA_DECODED
    assert stats == {"values": {255: 1}}        # 255 is not a released LoveDA value
    assert ds[0].load_label().tolist() == [[0, 0, 0], [0, 0, 0]]
    train = get_dataset("LoveDA", tmp_path, split="train")
    assert [s.key for s in train] == ["Train/Urban/masks_png/1"]
    assert train[0].image_path == str(tmp_path / "Train/Urban/images_png/1.png")


def test_loveda_converted_layouts(tmp_path):
    png(tmp_path / "img_dir/val/5.png", rgb_image())
    png(tmp_path / "ann_dir/val/5.png", LOVEDA_RAW)
    ds = get_dataset("LoveDA", tmp_path, "val")
    assert ds.layout == "converted"
    assert ds[0].load_label().tolist() == LOVEDA_DECODED
    shifted = get_dataset("LoveDA", tmp_path, "val", layout="converted_shifted")
    stats = {}
    # already-shifted files: 0..6 are classes, 255 no-data; 7 is unknown
    assert shifted[0].load_label(stats).tolist() == [[0, 1, 2], [X, 3, X]]
    assert stats == {"values": {7: 1}}


def test_loveda_converted_encoding_is_probed(tmp_path):
    png(tmp_path / "img_dir/val/1.png", rgb_image())
    png(tmp_path / "img_dir/val/2.png", rgb_image())
    png(tmp_path / "ann_dir/val/1.png", [[0, 1, 2], [3, 4, 5]])
    png(tmp_path / "ann_dir/val/2.png", [[6, 6, 255], [0, 0, 0]])   # 255: no-data, shifted files
    ds = get_dataset("LoveDA", tmp_path)
    assert ds.layout == "converted_shifted"
    assert any("ann_dir/val/2.png holds [255]" in w for w in ds.warnings)
    assert ds[1].load_label().tolist() == [[6, 6, X], [0, 0, 0]]
    # forcing the layout skips the probe
    assert get_dataset("LoveDA", tmp_path, layout="converted")[1].load_label().tolist() == \
        [[5, 5, X], [X, X, X]]
    # neither 7 nor 255 anywhere: mmseg's (unshifted) reading, with a warning
    png(tmp_path / "ann_dir/val/2.png", [[6, 6, 1], [1, 1, 1]])
    ds = get_dataset("LoveDA", tmp_path)
    assert ds.layout == "converted"
    assert any("Could not tell" in w and "--layout converted_shifted" in w for w in ds.warnings)


def test_openearthmap_released_with_split_list(tmp_path):
    tif(tmp_path / "aachen/images/aachen_1.tif", rgb_image())
    tif(tmp_path / "aachen/labels/aachen_1.tif", [[0, 8, 5], [9, 1, 2]])
    tif(tmp_path / "aachen/images/aachen_2.tif", rgb_image())
    tif(tmp_path / "aachen/labels/aachen_2.tif", [[1, 1, 1], [1, 1, 1]])
    (tmp_path / "val.txt").write_text("aachen_1.tif\n")
    (tmp_path / "train.txt").write_text("aachen_2.tif\n")
    ds = get_dataset("OpenEarthMap", tmp_path, "val")
    assert ds.layout == "released" and len(ds) == 1
    assert ds.classes[8] == "building" and ds.class_texts[8] == "building,roof,house"
    stats = {}
    assert ds[0].load_label(stats).tolist() == [[0, 8, 5], [X, 1, 2]]   # 9 is no OEM class
    assert stats == {"values": {9: 1}}
    assert [s.key for s in get_dataset("oem", tmp_path, "train")] == ["aachen/labels/aachen_2"]


def test_openearthmap_released_without_list_says_so(tmp_path):
    tif(tmp_path / "aachen/images/aachen_1.tif", rgb_image())
    tif(tmp_path / "aachen/labels/aachen_1.tif", np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"split list .*val\.txt is missing"):
        get_dataset("OpenEarthMap", tmp_path, "val")


def test_openearthmap_converted(tmp_path):
    tif(tmp_path / "img_dir/val/koeln_5.tif", rgb_image())
    tif(tmp_path / "ann_dir/val/koeln_5.tif", [[3, 4, 6], [7, 0, 8]])
    ds = get_dataset("OpenEarthMap", tmp_path)
    assert ds.layout == "converted"
    assert ds[0].load_label().tolist() == [[3, 4, 6], [7, 0, 8]]


def test_isaid_released_colours(tmp_path):
    png(tmp_path / "val/images/P0003.png", rgb_image())
    png(tmp_path / "val/Semantic_masks/images/P0003_instance_color_RGB.png", colour_label([
        [[0, 0, 0], [0, 0, 63], [0, 127, 255]],
        [[0, 100, 155], [1, 2, 3], [0, 63, 63]]]))
    ds = get_dataset("iSAID", tmp_path, "val")
    assert ds.layout == "released" and len(ds) == 1 and ds.num_classes == 16
    stats = {}
    # background, ship, plane / harbor, unknown colour -> background (converter rule), storage tank
    assert ds[0].load_label(stats).tolist() == [[0, 1, 14], [15, 0, 2]]
    assert stats == {"colors": {(1, 2, 3): 1}}


def test_isaid_converted_indices(tmp_path):
    png(tmp_path / "img_dir/val/P0003_0_896_0_896.png", rgb_image())
    png(tmp_path / "ann_dir/val/P0003_0_896_0_896_instance_color_RGB.png",
        [[0, 15, 255], [3, 4, 5]], mode="P")
    ds = get_dataset("isaid", tmp_path)
    assert ds.layout == "converted"
    assert ds[0].label_relpath == "ann_dir/val/P0003_0_896_0_896_instance_color_RGB.png"
    assert ds[0].load_label().tolist() == [[0, 15, X], [3, 4, 5]]


POTSDAM_COLOURS = [[[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 0, 0]],
                   [[0, 255, 0], [255, 255, 0], [255, 0, 0], [10, 10, 10]]]
POTSDAM_DECODED = [[0, 1, 2, X], [3, 4, 5, X]]


def test_potsdam_released_val_tiles_and_colours(tmp_path):
    tif(tmp_path / "2_Ortho_RGB/top_potsdam_2_13_RGB.tif", rgb_image(2, 4))     # val tile
    tif(tmp_path / "2_Ortho_RGB/top_potsdam_2_10_RGB.tif", rgb_image(2, 4))     # train tile
    for tile in ("2_13", "2_10"):
        tif(tmp_path / f"5_Labels_all_noBoundary/top_potsdam_{tile}_label_noBoundary.tif",
            colour_label(POTSDAM_COLOURS))
    ds = get_dataset("Potsdam", tmp_path)
    assert ds.layout == "released"
    assert [Path(s.image_path).name for s in ds] == ["top_potsdam_2_13_RGB.tif"]
    assert ds.classes == ["impervious surface", "building", "low vegetation", "tree", "car",
                          "clutter"]
    assert ds.class_texts[0] == "road,parking lot" and ds.background_index == 5
    stats = {}
    assert ds[0].load_label(stats).tolist() == POTSDAM_DECODED
    assert stats == {"colors": {(10, 10, 10): 1}}   # black boundary is known, grey is not
    train = get_dataset("Potsdam", tmp_path, "train")
    assert [Path(s.image_path).name for s in train] == ["top_potsdam_2_10_RGB.tif"]


def test_potsdam_released_rejects_single_band_labels(tmp_path):
    tif(tmp_path / "2_Ortho_RGB/top_potsdam_2_13_RGB.tif", rgb_image())
    tif(tmp_path / "5_Labels_all/top_potsdam_2_13_label.tif", np.ones((2, 3)))
    ds = get_dataset("Potsdam", tmp_path)
    with pytest.raises(InputError, match="expects RGB colour-coded labels"):
        ds[0].load_label()


def test_potsdam_converted_reduce_zero_label(tmp_path):
    png(tmp_path / "img_dir/val/2_13_0_0_512_512.png", rgb_image())
    png(tmp_path / "ann_dir/val/2_13_0_0_512_512.png", [[0, 1, 2], [4, 6, 7]])
    ds = get_dataset("Potsdam", tmp_path)
    assert ds.layout == "converted"
    stats = {}
    assert ds[0].load_label(stats).tolist() == [[X, 0, 1], [3, 5, X]]
    assert stats == {"values": {7: 1}}


def test_vaihingen_released_eroded_then_complete(tmp_path):
    tif(tmp_path / "top/top_mosaic_09cm_area6.tif", rgb_image(2, 4))    # val
    tif(tmp_path / "top/top_mosaic_09cm_area1.tif", rgb_image(2, 4))    # train
    eroded = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
    tif(tmp_path / eroded / "top_mosaic_09cm_area6_noBoundary.tif", colour_label(POTSDAM_COLOURS))
    ds = get_dataset("Vaihingen", tmp_path, "val")
    assert [Path(s.image_path).name for s in ds] == ["top_mosaic_09cm_area6.tif"]
    assert ds[0].load_label().tolist() == POTSDAM_DECODED
    # the complete (not eroded) ground truth is used when no eroded one is there
    other = tmp_path / "other"
    tif(other / "top/top_mosaic_09cm_area6.tif", rgb_image(2, 4))
    tif(other / "gts_for_participants/top_mosaic_09cm_area6.tif", colour_label(POTSDAM_COLOURS))
    assert get_dataset("Vaihingen", other)[0].label_relpath == \
        "gts_for_participants/top_mosaic_09cm_area6.tif"


def test_uavid_released_sequences_and_car_colours(tmp_path):
    label = colour_label([[[0, 0, 0], [128, 0, 0], [128, 64, 128]],
                          [[192, 0, 192], [64, 0, 128], [64, 64, 0]]])
    for seq in ("seq16", "seq17"):
        png(tmp_path / f"uavid_val/{seq}/Images/000000.png", rgb_image())
        png(tmp_path / f"uavid_val/{seq}/Labels/000000.png", label)
    ds = get_dataset("UAVid", tmp_path, "val")
    assert ds.layout == "released"
    assert [s.key for s in ds] == ["uavid_val/seq16/Labels/000000", "uavid_val/seq17/Labels/000000"]
    # clutter, building, road / static car, moving car (both car), human
    assert ds[0].load_label().tolist() == [[0, 1, 2], [3, 3, 6]]


def test_uavid_converted_default_split_is_test(tmp_path):
    png(tmp_path / "img_dir/test/seq21_000000_0_1080_0_1280.png", rgb_image())
    png(tmp_path / "ann_dir/test/seq21_000000_0_1080_0_1280.png", [[0, 6, 255], [3, 4, 5]], mode="P")
    ds = get_dataset("UAVid", tmp_path)
    assert (ds.split, ds.layout) == ("test", "converted")
    assert ds[0].load_label().tolist() == [[0, 6, X], [3, 4, 5]]


def test_udd5_index_and_colour_ground_truth(tmp_path):
    png(tmp_path / "val/src/DJI_0001.JPG", rgb_image())
    png(tmp_path / "val/gt/DJI_0001.png", [[0, 1, 2], [3, 4, 5]])
    png(tmp_path / "val/src/DJI_0002.JPG", rgb_image())
    png(tmp_path / "val/gt/DJI_0002.png", colour_label([[[107, 142, 35], [102, 102, 156], [0, 0, 0]],
                                                        [[128, 64, 128], [0, 0, 142], [9, 9, 9]]]))
    ds = get_dataset("UDD5", tmp_path)
    assert len(ds) == 2 and ds.classes[4] == "other" and ds.background_index == 4
    stats = {}
    assert ds[0].load_label(stats).tolist() == [[0, 1, 2], [3, 4, X]]
    assert ds[1].load_label(stats).tolist() == [[0, 1, 4], [2, 3, X]]
    assert stats == {"values": {5: 1}, "colors": {(9, 9, 9): 1}}


def test_vdd_test_split_and_rgb_without_palette(tmp_path):
    png(tmp_path / "test/src/00001.JPG", rgb_image())
    png(tmp_path / "test/gt/00001.png", [[0, 1, 2], [4, 5, 6]])
    ds = get_dataset("VDD", tmp_path)
    assert ds.split == "test" and ds.classes[1] == "wall" and ds.class_texts[1] == "facade"
    assert ds[0].load_label().tolist() == [[0, 1, 2], [4, 5, 6]]
    # a grey label saved as RGB is fine; real colours cannot be decoded without a palette
    grey = np.repeat(np.array([[0, 1, 2], [3, 3, 3]], np.uint8)[..., None], 3, axis=2)
    png(tmp_path / "grey.png", grey)
    assert ds.load_label_file(tmp_path / "grey.png").tolist() == [[0, 1, 2], [3, 3, 3]]
    png(tmp_path / "colour.png", colour_label([[[1, 2, 3]]]))
    with pytest.raises(InputError, match="no palette"):
        ds.load_label_file(tmp_path / "colour.png")


def test_unknown_dataset_and_bad_roots(tmp_path):
    with pytest.raises(InputError, match="Unknown data set 'cityscapes'. Known: .*LoveDA"):
        get_dataset("cityscapes", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        get_dataset("LoveDA", tmp_path / "nowhere")
    with pytest.raises(InputError, match="Unknown split 'valid' for LoveDA; expected one of "
                                         "train, val, test"):
        get_dataset("LoveDA", tmp_path, "valid")
    with pytest.raises(InputError) as info:
        get_dataset("LoveDA", tmp_path, "val")
    message = str(info.value)
    assert "No LoveDA images of split 'val'" in message
    assert "Val/*/images_png/*" in message and "img_dir/val/*" in message
    with pytest.raises(InputError, match="Unknown layout 'zip'"):
        get_dataset("LoveDA", tmp_path, layout="zip")


def test_missing_ground_truth_is_reported(tmp_path):
    png(tmp_path / "img_dir/val/1.png", rgb_image())
    with pytest.raises(InputError, match=r"No ground truth for LoveDA image .*1\.png: expected "
                                         r".*ann_dir/val/1\.png"):
        get_dataset("LoveDA", tmp_path)
    png(tmp_path / "ann_dir/val/1.png", np.ones((2, 3)))
    png(tmp_path / "img_dir/val/2.png", rgb_image())
    with pytest.raises(InputError, match=r"1 of 2 LoveDA images have no ground-truth label"):
        get_dataset("LoveDA", tmp_path)


def test_custom_json_description(tmp_path):
    spec = {"name": "Farm", "task": "ovss", "classes": ["soil", "crop,wheat"],
            "background_index": 0, "ignore_index": 255, "prob_thd": 0.2,
            "default_split": "val", "splits": ["val"],
            "layouts": [{"name": "flat", "images": ["images/*"], "image_ext": [".png"],
                         "labels": ["labels/{stem}_gt.png"],
                         "index_map": {"values": {"10": 0, "20": 1, "0": "ignore"}}}]}
    path = tmp_path / "farm.json"
    path.write_text(json.dumps(spec))
    png(tmp_path / "data/images/a.png", rgb_image(1, 4))
    png(tmp_path / "data/labels/a_gt.png", [[10, 20, 0, 30]])
    ds = get_dataset(str(path), tmp_path / "data")
    assert ds.name == "Farm" and ds.prompt == "soil; crop,wheat"
    stats = {}
    assert ds[0].load_label(stats).tolist() == [[0, 1, X, X]]
    assert stats == {"values": {30: 1}}
    spec["background_index"] = 7
    path.write_text(json.dumps(spec))
    with pytest.raises(InputError, match="background_index"):
        get_dataset(str(path), tmp_path / "data")


# ----------------------------------------------------------------------------------------
# RLE, polygons, pickle
# ----------------------------------------------------------------------------------------

def test_rle_compressed_string_decoded_by_hand():
    # "0X15F": '0' -> 0; 'X','1' -> 8 + 1*32 = 40; '5' -> 5; 'F' = 22 with the sign bit ->
    # -10, a delta on the count two back: 40 - 10 = 30.  Runs 0 zeros, 40 ones, 5 zeros, 30 ones
    assert rle_counts_from_string("0X15F") == [0, 40, 5, 30]
    assert rle_counts_from_string(b"0X15F") == [0, 40, 5, 30]
    mask = rle_decode({"size": [5, 15], "counts": "0X15F"})
    expected = np.ones((5, 15), bool)
    expected[:, 8] = False        # column-major: 40 ones fill columns 0-7, 5 zeros column 8
    assert (mask == expected).all()


def test_rle_uncompressed_and_errors():
    # column-major runs 3 zeros, 2 ones, 1 zero on a 2x3 grid
    assert rle_decode({"size": [2, 3], "counts": [3, 2, 1]}).astype(int).tolist() == [[0, 0, 1],
                                                                                     [0, 1, 0]]
    with pytest.raises(InputError, match="cover 5 pixels, not 2x3"):
        rle_decode({"size": [2, 3], "counts": [3, 2]})
    with pytest.raises(InputError, match="ends in the middle"):
        rle_counts_from_string("X")
    with pytest.raises(InputError, match="needs \"size\""):
        rle_decode({"counts": [1]})


def test_segmentation_forms():
    parts = [{"size": [2, 2], "counts": [0, 1, 3]}, {"size": [2, 2], "counts": [3, 1]}]
    assert segmentation_to_mask(parts, 2, 2).astype(int).tolist() == [[1, 0], [0, 1]]
    square = polygons_to_mask([[1, 1, 3, 1, 3, 3, 1, 3]], 5, 5)
    assert square.sum() == 9 and square[1:4, 1:4].all()
    assert segmentation_to_mask([[1, 1, 3, 1, 3, 3, 1, 3]], 5, 5).sum() == 9


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_restricted_unpickler(tmp_path, capsys):
    good = tmp_path / "good.p"
    good.write_bytes(pickle.dumps([{"a": (1, 2.5), "b": {"x"}, "c": b"z"}], protocol=2))
    assert safe_load_pickle(good) == [{"a": (1, 2.5), "b": {"x"}, "c": b"z"}]
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(InputError, match="refusing to load"):
        safe_load_pickle(evil)
    assert "never run" not in capsys.readouterr().out
    import datetime
    dated = tmp_path / "dated.p"
    dated.write_bytes(pickle.dumps({"d": datetime.date(2020, 1, 1)}))
    with pytest.raises(InputError, match="datetime.date"):
        safe_load_pickle(dated)


# ----------------------------------------------------------------------------------------
# Referring sets
# ----------------------------------------------------------------------------------------

def _rrsisd(root):
    img_dir = root / "images/rrsisd/JPEGImages"
    img_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((5, 15, 3), np.uint8)).save(img_dir / "00001.jpg")
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(img_dir / "00002.jpg")
    instances = {
        "images": [{"id": 1, "file_name": "00001.jpg", "height": 5, "width": 15},
                   {"id": 2, "file_name": "00002.jpg", "height": 2, "width": 3}],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": {"size": [5, 15], "counts": "0X15F"}},
            {"id": 11, "image_id": 2, "segmentation": [{"size": [2, 3], "counts": [3, 2, 1]}]},
            {"id": 12, "image_id": 1, "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]},
        ],
        "categories": [{"id": 1, "name": "vehicle"}]}
    refs = [
        {"ref_id": 2, "ann_id": 11, "image_id": 2, "split": "test", "category_id": 1,
         "sentences": [{"raw": "The small car", "sent": "the small car", "sent_id": 102}]},
        {"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "test", "category_id": 1,
         "sentences": [{"raw": "The vehicle on the left", "sent": "the vehicle on the left",
                        "sent_id": 100},
                       {"raw": "A grey vehicle", "sent": "a grey vehicle", "sent_id": 101}]},
        {"ref_id": 3, "ann_id": 12, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent": "a square", "sent_id": 103}]},
    ]
    (root / "rrsisd").mkdir()
    (root / "rrsisd/instances.json").write_text(json.dumps(instances))
    (root / "rrsisd/refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


def test_rrsisd_reader(tmp_path):
    _rrsisd(tmp_path)
    ds = get_dataset("RRSIS-D", tmp_path)
    assert isinstance(ds, ReferDataset) and ds.split == "test"
    assert [(s.key, s.expression) for s in ds] == [("1_100", "The vehicle on the left"),
                                                  ("1_101", "A grey vehicle"),
                                                  ("2_102", "The small car")]
    assert ds[0].image_path.endswith("JPEGImages/00001.jpg")
    first = ds[0].load_mask()
    assert first.shape == (5, 15) and first.sum() == 70 and not first[:, 8].any()
    assert ds[2].load_mask().astype(int).tolist() == [[0, 0, 1], [0, 1, 0]]
    train = get_dataset("rrsisd", tmp_path, "train")
    assert [s.expression for s in train] == ["a square"]
    assert train[0].load_mask().sum() == 9
    with pytest.raises(InputError, match="no refs of split 'val'; it has: test, train"):
        get_dataset("RRSIS-D", tmp_path, "val")


def test_rrsisd_missing_files(tmp_path):
    with pytest.raises(InputError, match=r"refs\(unc\)\.p"):
        get_dataset("RRSIS-D", tmp_path)


def _phrase_set(root, image_dir, mask_dir, names, lines, split="test", ext=".tif"):
    for i, name in enumerate(names):
        image = np.full((2, 3, 3), 50, np.uint8)
        mask = np.zeros((2, 3), np.uint8)
        mask.flat[: i + 1] = 255
        if ext == ".tif":
            tif(root / image_dir / f"{name}.tif", image)
            tif(root / mask_dir / f"{name}.tif", mask)
        else:
            png(root / image_dir / f"{name}{ext}", image)
            png(root / mask_dir / f"{name}{ext}", mask)
    (root / f"output_phrase_{split}.txt").write_text("\n".join(lines) + "\n")


def test_refsegrs_reader(tmp_path):
    _phrase_set(tmp_path, "images", "masks", ["7", "12"],
                ["7 the red roof near the road", "", "12 vehicles"])
    ds = get_dataset("RefSegRS", tmp_path)
    assert ds.split == "test" and len(ds) == 2
    assert [(s.key, s.expression) for s in ds] == [("7", "the red roof near the road"),
                                                  ("12", "vehicles")]
    assert ds[0].load_mask().astype(int).tolist() == [[1, 0, 0], [0, 0, 0]]
    assert ds[1].load_mask().sum() == 2


def test_risbench_reader_with_extensions_and_repeats(tmp_path):
    _phrase_set(tmp_path, "img_rgb", "mask", ["00001", "00002"],
                ["00001.png a ship on the left", "00002.png the bridge",
                 "00001.png the ship near the dock", "00003.png nothing"][:3], split="val",
                ext=".png")
    ds = get_dataset("RISBench", tmp_path, "val")
    assert [s.key for s in ds] == ["00001", "00002", "00001__2"]
    assert ds[2].expression == "the ship near the dock"
    assert ds[1].load_mask().sum() == 2
    (tmp_path / "output_phrase_test.txt").write_text("00003.png nothing\n")
    with pytest.raises(InputError, match="'00003.png' \\(image\\)"):
        get_dataset("RISBench", tmp_path, "test")
    with pytest.raises(InputError, match="expression list .*output_phrase_train.txt is missing"):
        get_dataset("RISBench", tmp_path, "train")
