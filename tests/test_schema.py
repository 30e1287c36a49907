"""`trainer.schema`: the checks of a preference dataset's rows, before training (map-style datasets) and in the
collator (streamed rows), name the split, the row and the column."""

import numpy as np
import pytest
import torch

from modeling_maple.testing import build_tiny
from trainer.collator import DataCollatorForEmbeddingPreference
from trainer.schema import PREFERENCE_FEATURES, check_features, validate_preference_dataset
from trainer.testing import synthetic_preference_dataset


def _with_id(index, value, num_rows=4):
    def edit(row, position):
        return {"id": value if position == index else row["id"]}

    return synthetic_preference_dataset(num_rows).map(edit, with_indices=True)


@pytest.mark.parametrize("value,found", [(None, "None"), ("", "an empty string"), (" ", "a blank string ' '")])
def test_a_row_without_an_id_is_refused_before_training_and_named_by_its_position(value, found):
    """The id names a row in every error and seeds its candidate draws: rows without one could not be named, and all
    drew their candidates at the same positions."""
    with pytest.raises(ValueError, match=rf"^train dataset, row 2 \(the row after id 'scene-1'\): column 'id' is "
                                         rf"{found}; expected a non-empty string or a number"):
        validate_preference_dataset(_with_id(2, value), "train")


def test_a_nan_id_is_refused_before_training_and_in_a_stream():
    """Numbers name rows too, but NaN names none, and every NaN row drew the same candidates."""
    dataset = synthetic_preference_dataset(4).remove_columns("id").add_column("id", [0.0, 1.0, float("nan"), 3.0])
    with pytest.raises(ValueError, match=r"^train dataset, row 2 \(the row after id 1.0\): column 'id' is nan \(float\); "
                                         r"expected a non-empty string or a number \(not NaN\)"):
        validate_preference_dataset(dataset, "train")
    processor = build_tiny("dual_encoder", seed=0)[1]
    with pytest.raises(ValueError, match=r"^eval dataset, the row after id 1.0: column 'id' is nan \(float\)"):
        DataCollatorForEmbeddingPreference(processor, dataset_name="eval")(list(dataset))
    rows = list(dataset)
    rows[2]["id"] = np.float32("nan")  # a stream's rows may hold numpy numbers (not floats)
    with pytest.raises(ValueError, match=r"^eval dataset, the row after id 1.0: column 'id' is np.float32\(nan\)"):
        DataCollatorForEmbeddingPreference(processor, dataset_name="eval")(rows)


def test_a_first_row_without_an_id_is_named_as_the_first():
    with pytest.raises(ValueError, match=r"^train dataset, row 0 \(the first row\): column 'id' is None"):
        validate_preference_dataset(_with_id(0, None), "train")


def test_the_row_position_counts_across_validation_batches(monkeypatch):
    import trainer.schema

    monkeypatch.setattr(trainer.schema, "_ARROW_BATCH_ROWS", 2)
    with pytest.raises(ValueError, match=r"^eval dataset, row 3 \(the row after id 'scene-2'\): column 'id' is None"):
        validate_preference_dataset(_with_id(3, None, num_rows=5), "eval")


def test_a_streamed_row_without_an_id_is_named_by_the_row_before_it():
    processor = build_tiny("dual_encoder", seed=0)[1]
    rows = list(synthetic_preference_dataset(3))
    rows[1]["id"] = None
    with pytest.raises(ValueError, match=r"^eval dataset, the row after id 'scene-0': column 'id' is None; expected a "
                                         r"non-empty string or a number"):
        DataCollatorForEmbeddingPreference(processor, dataset_name="eval")(rows)
    with pytest.raises(ValueError, match=r"^eval dataset, the first row of a batch: column 'id' is None"):
        DataCollatorForEmbeddingPreference(processor, dataset_name="eval")(rows[1:])


def test_numeric_ids_pass():
    dataset = synthetic_preference_dataset(3)
    numbered = dataset.remove_columns("id").add_column("id", [7, 8, 9])
    validate_preference_dataset(numbered, "train")


def test_a_streamed_boolean_score_is_refused_like_a_boolean_score_column():
    """`check_features` refuses a score column of booleans; in a stream without features a lone True passed as 1.0."""
    processor = build_tiny("dual_encoder", seed=0)[1]
    rows = list(synthetic_preference_dataset(2))
    rows[1]["txt2img_scores"] = [True, *rows[1]["txt2img_scores"][1:]]
    with pytest.raises(ValueError, match=r"^train dataset, row id 'scene-1': column 'txt2img_scores'\[0\] is True; "
                                         r"expected a judge probability in \[0, 1\]"):
        DataCollatorForEmbeddingPreference(processor)(rows)


@pytest.mark.parametrize(
    "column, value, found",
    [
        ("candidate_texts", None, r"column 'candidate_texts' is None \(no list\); expected a list holding at least the "
                                  r"anchor itself\.$"),
        ("candidate_images", [], r"column 'candidate_images' is empty; expected a list holding at least the anchor "
                                 r"itself\.$"),
        ("txt2img_scores", None, r"column 'txt2img_scores' is None \(no list\), expected 4 scores \(one per entry of "
                                 r"'candidate_images'\)\.$"),
    ],
)
def test_a_null_candidate_or_score_list_is_named_as_missing_not_empty(column, value, found):
    """A null list was reported as "empty" (a candidate list) or as "0 scores" (a score list), as if it held none
    (found by a review); in a stream too."""
    dataset = synthetic_preference_dataset(3).map(lambda row, index: {column: value if index == 1 else row[column]},
                                                  with_indices=True)
    with pytest.raises(ValueError, match=rf"^train dataset, row id 'scene-1': {found}"):
        validate_preference_dataset(dataset, "train")
    processor = build_tiny("dual_encoder", seed=0)[1]
    with pytest.raises(ValueError, match=rf"^train dataset, row id 'scene-1': {found}"):
        DataCollatorForEmbeddingPreference(processor)(list(dataset))


def test_an_undecodable_image_error_survives_pickling():
    """It took two arguments and pickled one: a worker process's error (a data loader's, the demo's) did not unpickle
    in the main process, which broke the demo's pool (found by a review)."""
    import pickle

    from trainer.schema import UndecodableImageError

    error = pickle.loads(pickle.dumps(UndecodableImageError("an image does not decode", "train")))
    assert (str(error), error.split) == ("an image does not decode", "train")


def _rows_to_rank(image_folder):
    """Hand-built rows whose only differing judge scores are between repeats of one item, or not: texts repeated, images
    repeated as the same bytes (PNG, and BMP, whose pictures of one size have one byte length) or as the same path,
    and scores that differ only in float64 (the losses rank float32)."""
    import io

    from trainer.testing import describe_scene, draw_scene

    caption, blue, green = (describe_scene(*scene) for scene in (("red", "left"), ("blue", "left"), ("green", "right")))
    red_image, blue_image, green_image = (draw_scene(*scene) for scene in (("red", "left"), ("blue", "left"),
                                                                           ("green", "right")))

    def bmp(image):
        buffer = io.BytesIO()
        image.save(buffer, format="BMP")
        return {"bytes": buffer.getvalue(), "path": None}

    red_image.save(image_folder / "red.png")
    red_file = {"bytes": None, "path": str(image_folder / "red.png")}

    def row(name, image, texts, img2txt_scores, images, txt2img_scores):
        return dict(id=name, image=image, caption=caption, candidate_texts=[caption, *texts], img2txt_scores=img2txt_scores,
                    candidate_images=[image, *images], txt2img_scores=txt2img_scores)

    return [
        # the anchor's own caption and image listed again, scored lower
        row("anchor-copy", red_image, [caption], [0.9, 0.5], [red_image.copy()], [0.9, 0.4]),
        # another item listed twice: only its second, masked unless drawn without the first, scores otherwise
        row("repeat", red_image, [blue, blue], [0.9, 0.9, 0.3], [blue_image, blue_image.copy()], [0.9, 0.9, 0.3]),
        # another picture of the anchor's byte length is another item; the anchor's bytes again are not
        row("same-length", bmp(red_image), [blue], [0.5, 0.5], [bmp(blue_image), bmp(red_image)], [0.6, 0.2, 0.6]),
        row("ranked", red_image, [blue, green], [0.9, 0.5, 0.5], [blue_image, green_image], [0.9, 0.9, 0.1]),
        row("same-path", red_file, [blue], [0.9, 0.1], [dict(red_file)], [0.9, 0.2]),
        row("float32-tie", red_image, [blue], [0.8, 0.8 + 1e-9], [blue_image], [0.8, 0.3]),
    ]


@pytest.mark.parametrize("limit, counts", [
    (None, {"text_to_image": 3, "image_to_text": 4, "both": 2}),
    (2, {"text_to_image": 2, "image_to_text": 3, "both": 1}),
])
def test_rows_without_preference_are_those_no_draw_of_the_collator_ranks(tmp_path, limit, counts):
    """A row whose only differing scores were between repeats of one item (the anchor's own caption listed again, a
    copy of its image), which the collator masks, counted as ranking: with rpa_weight=1.0 and only such rows, nothing
    warned that the RPA loss was zero (found by a review). Counted here as the collator draws and masks over epochs."""
    from datasets import Dataset, List, Value

    from trainer.losses import _strict_preferences
    from trainer.schema import PREFERENCE_FEATURES, rows_without_preference

    features = PREFERENCE_FEATURES.copy()
    for column in ("txt2img_scores", "img2txt_scores"):
        features[column] = List(Value("float64"))
    dataset = Dataset.from_list(_rows_to_rank(tmp_path), features=features)
    validate_preference_dataset(dataset, "train")
    collate = DataCollatorForEmbeddingPreference(build_tiny("dual_encoder", seed=0)[1], num_text_candidates=limit,
                                                 num_image_candidates=limit)
    rows, ranked = list(dataset), {}
    for epoch in range(30):  # every draw of 1 of 2 others, many times over
        collate.set_epoch(epoch)
        batch = collate(rows)
        for direction, modality, scores in (("text_to_image", "image", "txt2img_scores"),
                                            ("image_to_text", "text", "img2txt_scores")):
            ranks = _strict_preferences(batch[scores], batch[f"candidate_{modality}_mask"]).flatten(1).any(dim=1)
            ranked[direction] = ranked.get(direction, torch.zeros_like(ranks)) | ranks
    never = {direction: ~ranks for direction, ranks in ranked.items()}
    by_the_collator = {direction: int(unranked.sum()) for direction, unranked in never.items()}
    by_the_collator["both"] = int((never["text_to_image"] & never["image_to_text"]).sum())
    assert by_the_collator == counts
    assert rows_without_preference(dataset, num_text_candidates=limit, num_image_candidates=limit) == counts


def test_stored_images_are_compared_with_64_bit_offsets(tmp_path, monkeypatch):
    """`rows_without_preference` joined a batch's images of one row and byte length into one `binary` array, whose
    32-bit offsets overflow past 2 GiB of images (ArrowInvalid "offset overflow" as RPATrainer starts with
    rpa_weight > 0; found by a review). They are joined as large_binary, paths as large_string: checked here by the
    types hashed, as a batch of over 2 GiB is too heavy for the suite (one of 2.15 GiB, in two chunks, was counted so
    outside it)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    from trainer.schema import PREFERENCE_FEATURES, rows_without_preference

    hashed, dictionary_encode = [], pc.dictionary_encode

    def recording_dictionary_encode(values, *args, **kwargs):
        hashed.append(values.type)
        return dictionary_encode(values, *args, **kwargs)

    monkeypatch.setattr(pc, "dictionary_encode", recording_dictionary_encode)
    # rows of images compared by their bytes (two BMPs of one length in a row) and by their paths
    dataset = Dataset.from_list(_rows_to_rank(tmp_path), features=PREFERENCE_FEATURES)
    rows_without_preference(dataset)
    assert set(hashed) == {pa.large_binary(), pa.large_string()}


def test_a_json_lines_column_of_mixed_types_is_explained(tmp_path):
    """A score written as a string in one row of a JSON Lines file makes `datasets` type the whole column Json, and
    keeps no trace of the row: the error said only that the type was List(Json(decode=True)) (found by a
    user-journey review)."""
    import json

    from datasets import load_dataset

    rows = synthetic_preference_dataset(3).remove_columns(["image", "candidate_images"]).to_list()
    rows[1]["img2txt_scores"][0] = "0.9"
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_dataset("json", data_files=str(path), split="train")
    features = PREFERENCE_FEATURES.copy()
    features["img2txt_scores"] = dataset.features["img2txt_scores"]

    with pytest.raises(ValueError, match=r"column 'img2txt_scores' has type List\(Json\(decode=True\)\); expected "
                                         r"List\(Value\('float32'\)\).*values of more than one type .*a score written "
                                         r"as a string"):
        check_features(features, "train")
