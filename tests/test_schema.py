"""`trainer.schema`: the checks of a preference dataset's rows, before training (map-style datasets) and in the
collator (streamed rows), name the split, the row and the column."""

import numpy as np
import pytest

from modeling_maple.testing import build_tiny
from trainer.collator import DataCollatorForEmbeddingPreference
from trainer.schema import validate_preference_dataset
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
