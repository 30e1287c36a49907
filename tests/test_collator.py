"""`DataCollatorForEmbeddingPreference`: each distinct text and image is embedded once, the index tensors point at
the right items, padding is masked, the anchor's own candidate is always kept, and the candidate draws depend on the
seed, the epoch and the row only (not on the batch a row lands in)."""

import pytest
import torch
from PIL import Image

from modeling_maple.testing import build_tiny
from trainer.collator import (
    PREFERENCE_KEYS,
    ROW_POSITION,
    DataCollatorForEmbeddingPreference,
    _sample_candidates,
    content_id,
    select_rows,
)
from trainer.rpa_config import RPAConfig
from trainer.testing import describe_scene, draw_scene, synthetic_preference_dataset


@pytest.fixture(scope="module")
def processor():
    return build_tiny("dual_encoder", seed=0)[1]


@pytest.fixture(scope="module")
def rows():
    # 12 rows over the 8 scenes (rows 8-11 repeat rows 0-3), 6 candidates each: candidates are other anchors' items
    return list(synthetic_preference_dataset(12, num_candidates=6, seed=0))


def picked(batch, row, modality):
    """Content ids of the candidates the batch holds for `row`, in order, padding left out."""
    index, mask = batch[f"candidate_{modality}_index"][row], batch[f"candidate_{modality}_mask"][row]
    return batch[f"{modality}_ids"][index[mask]].tolist()


def shortened(row, texts, images):
    """`row` with only its first `texts` candidate texts and `images` candidate images (and their scores)."""
    return dict(row, candidate_texts=row["candidate_texts"][:texts], img2txt_scores=row["img2txt_scores"][:texts],
                candidate_images=row["candidate_images"][:images], txt2img_scores=row["txt2img_scores"][:images])


def drawn_positions(batch, position, row, modality):
    """Positions in `row`'s own candidate list of the candidates the batch holds for it (batch row `position`)."""
    ids = [content_id(item) for item in row[f"candidate_{modality}s"]]
    return [ids.index(item) for item in picked(batch, position, modality)]


def test_each_distinct_item_is_embedded_once_and_indices_point_at_it(processor, rows):
    batch = DataCollatorForEmbeddingPreference(processor)(rows)
    texts = {content_id(text) for row in rows for text in [row["caption"], *row["candidate_texts"]]}
    images = {content_id(image) for row in rows for image in [row["image"], *row["candidate_images"]]}
    assert sorted(batch["text_ids"].tolist()) == sorted(texts)  # each once
    assert sorted(batch["image_ids"].tolist()) == sorted(images)
    assert batch["input_ids"].shape[0] == len(texts) and batch["pixel_values"].shape[0] == len(images)
    for position, row in enumerate(rows):
        assert batch["text_ids"][batch["anchor_text_index"][position]] == content_id(row["caption"])
        assert batch["image_ids"][batch["anchor_image_index"][position]] == content_id(row["image"])
        # without a limit every candidate is kept, in dataset order, with its judge score
        assert picked(batch, position, "text") == [content_id(text) for text in row["candidate_texts"]]
        assert picked(batch, position, "image") == [content_id(image) for image in row["candidate_images"]]
        torch.testing.assert_close(batch["img2txt_scores"][position], torch.tensor(row["img2txt_scores"]))
        torch.testing.assert_close(batch["txt2img_scores"][position], torch.tensor(row["txt2img_scores"]))


def test_selected_rows_are_the_batch_of_those_rows_alone(processor, rows):
    """Row 3 has fewer candidates than drawn: its padding points at the batch's items 0, the caption and image of
    the left-out row 0, which no other row uses; once selected, that padding must neither count as a use nor point
    anywhere but 0."""
    collate = DataCollatorForEmbeddingPreference(processor, num_text_candidates=3, num_image_candidates=4,
                                                 return_judged_positive_ids=True)
    lone_caption, lone_image = "a lone square", draw_scene("red", "left", size=32)
    # every candidate of the left-out row 0 is a judged positive (rated as high as its anchor), and row 1's
    # candidates 2 (text) and 3 (image)
    rising = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    lone = dict(rows[0], caption=lone_caption, image=lone_image,
                candidate_texts=[lone_caption, *rows[0]["candidate_texts"][1:]],
                candidate_images=[lone_image, *rows[0]["candidate_images"][1:]],
                img2txt_scores=rising, txt2img_scores=rising)
    rated = dict(rows[1], img2txt_scores=[0.8, 0.1, 0.9, 0.1, 0.1, 0.1], txt2img_scores=[0.8, 0.1, 0.1, 0.8, 0.1, 0.1])
    batch_rows = [lone, rated, rows[2], shortened(rows[3], texts=2, images=2), *rows[4:6]]
    batch = collate(batch_rows)
    kept = torch.tensor([False, True, False, True, True, False])
    selected, texts, images = select_rows(batch, kept)
    alone = collate([row for row, keep in zip(batch_rows, kept) if keep])
    assert not selected["candidate_text_mask"].all() and not selected["candidate_image_mask"].all()
    # items in the batch's order, which need not be the order the rows alone are collated in: compare by content id
    for modality, items in (("text", texts), ("image", images)):
        ids = selected[f"{modality}_ids"]
        assert ids.tolist() == batch[f"{modality}_ids"][items].tolist()
        assert sorted(ids.tolist()) == sorted(alone[f"{modality}_ids"].tolist())
        anchors = alone[f"{modality}_ids"][alone[f"anchor_{modality}_index"]]
        assert ids[selected[f"anchor_{modality}_index"]].tolist() == anchors.tolist()
        for row in range(3):
            assert picked(selected, row, modality) == picked(alone, row, modality)
        assert (selected[f"candidate_{modality}_index"][~selected[f"candidate_{modality}_mask"]] == 0).all()
        # the rows' own judged positives (row 1's one), padded with the anchor's id as wide as row 0 needed
        judged, width = selected[f"judged_positive_{modality}_ids"], alone[f"judged_positive_{modality}_ids"].shape[1]
        assert torch.equal(judged[:, :width], alone[f"judged_positive_{modality}_ids"]) and width == 1
        assert (judged[:, width:] == anchors.unsqueeze(1)).all() and judged.shape[1] > width
    for key in ("candidate_text_mask", "candidate_image_mask", "txt2img_scores", "img2txt_scores"):
        assert torch.equal(selected[key], alone[key])
    assert set(selected) == set(PREFERENCE_KEYS) - {ROW_POSITION}


def test_rows_carry_their_position_only_when_they_have_one(processor, rows):
    collate = DataCollatorForEmbeddingPreference(processor)
    assert ROW_POSITION not in collate(rows[:2])
    numbered = [{**row, ROW_POSITION: position} for position, row in zip((5, 0), rows[:2])]
    assert collate(numbered)[ROW_POSITION].tolist() == [5, 0]


def test_rows_with_fewer_candidates_are_padded_and_masked(processor, rows):
    short = shortened(rows[1], texts=2, images=3)
    batch = DataCollatorForEmbeddingPreference(processor)([rows[0], short, rows[2]])
    for modality, kept in (("text", 2), ("image", 3)):
        mask, index = batch[f"candidate_{modality}_mask"], batch[f"candidate_{modality}_index"]
        assert mask.shape == index.shape == (3, 6) and mask.dtype == torch.bool
        assert mask[[0, 2]].all() and mask[1].tolist() == [True] * kept + [False] * (6 - kept)
        assert (index[1, kept:] == 0).all()
    assert (batch["img2txt_scores"][1, 2:] == 0).all() and (batch["txt2img_scores"][1, 3:] == 0).all()
    assert picked(batch, 1, "text") == [content_id(text) for text in short["candidate_texts"]]


def test_sampling_keeps_the_anchor_and_draws_without_replacement(processor, rows):
    for epoch in range(3):
        collator = DataCollatorForEmbeddingPreference(processor, num_text_candidates=3, num_image_candidates=2,
                                                      epoch=epoch)
        batch = collator(rows)
        assert batch["candidate_text_mask"].shape == (len(rows), 3)
        assert batch["candidate_image_mask"].shape == (len(rows), 2)
        for position, row in enumerate(rows):
            texts = picked(batch, position, "text")
            assert texts[0] == content_id(row["candidate_texts"][0]) == content_id(row["caption"])
            assert picked(batch, position, "image")[0] == content_id(row["image"])
            assert len(set(texts)) == 3
            for modality in ("text", "image"):  # in dataset order
                positions = drawn_positions(batch, position, row, modality)
                assert positions == sorted(positions)
            # the scores follow the drawn candidates
            candidates = [content_id(text) for text in row["candidate_texts"]]
            expected = [row["img2txt_scores"][candidates.index(text)] for text in texts]
            torch.testing.assert_close(batch["img2txt_scores"][position], torch.tensor(expected))


def test_draws_depend_on_seed_epoch_and_row_not_on_the_batch(processor, rows):
    def draws(collator, batch_rows):
        batch = collator(batch_rows)
        return {row["id"]: picked(batch, position, "text") for position, row in enumerate(batch_rows)}

    collator = DataCollatorForEmbeddingPreference(processor, num_text_candidates=3, num_image_candidates=3)
    together = draws(collator, rows)
    alone = {row["id"]: draws(collator, [row])[row["id"]] for row in rows}
    shuffled = draws(collator, rows[::-1][:5] + rows[:3])
    assert together == alone
    assert all(shuffled[row_id] == together[row_id] for row_id in shuffled)
    assert draws(DataCollatorForEmbeddingPreference(processor, num_text_candidates=3), rows) == together  # repeatable

    collator.set_epoch(1)
    assert draws(collator, rows) != together  # fresh draws every epoch
    other_seed = DataCollatorForEmbeddingPreference(processor, num_text_candidates=3, seed=1)
    assert draws(other_seed, rows) != together


def test_each_row_and_modality_draws_its_own_candidates(processor, rows):
    """The draw is seeded by the row id and the modality as well: without them, every row with as many candidates drew
    the same positions, and a row its candidate images at the positions of its candidate texts (which, in the synthetic
    rows, are the same scenes)."""
    batch = DataCollatorForEmbeddingPreference(processor, num_text_candidates=3, num_image_candidates=3)(rows)
    texts = [drawn_positions(batch, position, row, "text") for position, row in enumerate(rows)]
    images = [drawn_positions(batch, position, row, "image") for position, row in enumerate(rows)]
    assert len({tuple(draw) for draw in texts}) > 1
    assert texts != images


def test_bad_rows_are_named_with_the_collators_dataset(processor, rows):
    bad = dict(rows[0], img2txt_scores=rows[0]["img2txt_scores"][:-1])
    with pytest.raises(ValueError, match=r"^eval dataset, row id 'scene-0': column 'img2txt_scores' has 5 scores"):
        DataCollatorForEmbeddingPreference(processor, dataset_name="eval")([bad])


@pytest.mark.parametrize(
    "column,value,message",
    [
        ("caption", None, r"column 'caption' is None; expected a non-empty string"),
        ("image", None, r"column 'image' is None; expected an image"),
        ("candidate_texts", lambda texts: [texts[0], None, *texts[2:]],
         r"column 'candidate_texts'\[1\] is None; expected a non-empty string"),
        ("candidate_images", lambda images: [*images[:-1], None],
         r"column 'candidate_images'\[5\] is None; expected an image"),
        ("caption", 5, r"column 'caption' is 5 \(int\); expected a non-empty string"),
        ("image", "a.png", r"column 'image' is 'a.png' \(str\); expected an image"),
        ("candidate_texts", lambda texts: [texts[0], 7, *texts[2:]],
         r"column 'candidate_texts'\[1\] is 7 \(int\); expected a non-empty string"),
        ("candidate_images", lambda images: [*images[:-1], "b.png"],
         r"column 'candidate_images'\[5\] is 'b.png' \(str\); expected an image"),
        ("txt2img_scores", lambda scores: [*scores[:2], "0.5", *scores[3:]],
         r"column 'txt2img_scores'\[2\] is '0.5'; expected a judge probability in \[0, 1\]"),
        ("img2txt_scores", None, r"column 'img2txt_scores' is None \(no list\), expected 6 scores"),
        ("txt2img_scores", lambda scores: [*scores, 0.5], r"column 'txt2img_scores' has 7 scores, expected 6 scores"),
        ("candidate_texts", None, r"column 'candidate_texts' is None \(no list\); expected a list holding at least the "
                                  r"anchor itself"),
        ("candidate_texts", lambda texts: [texts[0], "  ", *texts[2:]],
         r"column 'candidate_texts'\[1\] is a blank string '  '; expected a non-empty string"),
        # a lone value where a list belongs: a string was counted by its characters, an image or a score failed in len
        ("candidate_texts", lambda texts: texts[0], r"column 'candidate_texts' is 'a .*' \(str\); expected a list, "
         r"one entry per candidate \(the anchor's own first\)\.$"),
        ("candidate_images", lambda images: images[0], r"column 'candidate_images' is <PIL\..*; expected a list"),
        ("txt2img_scores", lambda scores: scores[0], r"column 'txt2img_scores' is 0\.\d+ \(float\); expected a list"),
        ("candidate_texts", tuple, r"column 'candidate_texts' is \('a .*\) \(tuple\); expected a list"),
    ],
    ids=["caption", "image", "candidate-text", "candidate-image", "int-caption", "image-path", "int-candidate-text",
         "candidate-image-path", "string-score", "no-scores", "extra-score", "no-candidate-texts",
         "blank-candidate-text", "lone-candidate-text", "lone-candidate-image", "lone-score", "candidate-tuple"],
)
def test_missing_or_mistyped_values_are_named(processor, rows, column, value, message):
    # streamed rows of unknown features reach the collator unchecked
    bad = dict(rows[1], **{column: value(rows[1][column]) if callable(value) else value})
    with pytest.raises(ValueError, match=rf"^train dataset, row id 'scene-1': {message}"):
        DataCollatorForEmbeddingPreference(processor)([rows[0], bad])


def test_a_batch_the_processor_refuses_is_named_by_its_dataset_and_rows(rows):
    def refusing(**inputs):
        raise ValueError("an aspect ratio above 200:1")

    with pytest.raises(ValueError, match=r"^eval dataset, the batch of row ids \['scene-0', 'scene-1'\]: the processor "
                                         r"refused its texts or images: an aspect ratio above 200:1"):
        DataCollatorForEmbeddingPreference(refusing, dataset_name="eval")(rows[:2])


@pytest.mark.parametrize("item", [None, b"a red square", 3], ids=["none", "bytes", "int"])
def test_content_id_takes_only_texts_and_images(item):
    with pytest.raises(TypeError, match=f"str.*PIL image, got {type(item).__name__}"):
        content_id(item)


@pytest.mark.parametrize("candidates,scores,anchor", [("candidate_texts", "img2txt_scores", "caption"),
                                                      ("candidate_images", "txt2img_scores", "image")])
def test_a_first_candidate_other_than_the_anchor_is_named(processor, rows, candidates, scores, anchor):
    """Of two such rows, the first in the batch is named."""
    bad = [dict(row, **{candidates: row[candidates][::-1], scores: row[scores][::-1]}) for row in rows[1:3]]
    with pytest.raises(ValueError, match=rf"^train dataset, row id 'scene-1': column '{candidates}'\[0\] differs "
                                         rf"from the row's '{anchor}'; expected the anchor itself first"):
        DataCollatorForEmbeddingPreference(processor, num_text_candidates=2, num_image_candidates=2)([rows[0], *bad])


def test_images_with_the_same_bytes_in_another_size_or_mode_have_other_ids():
    """The bytes alone are not the picture: the same bytes are another image at another size (8x2 against 2x8) or in
    another mode (RGB against YCbCr); one id would embed one for both and make a hard negative its own anchor."""
    wide, tall = Image.new("L", (8, 2), 7), Image.new("L", (2, 8), 7)
    rgb = Image.new("RGB", (2, 2), (10, 20, 30))
    ycbcr = Image.frombytes("YCbCr", (2, 2), rgb.tobytes())
    assert wide.tobytes() == tall.tobytes() and rgb.tobytes() == ycbcr.tobytes()
    assert content_id(wide) != content_id(tall) and content_id(rgb) != content_id(ycbcr)


def test_images_that_load_as_other_pictures_have_other_ids():
    """Loading (`load_image`) turns a photo by its EXIF orientation and makes an RGB image's colour key transparent:
    the same pixels with such a tag are another picture. A tag that turns nothing (1) leaves the id as it is."""
    plain = Image.new("RGB", (4, 2), (10, 20, 30))
    turned, unturned = plain.copy(), plain.copy()
    turned.getexif()[0x0112] = 6  # rotate 90 degrees on load
    unturned.getexif()[0x0112] = 1
    keyed = plain.copy()
    keyed.info["transparency"] = (10, 20, 30)
    assert len({content_id(plain), content_id(turned), content_id(keyed)}) == 3
    assert content_id(unturned) == content_id(plain)


def test_palette_images_that_differ_only_in_their_palette_are_two_images(processor):
    """A palette image's bytes are indices: a recoloured copy (a colour-binding hard negative) had the anchor's id,
    so the collator embedded it once and RPA compared the anchor with itself."""
    red = draw_scene("red", "left").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette = red.getpalette()
    blue = red.copy()
    blue.putpalette([value for colour in zip(*[iter(palette)] * 3) for value in (colour[::-1] if colour[0] > 200 else colour)])
    assert red.tobytes() == blue.tobytes() and red.convert("RGB").tobytes() != blue.convert("RGB").tobytes()
    assert content_id(red) != content_id(blue) and content_id(red) == content_id(red.copy())
    row = dict(id="r0", image=red, caption="a red square on the left", candidate_images=[red, blue],
               candidate_texts=["a red square on the left", "a blue square on the left"],
               txt2img_scores=[0.9, 0.2], img2txt_scores=[0.9, 0.2])
    batch = DataCollatorForEmbeddingPreference(processor)([row])
    assert batch["candidate_image_index"].tolist() == [[0, 1]]


def _left_encoded(num_rows=4, num_candidates=6):
    from trainer.collator import with_images_left_encoded

    dataset = synthetic_preference_dataset(num_rows, num_candidates=num_candidates, seed=0)
    return dataset, with_images_left_encoded(dataset)


def _counted_decodes(monkeypatch):
    """The list of the images `datasets.Image.decode_example` decodes from here on (until `monkeypatch.undo()`)."""
    import datasets

    decoded, decode = [], datasets.Image.decode_example
    monkeypatch.setattr(datasets.Image, "decode_example",
                        lambda self, value, **kw: decoded.append(value) or decode(self, value, **kw))
    return decoded


def test_only_the_drawn_candidate_images_are_decoded_and_the_anchor_once(processor, monkeypatch):
    """`datasets` decoded every candidate image of every row (and the anchor image twice, as `image` and as
    `candidate_images[0]`), and the collator kept `num_image_candidates` of them."""
    dataset, encoded = _left_encoded()
    rows = list(encoded)
    assert isinstance(rows[0]["image"], dict) and isinstance(rows[0]["candidate_images"][3], dict)
    decoded = _counted_decodes(monkeypatch)
    collator = DataCollatorForEmbeddingPreference(processor, num_image_candidates=3, num_text_candidates=2)
    batch = collator(rows)
    assert len(decoded) == 3 * len(rows)  # the anchor (candidate 0 reused) and the 2 drawn others, per row
    monkeypatch.undo()
    expected = collator(list(dataset))  # the same batch from the images `datasets` decodes
    assert batch.keys() == expected.keys()
    for key in batch:
        assert torch.equal(batch[key], expected[key]), key


def test_judged_positives_are_all_candidates_rated_as_high_as_the_anchor_drawn_or_not(processor, monkeypatch):
    """`RPAConfig.exclude_judged_positives` leaves them out of their anchor's InfoNCE denominator: one left undrawn
    may still be embedded (as another row's anchor or candidate), so every one counts, at every epoch. Decoding
    images for it costs only the undrawn judged positives; without the option nothing is computed."""
    dataset, encoded = _left_encoded()
    # row 0 rates its candidates 2 and 4 at least as high as its own (4: a tie), in both directions; the synthetic
    # judge rates every other candidate below its anchor
    scores = [0.8, 0.1, 0.9, 0.1, 0.8, 0.1]
    rows = [dict(row, img2txt_scores=scores, txt2img_scores=scores) if position == 0 else row
            for position, row in enumerate(encoded)]
    first = dataset[0]  # decoded by `datasets`, before decoding is counted
    expected = {
        "text": [content_id(first["candidate_texts"][j]) for j in (2, 4)],
        "image": [content_id(first["candidate_images"][j]) for j in (2, 4)],
    }
    decoded = _counted_decodes(monkeypatch)
    for epoch in range(4):
        collator = DataCollatorForEmbeddingPreference(processor, num_image_candidates=2, num_text_candidates=2,
                                                      epoch=epoch, return_judged_positive_ids=True)
        decoded.clear()
        batch = collator(rows)
        for modality in ("text", "image"):
            anchors = batch[f"{modality}_ids"][batch[f"anchor_{modality}_index"]].tolist()
            assert batch[f"judged_positive_{modality}_ids"].tolist() == [
                expected[modality], *([anchor, anchor] for anchor in anchors[1:])  # padded with the anchor's own id
            ]
        undrawn = {2, 4} - set(drawn_positions(batch, 0, first, "image"))
        assert len(decoded) == 2 * len(rows) + len(undrawn)  # the anchor and 1 drawn other per row, and those
    assert not {"judged_positive_text_ids", "judged_positive_image_ids"} & set(
        DataCollatorForEmbeddingPreference(processor)(rows)
    )


def test_a_judged_positive_is_a_tie_in_float32_as_the_rpa_losses_see_it(processor):
    """Scores of 0.30000001 and 0.3 (float64, which the schema takes) are one float32: a tie for RPA, and so a judged
    positive; the raw scores had been compared (found by a review)."""
    row = synthetic_preference_dataset(1)[0]
    row = dict(row, img2txt_scores=[0.30000001, 0.3] + [0.0] * (len(row["candidate_texts"]) - 2))
    for default_dtype in (torch.float32, torch.float64):  # the scores are float32 whatever torch's default
        torch.set_default_dtype(default_dtype)
        try:
            batch = DataCollatorForEmbeddingPreference(processor, return_judged_positive_ids=True)([row])
        finally:
            torch.set_default_dtype(torch.float32)
        assert batch["img2txt_scores"].dtype == torch.float32
        assert batch["img2txt_scores"][0, 0] == batch["img2txt_scores"][0, 1]
        assert batch["judged_positive_text_ids"].tolist() == [[content_id(row["candidate_texts"][1])]]


def test_an_undrawn_candidate_that_does_not_decode_is_never_read_and_a_drawn_one_fails_in_pil(processor):
    """Rows left encoded decode what they use: a corrupt candidate stops collation (with PIL's error, which the
    trainer turns into `UndecodableImageError`) only in a step that draws it."""
    _, encoded = _left_encoded(num_rows=1)
    row = encoded[0]
    collator = DataCollatorForEmbeddingPreference(processor, num_image_candidates=2)
    drawn = _sample_candidates(6, 2, collator._generator(row["id"], "image"))  # candidate 0 and one other
    undrawn = next(position for position in range(1, 6) if position not in drawn)
    broken = [dict(image) for image in row["candidate_images"]]
    broken[undrawn] = {"bytes": broken[undrawn]["bytes"][:40], "path": None}
    collator([dict(row, candidate_images=broken)])  # not drawn: not decoded
    with pytest.raises(OSError, match="cannot identify image"):
        DataCollatorForEmbeddingPreference(processor)([dict(row, candidate_images=broken)])  # all drawn


def test_images_left_encoded_only_where_the_collator_decodes_them_as_the_dataset_would(processor):
    import datasets

    from trainer.collator import with_images_left_encoded

    dataset = synthetic_preference_dataset(2)
    moded = dataset.cast_column("image", datasets.Image(mode="RGB"))
    encoded = with_images_left_encoded(moded)
    assert encoded.features["image"] == datasets.Image(mode="RGB")  # decoded by the dataset, with its mode
    assert encoded.features["candidate_images"] == datasets.List(datasets.Image(decode=False))
    assert dataset.features["candidate_images"] == datasets.List(datasets.Image())  # the source is left as it was
    streamed = with_images_left_encoded(dataset.to_iterable_dataset())
    assert isinstance(next(iter(streamed))["candidate_images"][0], dict)
    without_features = dataset.to_iterable_dataset().map(lambda row: row)
    assert without_features.features is None and with_images_left_encoded(without_features) is without_features
    private = dataset.to_iterable_dataset()
    private._token_per_repo_id = {"user/private-set": "hf_token"}  # as a stream of a private Hub dataset holds it
    assert with_images_left_encoded(private) is private  # its image files need the token, which the collator lacks


@pytest.mark.parametrize("image", [{"bytes": None, "path": None}, {"path": "a.png"}, {"bytes": b"\x89PNG"}],
                         ids=["neither", "no-bytes-key", "no-path-key"])
def test_an_image_left_encoded_without_bytes_or_path_is_named(processor, image):
    _, encoded = _left_encoded(num_rows=2)
    bad = dict(encoded[1], candidate_images=[*encoded[1]["candidate_images"][:-1], image])
    with pytest.raises(ValueError, match=r"^train dataset, row id 'scene-1': column 'candidate_images'\[5\] is .*"
                                         r"\(dict\); expected an image"):
        DataCollatorForEmbeddingPreference(processor)([encoded[0], bad])


def test_a_first_candidate_stored_as_a_path_is_the_anchor_only_at_the_anchors_path(processor, tmp_path, monkeypatch):
    """Images left encoded as file paths (no bytes): candidate 0 at the anchor's path is the anchor, decoded once; at
    another path it is read, and a picture other than the anchor there is named, as for images stored as bytes."""
    import datasets

    row = synthetic_preference_dataset(1, num_candidates=3)[0]
    paths = []
    for position, image in enumerate(row["candidate_images"]):
        image.save(tmp_path / f"{position}.png")
        paths.append({"bytes": None, "path": str(tmp_path / f"{position}.png")})
    stored = dict(row, image=paths[0], candidate_images=paths)
    decoded = []
    decode = datasets.Image.decode_example
    monkeypatch.setattr(datasets.Image, "decode_example", lambda self, value, **kw: decoded.append(value) or decode(self, value, **kw))
    batch = DataCollatorForEmbeddingPreference(processor)([stored])
    assert [value["path"] for value in decoded] == [entry["path"] for entry in paths]  # the anchor once
    assert picked(batch, 0, "image") == [content_id(image) for image in row["candidate_images"]]
    elsewhere = dict(stored, candidate_images=[paths[1], *paths[1:]])
    with pytest.raises(ValueError, match=r"column 'candidate_images'\[0\] differs from the row's 'image'"):
        DataCollatorForEmbeddingPreference(processor)([elsewhere])


def test_a_candidate_repeated_within_a_row_counts_once(processor):
    """A text or image that an anchor lists twice among its candidates (a caption the captioner wrote twice, a
    hard-negative image that is a copy of the anchor's or of another hard negative) is one item: its repeats are
    masked, the first occurrence (candidate 0 for a copy of the anchor) kept with its score. Unmasked, the RPA losses
    compared the item with itself, a pair no embedder can order, so `rewards/accuracies` stayed below 1 for a perfect
    embedder, and the listwise loss counted the item twice in its denominators."""
    from trainer.losses import preference_agreement, rpa_listwise_loss

    anchor, other, third = draw_scene("red", "left"), draw_scene("blue", "left"), draw_scene("green", "right")
    caption = describe_scene("red", "left")
    row = dict(id="r0", image=anchor, caption=caption,
               candidate_texts=[caption, "a blue square", "a blue square", caption, "a green square"],
               img2txt_scores=[0.9, 0.5, 0.3, 0.85, 0.1],
               candidate_images=[anchor, other, anchor.copy(), third, other.copy()],
               txt2img_scores=[0.9, 0.4, 0.8, 0.2, 0.35])
    batch = DataCollatorForEmbeddingPreference(processor)([row])
    assert batch["candidate_text_mask"].tolist() == [[True, True, False, False, True]]
    assert batch["candidate_image_mask"].tolist() == [[True, True, False, True, False]]
    for modality, scores in (("text", "img2txt_scores"), ("image", "txt2img_scores")):
        mask, index = batch[f"candidate_{modality}_mask"], batch[f"candidate_{modality}_index"]
        assert (index[~mask] == 0).all()  # as padding
        assert len(set(index[mask].tolist())) == int(mask.sum())  # each item once
        # a perfect embedder: each distinct item's similarity is the judge score of its first occurrence
        similarity = {}
        for slot, item in enumerate(index[0].tolist()):
            similarity.setdefault(item, batch[scores][0, slot].item())
        perfect = torch.tensor([[similarity[item] for item in index[0].tolist()]])
        accuracy, _ = preference_agreement(perfect, batch[scores], mask)
        assert accuracy.item() == 1.0
        # the loss of the row equals that of its distinct candidates alone
        kept = mask[0]
        torch.testing.assert_close(rpa_listwise_loss(perfect, batch[scores], mask),
                                   rpa_listwise_loss(perfect[:, kept], batch[scores][:, kept]))


@pytest.mark.parametrize("field", ["num_text_candidates", "num_image_candidates"])
@pytest.mark.parametrize("value", [1, 0, -1, 2.5, True])
def test_candidate_counts_below_two_or_not_integers_are_refused(processor, tmp_path, field, value):
    """`_sample_candidates` read a limit of 0 as "all but one" (`randperm(...)[: -1]`), -1 as "all but two": a
    collator made outside `RPAConfig` silently drew another count than asked. And 1, the anchor's own candidate alone,
    was accepted here while `RPAConfig` refused it: a ranking of one candidate has no pair, so RPA learnt nothing."""
    message = (rf"^{field} must be an integer of at least 2 \(the anchor's own candidate and one to rank it against\) "
               rf"or None \(all\), got {value!r}$")
    with pytest.raises(ValueError, match=message):
        DataCollatorForEmbeddingPreference(processor, **{field: value})
    with pytest.raises(ValueError, match=message):  # the same rule, in the same words
        RPAConfig(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_tensors_other_than_torch_are_refused(processor):
    """`DataCollatorMixin` dispatches on `return_tensors`, and the collator has a torch collation only: "np" failed at
    the first batch with an AttributeError for `numpy_call`."""
    with pytest.raises(ValueError, match=r"^return_tensors must be 'pt' \(torch tensors\), got 'np'$"):
        DataCollatorForEmbeddingPreference(processor, return_tensors="np")


@pytest.mark.parametrize("column", ["id", "caption", "candidate_images", "txt2img_scores"])
def test_a_streamed_row_without_a_column_is_named(processor, rows, column):
    """Rows of a stream without features are checked against the schema by their first row only
    (`validate_preference_dataset`): a later row lacking a column failed with a bare KeyError."""
    bad = {key: value for key, value in rows[1].items() if key != column}
    where = "the row after id 'scene-0'" if column == "id" else "row id 'scene-1'"
    with pytest.raises(ValueError, match=rf"^eval dataset, {where}: lacks column\(s\) \['{column}'\]; a MAPLE "
                                         r"preference dataset has the columns \['id', 'image', "):
        DataCollatorForEmbeddingPreference(processor, dataset_name="eval")([rows[0], bad])
