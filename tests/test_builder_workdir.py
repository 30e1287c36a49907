"""The work dir belongs to one recipe: a build with other settings refuses to reuse it, shards are
named by the anchors they hold, and the assembled dataset holds every anchor exactly once."""

import errno
import functools
import json
import os
import re
import shutil
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch

import dataset_builders.builder as builder_module
from dataset_builders.builder import MANIFEST_VERSION, DamagedCheckpoint, MaplePreferences, WorkDirMismatch
from dataset_builders.judge import JudgeEnsemble, MLLMJudge
from dataset_builders.testing import (
    SOURCE_FEATURES,
    ColourCaptioner,
    ColourJudge,
    colour_square_source,
    colour_squares,
    thumbnail_miner,
    tiny_judge,
)


def _builder(tmp_path, **kwargs) -> MaplePreferences:
    settings = {
        "judge": ColourJudge(),
        "captioner": ColourCaptioner(),
        "miner": thumbnail_miner(),
        "source_dataset": colour_square_source(),
        "cache_dir": str(tmp_path / "cache"),
        "work_dir": tmp_path / "work",
        "shard_size": 4,
        "semdedup_clusters": None,
        "progress": False,
        "config_name": "paper",
    }
    return MaplePreferences(**{**settings, **kwargs})


def _ids(builder: MaplePreferences) -> list[str]:
    builder.download_and_prepare()
    return builder.as_dataset(split="train")["id"]


def test_shards_are_named_by_their_anchor_range(tmp_path):
    _ids(_builder(tmp_path))
    names = sorted(path.name for path in (tmp_path / "work" / "shards").glob("*.parquet"))
    assert names == ["shard-000000-000004.parquet", "shard-000004-000008.parquet", "shard-000008-000010.parquet"]


def test_another_shard_size_on_the_same_work_dir_is_refused_not_mixed(tmp_path):
    """The reviewer's repro: 10 anchors in shards of 4, shard 1 deleted, rebuilt with shards of 3.
    Before the fix the rebuild reused shards 0 and 2 of size 4 beside new ones of size 3, so some
    anchors came twice and others never."""
    first = _ids(_builder(tmp_path, shard_size=4))
    assert sorted(first) == sorted(colour_square_source()["id"])
    next(iter(sorted((tmp_path / "work" / "shards").glob("shard-000004-*.parquet")))).unlink()
    with pytest.raises(WorkDirMismatch, match=r"shard_size: 4 in the work dir, 3 now") as raised:
        _builder(tmp_path, cache_dir=str(tmp_path / "cache2"), shard_size=3).build_shards()
    assert str(tmp_path / "work") in str(raised.value) and "delete" in str(raised.value)
    assert isinstance(raised.value, ValueError)
    # The same recipe resumes: it recomputes the missing shard only, and every anchor comes once.
    builder = _builder(tmp_path, cache_dir=str(tmp_path / "cache3"))
    report = builder.build_shards()
    assert report.computed == [1] and report.reused == [0, 2]
    assert sorted(_ids(builder)) == sorted(first)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"num_hard_negatives": 2}, "num_hard_negatives"),
        ({"max_candidate_texts": 4}, "max_candidate_texts"),
        ({"seed": 1}, "seed"),
        ({"semdedup_clusters": 3}, "semdedup_clusters"),
        ({"judge": type("OtherJudge", (ColourJudge,), {"name": "other-judge"})()}, "judge"),
        ({"miner": thumbnail_miner(name="other-miner")}, "miner"),
        ({"captioner": type("Sampler", (ColourCaptioner,), {"settings": {"temperature": 0.9}})()}, "captioner_settings"),
        ({"miner": thumbnail_miner(duplicate_threshold=0.5)}, "miner_settings.duplicate_threshold"),
        ({"source_dataset": colour_square_source(9)}, "source_fingerprint"),
        ({"source_split": "test"}, "source_split"),
        ({"id_column": "caption"}, "id_column"),
        ({"text_candidates": "corpus"}, "text_candidates"),
        ({"captioned_negatives": 2}, "captioned_negatives"),
        ({"judge": type("RewordedJudge", (ColourJudge,), {"prompt": "colour distance, reworded"})()}, "judge_prompt"),
    ],
)
def test_every_recipe_change_is_named(tmp_path, change, field):
    _builder(tmp_path).build_shards()
    with pytest.raises(WorkDirMismatch, match=rf"\b{re.escape(field)}:"):
        _builder(tmp_path, **change).build_shards()


def test_a_setting_the_recipe_does_not_use_is_no_part_of_it(tmp_path):
    """captioned_negatives shapes nothing without a captioner, semdedup_epsilon nothing without SemDeDup, and seed
    nothing without either (it was recorded all the same, and a resume with another seed was refused as another
    recipe): changing them resumes such a work dir, whose manifest records them as None; where they are used, a change
    is named like any other."""
    corpus = {"config_name": "corpus-captions", "captioner": None}
    _builder(tmp_path, **corpus).check_work_dir()
    _builder(tmp_path, **corpus, captioned_negatives=2, semdedup_epsilon=0.2, seed=5).check_work_dir()
    saved = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert {name: saved[name] for name in ("captioned_negatives", "semdedup_epsilon", "seed")} == dict.fromkeys(
        ("captioned_negatives", "semdedup_epsilon", "seed"), None
    )
    # a manifest written before these were left out (seed 0 recorded, unused) resumes (found by a review)
    saved |= {"captioned_negatives": 1, "semdedup_epsilon": 0.07, "seed": 0}
    (tmp_path / "work" / "manifest.json").write_text(json.dumps(saved))
    _builder(tmp_path, **corpus).check_work_dir()
    _builder(tmp_path / "deduplicated", semdedup_clusters=3).check_work_dir()
    with pytest.raises(WorkDirMismatch, match=r"\(semdedup_epsilon: 0\.07 in the work dir, 0\.2 now\)"):
        _builder(tmp_path / "deduplicated", semdedup_clusters=3, semdedup_epsilon=0.2).check_work_dir()
    _builder(tmp_path / "corpus-deduplicated", **corpus, semdedup_clusters=3).check_work_dir()  # k-means is seeded
    with pytest.raises(WorkDirMismatch, match=r"\(seed: 0 in the work dir, 5 now\)"):
        _builder(tmp_path / "corpus-deduplicated", **corpus, semdedup_clusters=3, seed=5).check_work_dir()


def test_the_manifest_records_the_recipe_and_other_ranks_share_it(tmp_path):
    _builder(tmp_path).build_shards()
    manifest = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert manifest["shard_size"] == 4 and manifest["num_hard_negatives"] == 3
    assert manifest["judge"] == "colour-judge" and manifest["miner"] == "thumbnail-4x4"
    assert manifest["source_fingerprint"] == colour_square_source()._fingerprint
    # A different world size splits the same shards differently: it is not part of the recipe.
    assert _builder(tmp_path, rank=1, world_size=2).build_shards().reused == [1]


def test_of_two_recipes_claiming_an_empty_work_dir_at_once_the_second_is_refused(tmp_path, monkeypatch):
    """Both found no manifest, and each wrote its own (renamed into place, the last won): the first then read its own
    back, the second too, and both built in one work dir, mixing their checkpoints and shards."""
    first, second = _builder(tmp_path), _builder(tmp_path, num_hard_negatives=2)
    make_folder = Path.mkdir

    def second_claims_meanwhile(folder, *args, **kwargs):
        # the first build found no manifest and is about to write its own: the second claims the work dir then
        monkeypatch.setattr(Path, "mkdir", make_folder)
        second.check_work_dir()
        return make_folder(folder, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", second_claims_meanwhile)
    with pytest.raises(WorkDirMismatch, match=r"num_hard_negatives: 2 in the work dir, 3 now"):
        first.check_work_dir()
    assert json.loads((tmp_path / "work" / "manifest.json").read_text())["num_hard_negatives"] == 2


@pytest.mark.parametrize("checkpoint", ["manifest.json", "inputs.json", "stats.json"])
def test_a_json_checkpoint_that_is_not_an_object_is_named(tmp_path, checkpoint):
    """A hand-edited manifest holding valid JSON that is not an object (a list) raised an AttributeError traceback,
    where a damaged checkpoint is a DamagedCheckpoint naming its file (found by a review); inputs.json and stats.json
    alike."""
    _ids(_builder(tmp_path))
    if checkpoint == "inputs.json":  # read only to assemble the dataset again: a reused build does not read it
        (tmp_path / "work" / "stats.json").unlink()
    path = tmp_path / "work" / checkpoint
    path.write_text("[1, 2]")
    with pytest.raises(DamagedCheckpoint, match=rf"^{re.escape(str(path))} cannot be read \(ValueError: a JSON object was expected, it holds a list\)"):
        _builder(tmp_path).download_and_prepare()


@pytest.mark.parametrize(
    "checkpoint, error_name",
    [
        ("manifest.json", "EACCES"),
        ("inputs.json", "EIO"),
        ("embeddings.pt", "EACCES"),
        ("shards/shard-000004-000008.parquet", "EIO"),
    ],
)
def test_a_checkpoint_the_system_cannot_read_is_not_called_damaged(tmp_path, monkeypatch, checkpoint, error_name):
    """Any OSError reading a checkpoint was a DamagedCheckpoint advising to delete it, which for a permission problem
    or a disk error throws computed work away: the error propagates, naming the file, and the file is kept. The read
    raises it, as tests may run as root, whom chmod 000 does not deny."""
    code = getattr(errno, error_name)
    error = OSError(code, os.strerror(code))  # a PermissionError for EACCES
    _ids(_builder(tmp_path))
    shutil.rmtree(tmp_path / "cache")  # the assembled dataset: without it every checkpoint is read again
    path = tmp_path / "work" / checkpoint
    read_checkpoint = builder_module._read_checkpoint

    def read_fails_on_path(file, read, advice=None):
        def fail(_):
            raise error

        return read_checkpoint(file, fail if file == path else read, advice)

    monkeypatch.setattr(builder_module, "_read_checkpoint", read_fails_on_path)
    with pytest.raises(type(error)) as raised:
        _builder(tmp_path).download_and_prepare()
    assert raised.value is error and raised.value.__notes__ == [f"while reading the work-dir checkpoint {path}"]
    monkeypatch.undo()
    assert path.exists() and _builder(tmp_path).build_shards().computed == []


def test_a_shard_footer_the_system_cannot_read_is_not_called_damaged(tmp_path, monkeypatch):
    """The shard coverage check, which reads each shard's footer, alike called any OSError a file to delete."""
    _ids(_builder(tmp_path))
    shutil.rmtree(tmp_path / "cache")
    path = tmp_path / "work" / "shards" / "shard-000004-000008.parquet"
    read_metadata = pq.read_metadata

    def read_metadata_fails_on_path(file, *args, **kwargs):
        if file == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return read_metadata(file, *args, **kwargs)

    # the builder module's `pq`, which `datasets` replaced by a patched copy of pyarrow.parquet (for streaming)
    monkeypatch.setattr(builder_module.pq, "read_metadata", read_metadata_fails_on_path)
    with pytest.raises(PermissionError, match=re.escape(f"[Errno {errno.EACCES}] Permission denied: '{path}'")) as raised:
        _builder(tmp_path).download_and_prepare()
    # pyarrow's own errors name no file (a review found an EIO reported without it)
    assert raised.value.__notes__ == [f"while reading the work-dir checkpoint {path}"]


def test_a_shard_the_system_cannot_read_while_assembling_is_its_own_error(tmp_path, monkeypatch):
    """The shards' score columns read (the statistics), their whole tables then fail (an EIO on the image pages):
    `datasets` wrapped the OSError in a DatasetGenerationError naming no file (found by a review)."""
    _ids(_builder(tmp_path))
    shutil.rmtree(tmp_path / "cache")
    path = tmp_path / "work" / "shards" / "shard-000004-000008.parquet"
    error = OSError(errno.EIO, os.strerror(errno.EIO))
    read_checkpoint = builder_module._read_checkpoint

    def whole_table_fails_on_path(file, read, advice=None):
        def fail(_):
            raise error

        return read_checkpoint(file, fail if file == path and read is builder_module.pq.read_table else read, advice)

    monkeypatch.setattr(builder_module, "_read_checkpoint", whole_table_fails_on_path)
    with pytest.raises(OSError) as raised:
        _builder(tmp_path).download_and_prepare()
    assert raised.value is error and raised.value.__notes__ == [f"while reading the work-dir checkpoint {path}"]


@pytest.mark.parametrize("checkpoint", ["inputs.json", "embeddings.pt"])
def test_a_folder_in_place_of_a_checkpoint_is_damage(tmp_path, checkpoint):
    """An IsADirectoryError is no problem a rerun fixes: the folder is to be deleted, as a damaged file is."""
    _ids(_builder(tmp_path))
    shutil.rmtree(tmp_path / "cache")
    path = tmp_path / "work" / checkpoint
    path.unlink()
    path.mkdir()
    with pytest.raises(DamagedCheckpoint, match=rf"^{re.escape(str(path))} cannot be read \(IsADirectoryError"):
        _builder(tmp_path).download_and_prepare()


def test_a_tensor_checkpoint_that_is_no_longer_a_zip_is_damage(tmp_path):
    """torch.load reads a file that is not a zip with its legacy pickle reader, which raised an IndexError ("pop from
    empty list") for one bit flipped in the first byte (found by a review)."""
    path = tmp_path / "checkpoint.pt"
    torch.save(torch.zeros(50, 48), path)
    whole = bytearray(path.read_bytes())
    whole[0] ^= 1
    path.write_bytes(bytes(whole))
    with pytest.raises(DamagedCheckpoint, match=rf"^{re.escape(str(path))} cannot be read \(UnpicklingError: IndexError"):
        builder_module._read_tensor(path)


def test_an_oserror_writing_the_cache_stays_datasets_own(tmp_path, monkeypatch):
    """Only a shard's OSError, which notes the shard, is unwrapped from datasets' DatasetGenerationError: a full disk
    under the cache keeps the wrapper that says where it happened (found by a review)."""
    from datasets.arrow_writer import ArrowWriter

    _ids(_builder(tmp_path))
    shutil.rmtree(tmp_path / "cache")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ArrowWriter, "write", disk_full)
    with pytest.raises(datasets.exceptions.DatasetGenerationError) as raised:
        _builder(tmp_path).download_and_prepare()
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC


@pytest.mark.parametrize("kind", ["tensor", "shard"])
def test_a_checkpoint_cut_short_anywhere_is_damaged(tmp_path, kind):
    """torch.load reports a file cut short with an EOFError (empty), a RuntimeError or, at most lengths, an OSError
    with EINVAL (its zip reader seeks before the file's start); pyarrow with an ArrowInvalid. Each is damage, though
    other OSErrors are not (the tests above)."""
    path = tmp_path / f"checkpoint.{'pt' if kind == 'tensor' else 'parquet'}"
    if kind == "tensor":
        torch.save(torch.zeros(50, 48), path)
        read = builder_module._read_tensor
    else:
        pq.write_table(colour_square_source().data.table, path)
        read = functools.partial(builder_module._read_checkpoint, read=pq.read_table)
    whole = path.read_bytes()
    for length in range(0, len(whole), max(1, len(whole) // 50)):
        path.write_bytes(whole[:length])
        with pytest.raises(DamagedCheckpoint, match=rf"^{re.escape(str(path))} cannot be read .*: delete it and run again"):
            read(path)


@pytest.mark.parametrize("edit", ["older version", "field it lacks", "field it has more"])
def test_a_manifest_of_another_builder_version_or_with_other_fields_is_refused(tmp_path, edit):
    """An older builder recorded less (say, no captioner generation config, which now changes the captions): its
    work dir cannot be checked against this build, so it is not resumed, whatever fields it has in common."""
    _builder(tmp_path).build_shards()
    path = tmp_path / "work" / "manifest.json"
    manifest = json.loads(path.read_text())
    if edit == "older version":
        del manifest["manifest_version"]
        expected = rf"made by another version of the builder \(manifest version 1, this one writes {MANIFEST_VERSION}\)"
    elif edit == "field it lacks":
        del manifest["shard_size"]
        expected = r"shard_size: None in the work dir, 4 now"
    else:
        manifest["retired_field"] = 1
        expected = r"retired_field: 1 in the work dir, None now"
    path.write_text(json.dumps(manifest))
    with pytest.raises(WorkDirMismatch, match=expected):
        _builder(tmp_path).build_shards()


def test_corpus_captions_ignore_the_captioner(tmp_path):
    _builder(tmp_path, config_name="corpus-captions", captioner=None).build_shards()
    report = _builder(tmp_path, config_name="corpus-captions").build_shards()
    assert report.computed == [] and len(report.reused) == 3


def test_a_work_dir_without_manifest_is_not_trusted(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "inputs.json").write_text(json.dumps({"num_source_rows": 1, "valid_rows": [0], "skipped": []}))
    with pytest.raises(WorkDirMismatch, match="no manifest"):
        _builder(tmp_path).build_shards()


@pytest.mark.parametrize("where", ["file", "inside a file"])
def test_a_work_dir_that_is_a_file_is_refused_when_the_builder_is_made(tmp_path, where):
    """It was a FileExistsError traceback from the first write (the CLI checks its --output-dir itself)."""
    file = tmp_path / "taken"
    file.write_text("not a folder")
    work_dir = file if where == "file" else file / "work"
    detail = "is a file" if where == "file" else f"is inside {file}, a file"
    with pytest.raises(ValueError, match=re.escape(f"work_dir {work_dir} {detail}; expected a folder (created if missing)")):
        _builder(tmp_path, work_dir=work_dir)
    assert file.read_text() == "not a folder"


def test_an_empty_work_dir_is_refused_when_the_builder_is_made(tmp_path, monkeypatch):
    """`Path("")` is the current folder, where the build wrote its manifest, checkpoints and shards."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape("work_dir is empty; expected a folder (created if missing)")):
        _builder(tmp_path, work_dir="")


def test_a_work_dir_in_the_home_folder_is_expanded_as_the_cache_dir_is(tmp_path, monkeypatch):
    """work_dir="~/prefs/work" made a folder named ~ in the current folder, while datasets put cache_dir="~/prefs/cache"
    in the home folder (and folder_problem checked the home folder's path, not the one written)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    builder = _builder(tmp_path, config_name="corpus-captions", cache_dir="~/prefs/cache", work_dir="~/prefs/work")
    builder.build_shards()
    assert builder.work_dir == tmp_path / "home" / "prefs" / "work"
    assert (builder.work_dir / "manifest.json").is_file() and not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("shard-000002-000006.parquet", "shard-000004-000008.parquet", r"anchors 2\.\.5 are in more than one shard"),
        ("shard-000008-000012.parquet", "shard-000004-000008.parquet", r"shard-000008-000012\.parquet holds anchors outside \[0, 10\)"),
        ("shard-000008-000010.parquet", "shard-000004-000008.parquet", r"shard-000008-000010\.parquet holds 4 rows, not 2"),
        ("shard-000008-000010.parquet", b"PAR1 cut short", r"shard-000008-000010\.parquet cannot be read .*anchors 8\.\.9 are in no shard"),
        ("shard-old.parquet", "shard-000004-000008.parquet", r"shard-old\.parquet is not named shard-START-END\.parquet"),
    ],
)
def test_merge_refuses_shards_that_do_not_cover_every_anchor_once(tmp_path, name, content, problem):
    """Shard files copied in by hand, left by another recipe or cut short are caught when the dataset is assembled,
    not read into it. `content`: the bytes written to `name`, or the shard whose bytes are copied there."""
    builder = _builder(tmp_path)
    builder.build_shards()
    shards = tmp_path / "work" / "shards"
    (shards / name).write_bytes(content if isinstance(content, bytes) else (shards / content).read_bytes())
    with pytest.raises(WorkDirMismatch, match=rf"cannot assemble the dataset from {re.escape(str(shards))}: .*{problem}"):
        builder.download_and_prepare()


def test_a_judge_with_another_image_resolution_is_another_recipe(tmp_path):
    """The reviewer's case: the manifest held component names only, so a judge seeing images at
    another resolution (--max-pixels), in another dtype or with another prompt resumed the work
    dir and mixed its shards with the old ones. Only the setting that changed is named."""
    _builder(tmp_path, judge=tiny_judge(image_size=32)).check_work_dir()
    with pytest.raises(WorkDirMismatch, match=r"judge_settings\.image_processor\.size\.longest_edge: 1024 in the work dir, 4096 now") as raised:
        _builder(tmp_path, judge=tiny_judge(image_size=64)).check_work_dir()
    assert "chat_template" not in str(raised.value)
    with pytest.raises(WorkDirMismatch, match=r"judge_settings\.prompt: "):
        _builder(tmp_path, judge=tiny_judge(image_size=32, prompt='Is this "{text}"?')).check_work_dir()
    _builder(tmp_path, judge=tiny_judge(image_size=32)).check_work_dir()  # the same settings resume


def test_a_work_dir_begun_before_the_judge_read_special_token_strings_and_cut_long_texts_is_refused(tmp_path):
    """A judge that skipped rows whose texts hold a special token's string and ran long texts uncut wrote neither
    rule into its settings: resumed, its shards were mixed with ones scoring those rows and cutting those texts. Its
    manifest now differs by both; so does one of a judge whose tokenizer had another `model_max_length`."""
    _builder(tmp_path, judge=tiny_judge()).check_work_dir()
    path = tmp_path / "work" / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("special_token_strings", "context_length"):
        del manifest["judge_settings"][key]  # as the judge before this change wrote it
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        WorkDirMismatch,
        match=r"judge_settings\.context_length: None in the work dir, 128 now; "
        r"judge_settings\.special_token_strings: None in the work dir, 'read as text' now",
    ):
        _builder(tmp_path, judge=tiny_judge()).check_work_dir()
    shutil.rmtree(tmp_path / "work")
    _builder(tmp_path, judge=tiny_judge()).check_work_dir()
    judge = tiny_judge()
    encoder = judge.prompt_encoder
    encoder.tokenizer.model_max_length = 96
    judge = MLLMJudge(judge.model, encoder.tokenizer, encoder.image_processor, name=judge.name)
    with pytest.raises(WorkDirMismatch, match=r"judge_settings\.context_length: 128 in the work dir, 96 now\);"):
        _builder(tmp_path, judge=judge).check_work_dir()


@pytest.mark.parametrize("ensemble", [False, True], ids=["judge", "ensemble"])
def test_the_refusal_of_a_work_dir_begun_before_the_judge_recorded_its_text_rules_says_what_it_did(tmp_path, ensemble):
    """"judge_settings.context_length: None in the work dir" read as if the old judge had no context: the refusal
    now says that builders before recorded neither rule, and what their judge did instead, as it says for CSV cells.
    A work dir whose judge recorded them names only the change."""
    def judge() -> MLLMJudge | JudgeEnsemble:
        return JudgeEnsemble([tiny_judge(), ColourJudge()]) if ensemble else tiny_judge()

    _builder(tmp_path, judge=judge()).check_work_dir()
    path = tmp_path / "work" / "manifest.json"
    manifest = json.loads(path.read_text())
    old_settings = manifest["judge_settings"]["judges"][0] if ensemble else manifest["judge_settings"]
    for key in ("special_token_strings", "context_length"):
        del old_settings[key]  # as the judge before 332fe21 wrote it
    path.write_text(json.dumps(manifest))
    note = (
        "(builders before this one did not record the judge settings special_token_strings or context_length: they "
        "skipped the rows of texts holding a special token's string and did not cut long texts to the judge's context, "
        "so the work dir's scores may differ from this build's); "
    )
    with pytest.raises(WorkDirMismatch, match=r"now\) " + re.escape(note)):
        _builder(tmp_path, judge=judge()).check_work_dir()
    old_settings["context_length"] = 96  # only the special_token_strings rule is missing: a new judge that refuses them
    path.write_text(json.dumps(manifest))
    with pytest.raises(WorkDirMismatch) as raised:
        _builder(tmp_path, judge=judge()).check_work_dir()
    assert "builders before" not in str(raised.value)
    if not ensemble:  # (an ensemble's difference is its whole list of members' settings)
        assert "judge_settings.context_length: 96 in the work dir, 128 now" in str(raised.value)


def test_a_settings_change_is_caught_by_download_and_prepare_too(tmp_path):
    """`datasets` reuses a prepared dataset whose cache key matches, without running the builder:
    the key holds a digest of the components' settings, so a change reaches the manifest check."""
    _builder(tmp_path).download_and_prepare()
    with pytest.raises(WorkDirMismatch, match=r"miner_settings\.duplicate_threshold: 0\.99999 in the work dir, 0\.5 now"):
        _builder(tmp_path, miner=thumbnail_miner(duplicate_threshold=0.5)).download_and_prepare()


def _write_source_file(path, caption_word: str = "square") -> None:
    columns = colour_squares(8)
    columns["caption"] = [caption.replace("square", caption_word) for caption in columns["caption"]]
    datasets.Dataset.from_dict(columns, features=SOURCE_FEATURES).to_parquet(str(path))


def _file_builder(tmp_path, source, **kwargs) -> MaplePreferences:
    return _builder(tmp_path, source_dataset=None, source=str(source), config_name="corpus-captions", captioner=None, **kwargs)


def test_a_changed_source_file_is_caught_by_download_and_prepare(tmp_path):
    """The reviewer's repro: the cache key of a path source holds its path, not its contents, and
    before the fix `download_and_prepare` returned the cached build of the old file."""
    source = tmp_path / "source.parquet"
    _write_source_file(source)
    first = _file_builder(tmp_path, source)
    first.download_and_prepare()
    assert "square" in first.as_dataset(split="train")["caption"][0]
    _write_source_file(source, "triangle")
    os.utime(source, (source.stat().st_atime + 10, source.stat().st_mtime + 10))
    with pytest.raises(WorkDirMismatch, match=r"source_fingerprint: "):
        _file_builder(tmp_path, source).download_and_prepare()


def test_a_changed_image_file_of_a_table_of_image_paths_is_a_changed_source(tmp_path):
    """The fingerprint of a table of image paths covered the table alone: a replaced image was built on, its shards
    mixing the old image's embedding with the new one's (found by a review). A copy of the table with its images
    resumes the build."""
    from PIL import Image

    rows = list(colour_square_source(6).cast_column("image", datasets.Image(decode=False)))
    (tmp_path / "table" / "pics").mkdir(parents=True)
    for row in rows:
        (tmp_path / "table" / "pics" / f"{row['id']}.png").write_bytes(row["image"]["bytes"])
    datasets.Dataset.from_dict({"id": [row["id"] for row in rows], "caption": [row["caption"] for row in rows],
                                "image": [f"pics/{row['id']}.png" for row in rows]}).to_parquet(str(tmp_path / "table" / "t.parquet"))
    shutil.copytree(tmp_path / "table", tmp_path / "copy")

    def builder(folder):
        return _builder(tmp_path, source_dataset=None, source=str(tmp_path / folder / "t.parquet"),
                        config_name="corpus-captions", captioner=None)

    first = builder("table")
    first.check_work_dir()
    fingerprint = first.manifest()["source_fingerprint"]
    assert builder("copy").manifest()["source_fingerprint"] == fingerprint
    Image.new("RGB", (64, 64), (0, 0, 255)).save(tmp_path / "table" / "pics" / f"{rows[2]['id']}.png")
    with pytest.raises(WorkDirMismatch, match=r"source_fingerprint: "):
        builder("table").check_work_dir()


def test_too_many_semdedup_clusters_for_the_source_s_rows_are_refused_before_its_images_are_read(tmp_path, monkeypatch):
    """The check waited for the input check, which decodes every image (found by a review)."""
    from dataset_builders.sources import SourceError

    def input_check(self):
        raise AssertionError("the input check ran")

    monkeypatch.setattr(MaplePreferences, "check_inputs", input_check)
    with pytest.raises(SourceError, match="SemDeDup with 50000 clusters on 10 rows"):
        _builder(tmp_path, semdedup_clusters=50_000).plan()


def test_the_same_source_bytes_with_a_new_timestamp_or_place_resume_the_build(tmp_path):
    """`datasets`' fingerprint of a local file follows its timestamp: a source staged again (the same bytes, copied to
    a job's local disk) used to be a WorkDirMismatch."""
    source = tmp_path / "source.parquet"
    _write_source_file(source)
    first = _file_builder(tmp_path, source)
    first.download_and_prepare()
    rows = _ids(first)
    staged = tmp_path / "staged"
    staged.mkdir()
    shutil.copyfile(source, staged / "source.parquet")
    os.utime(staged / "source.parquet", (source.stat().st_atime + 100, source.stat().st_mtime + 100))
    again = _builder(tmp_path, source_dataset=None, source=str(staged / "source.parquet"), config_name="corpus-captions", captioner=None)
    again.check_work_dir()  # the manifest records the source path too; the fingerprint is what must agree
    assert again.manifest()["source_fingerprint"] == first.manifest()["source_fingerprint"]
    assert _ids(again) == rows


def test_local_source_digest_reads_sizes_edges_and_sampled_blocks(tmp_path):
    from dataset_builders.sources import local_source_digest

    big = tmp_path / "folder" / "big.bin"
    big.parent.mkdir()
    payload = bytearray(os.urandom(1_000_000))
    big.write_bytes(payload)
    reference = local_source_digest(big.parent)
    payload[100_000] ^= 0xFF  # in no sampled block (edges of 64 KiB, 4 KiB at every 17th): the documented blind spot
    big.write_bytes(payload)
    assert local_source_digest(big.parent) == reference
    payload[1_000_000 * 8 // 17] ^= 0xFF  # inside a sampled block
    big.write_bytes(payload)
    assert local_source_digest(big.parent) != reference
    (tmp_path / "folder" / "extra.txt").write_text("more")
    assert len({reference, local_source_digest(big.parent), local_source_digest(big)}) == 3
    # 100 small files: the 64 sampled are spread over all of them, the last included (the first 64 were read)
    many = tmp_path / "many"
    many.mkdir()
    for index in range(100):
        (many / f"part-{index:03d}.bin").write_bytes(bytes(1000))
    before = local_source_digest(many)
    (many / "part-099.bin").write_bytes(b"x" + bytes(999))  # same size
    assert local_source_digest(many) != before
    # snapshot_download(local_dir=...) leaves download metadata with a timestamp, which datasets does not read either
    folder_digest = local_source_digest(big.parent)
    (tmp_path / "folder" / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / "folder" / ".cache" / "huggingface" / "big.bin.metadata").write_text("1764460800.0")
    assert local_source_digest(big.parent) == folder_digest
    # an image folder's caption table is read in full: rows reordered (same size) among 100 sampled images once
    # resumed a build with its rows mixed (13 ids repeated, 13 lost)
    for split in ("train", "validation"):  # train/metadata.csv sorts between the two splits' images: not sampled
        (tmp_path / "images" / split).mkdir(parents=True)
        for index in range(100):
            (tmp_path / "images" / split / f"{index:03d}.png").write_bytes(bytes(100))
    images = tmp_path / "images" / "train"
    rows = [f"{index:03d}.png,caption {index}" for index in range(100)]
    (images / "metadata.csv").write_text("\n".join(["file_name,caption", *rows]))
    before = local_source_digest(images.parent)
    (images / "metadata.csv").write_text("\n".join(["file_name,caption", *rows[50:], *rows[:50]]))
    assert local_source_digest(images.parent) != before
    (images / "metadata.csv").unlink()  # the same as parquet, uncompressed so that a reordering keeps its size
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"file_name": [f"{index:03d}.png" for index in range(100)], "caption": [f"caption {index}" for index in range(100)]})
    pq.write_table(table, images / "metadata.parquet", compression="none")
    before, size = local_source_digest(images.parent), (images / "metadata.parquet").stat().st_size
    pq.write_table(table.take(list(range(50, 100)) + list(range(50))), images / "metadata.parquet", compression="none")
    assert (images / "metadata.parquet").stat().st_size == size
    assert local_source_digest(images.parent) != before


def test_local_source_digest_sees_the_last_block_every_size_and_not_what_datasets_skips(tmp_path):
    """The other half of what the digest reads: each sampled file's last 64 KiB (a parquet file's footer, where an
    appended row group shows), the size of every file, sampled or not, and nothing under `__*` folders (macOS's
    `__MACOSX`), which `datasets` does not read either."""
    from dataset_builders.sources import local_source_digest

    folder = tmp_path / "folder"
    folder.mkdir()
    payload = bytearray(os.urandom(1_000_000))
    (folder / "big.bin").write_bytes(payload)
    reference = local_source_digest(folder)
    payload[-1] ^= 0xFF
    (folder / "big.bin").write_bytes(payload)
    assert local_source_digest(folder) != reference
    payload[-1] ^= 0xFF
    (folder / "big.bin").write_bytes(payload)
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "big.bin").write_bytes(b"resource fork")
    assert local_source_digest(folder) == reference
    many = tmp_path / "many"
    many.mkdir()
    for index in range(100):
        (many / f"part-{index:03d}.bin").write_bytes(bytes(1000))
    before = local_source_digest(many)
    (many / "part-001.bin").write_bytes(bytes(1001))  # not among the 64 files sampled of 100: its size alone shows
    assert local_source_digest(many) != before


def test_a_new_work_dir_builds_again_rather_than_reusing_the_cache(tmp_path):
    """The cached dataset was made from the old work dir's shards: with that work dir deleted (as
    the `WorkDirMismatch` message advises) the cache cannot be trusted either."""
    source = tmp_path / "source.parquet"
    _write_source_file(source)
    _file_builder(tmp_path, source).download_and_prepare()
    shutil.rmtree(tmp_path / "work")
    _write_source_file(source, "triangle")
    os.utime(source, (source.stat().st_atime + 10, source.stat().st_mtime + 10))
    rebuilt = _file_builder(tmp_path, source)
    rebuilt.download_and_prepare()
    assert all("triangle" in caption for caption in rebuilt.as_dataset(split="train")["caption"])
    assert (tmp_path / "work" / "stats.json").exists()


def test_a_recipe_difference_with_settings_on_one_side_only_is_short():
    """A stand-in judge has no settings; against an MLLM judge's the message printed them whole, chat template and
    all, on one line (found by a user-journey review)."""
    from dataset_builders.builder import _differences

    settings = {"prompt": "Does the image match?", "chat_template": "{% for m in messages %}" * 100, "dtype": "float32",
                "weights": "0" * 64, "image_processor": {"size": 448}}
    [difference] = _differences({"judge_settings": None}, {"judge_settings": settings})
    assert difference.startswith("judge_settings: None in the work dir, {") and len(difference) < 400


@pytest.mark.parametrize("captions", ["metadata.csv", "metadata.jsonl", "table.csv"])
def test_a_work_dir_begun_before_csv_cells_were_read_as_text_is_refused_for_a_source_with_csv_data(tmp_path, captions):
    """A build begun when pandas' defaults read a CSV source (the ids 0123 and 123 both 123, the second skipped as the
    first's duplicate) resumed with that input check, where the source now reads 0123: its manifest, which has no
    source_csv_cells, names the change. A source without CSV data resumes such a work dir."""
    from PIL import Image

    source = tmp_path / "source"
    source.mkdir()
    for index in range(2):
        Image.new("RGB", (8, 8), (index * 80, 0, 0)).save(tmp_path / f"{index}.png")
    if captions == "table.csv":
        (source / captions).write_text(f"image,id,caption\n{tmp_path / '0.png'},0123,a\n{tmp_path / '1.png'},123,b\n")
    else:
        for index in range(2):
            shutil.copyfile(tmp_path / f"{index}.png", source / f"{index}.png")
        rows = [{"file_name": "0.png", "id": "0123", "caption": "a"}, {"file_name": "1.png", "id": "123", "caption": "b"}]
        (source / captions).write_text(
            "file_name,id,caption\n0.png,0123,a\n1.png,123,b\n" if captions.endswith(".csv")
            else "".join(json.dumps(row) + "\n" for row in rows)
        )

    def builder() -> MaplePreferences:
        return _builder(tmp_path, source_dataset=None, source=str(source), config_name="corpus-captions", captioner=None)

    builder().check_work_dir()
    path = tmp_path / "work" / "manifest.json"
    manifest = json.loads(path.read_text())
    has_csv = captions.endswith(".csv")
    assert manifest["source_csv_cells"] == ("the text written, only an empty cell missing" if has_csv else None)
    del manifest["source_csv_cells"]
    path.write_text(json.dumps(manifest))
    if has_csv:
        with pytest.raises(WorkDirMismatch, match=r"\(source_csv_cells: None in the work dir, 'the text written, only "
                                                  r"an empty cell missing' now\) \(builders before this one read a source's CSV cells "
                                                  r"with pandas' defaults: an id 0123 as 123, a caption NA as missing\)"):
            builder().check_work_dir()
    else:
        builder().check_work_dir()
