"""How a local folder of data files (a Hub dataset snapshot, a `push_to_hub`-style export, a build's shards, a user's own
parquet files) divides into configs and splits, as `datasets` reads it: the preference readers
(`MaplePreferences.from_pretrained`, `maple train`) and the benchmark reader share these rules, so that no reader takes one
split's rows for another's, merges configs, or drops files without a word."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


# How `push_to_hub` names a split's files, in `data/` or in a config's folder: "test_hard-00000-of-00001.parquet", and
# in older `datasets` releases (from 2.3) with the shard's fingerprint (16 hex digits) last:
# "test_hard-00000-of-00001-a3f1c0de5b7e9d24.parquet"
_SPLIT_SHARD_NAME = re.compile(r"^(\w+(?:\.\w+)*)-\d{5}-of-\d{5}(?:-[0-9a-f]{16})?\.")


def shard_split(name: str) -> str | None:
    """The split a file named as `push_to_hub` names a split's shards belongs to ("test_hard" for
    "test_hard-00000-of-00001.parquet", and for the older "test_hard-00000-of-00001-a3f1c0de5b7e9d24.parquet"), None
    for another name."""
    return shard.group(1) if (shard := _SPLIT_SHARD_NAME.match(name)) else None


def keyword_split(name: str) -> str | None:
    """The split that `datasets` reads a folder named `name` as, where `name` is one of its split keywords ("test" for
    `eval/`, "validation" for `dev/`); None for another name."""
    from datasets.data_files import SPLIT_KEYWORDS

    return next((str(split) for split, keywords in SPLIT_KEYWORDS.items() if name in keywords), None)


def is_config_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder`, a top-level folder of a Hub dataset snapshot, is a config's: it directly holds a split's
    shards as `push_to_hub` names them in the folder named after the config ("paper/train-00000-of-00001.parquet"; the
    "default" config's in `data/`), of a split other than the folder's own. A split's folder (which `datasets` reads as
    that split) holds shards named after itself ("test_hard/test_hard-00000-of-00001.parquet"), and one named as a
    split keyword of `datasets` (`train/`, `validation/`, `test/`, `eval/`...) holds files of any name but shards of
    another split so named ("validation/part-00000-of-00002.parquet", "eval/test-00000-of-00001.parquet"):
    "eval/train-00000-of-00001.parquet" is a config's, as `push_to_hub(config_name="eval")` writes it."""
    folder = Path(folder)
    shard_splits = {shard_split(file.name) for file in folder.glob("*.parquet")} - {None, folder.name}
    own_split = keyword_split(folder.name)
    if own_split is None:
        return bool(shard_splits)
    return any(keyword_split(split) not in (None, own_split) for split in shard_splits)


def snapshot_config_folders(folder: str | os.PathLike, files: Sequence[str | os.PathLike] | None = None) -> list[str]:
    """The configs of a Hub dataset snapshot `folder` read without the `configs` of its card: the top-level folders that
    `files` (data files inside `folder`; None: those `datasets` reads there) lie in, "." for `folder`'s own files,
    sorted; but not a split's folder, one named as one of `datasets`' split keywords (`train/`, `test/`, `eval/`...)
    that is no config's (`is_config_folder`). A folder of split folders is one config with those splits, and holds
    none of these; configs laid out in split folders (`paper/train/0000.parquet`) are told apart too. The folder given
    is judged by its files, never by its own name. Hidden files are left out, as `datasets` leaves them out."""
    folder = str(folder)
    if files is None:
        files = data_files(folder)  # (only files datasets sees)
    else:
        readable = _splits_by_patterns(folder, _EVERY_FILE)
        files = [file for file in files if os.path.abspath(file) in readable]
    top_folders = {
        parts[0] if len(parts := Path(os.path.relpath(os.path.abspath(file), folder)).parts) > 1 else "."
        for file in files
    }
    return sorted(
        name for name in top_folders  # ("." is no keyword)
        if keyword_split(name) is None or is_config_folder(os.path.join(folder, name))
    )


def lone_config_folder(folder: str | os.PathLike) -> Path | None:
    """`folder`, the one config's folder of a snapshot read without its card (`snapshot_config_folders`; "." for the
    snapshot itself), if its files are split by the names `push_to_hub` gives them there: if it directly holds its
    train shards ("train-00000-of-00001.parquet"). None for a folder of other files named so
    ("prefs-00000-of-00001.parquet"), which `datasets` reads as the train split."""
    folder = Path(folder)
    return folder if any(shard_split(file.name) == "train" for file in folder.glob("*.parquet")) else None


def check_shards_read_as_named(folder: str | os.PathLike, config_folder: str | os.PathLike) -> None:
    """Refuse a split's shard directly inside `config_folder` (the lone config's folder of snapshot `folder`, read
    without its card: `lone_config_folder`) that `datasets`, reading `folder`, reads as a split other than the one its
    name gives: it reads a shard's own split name ("test_hard-00000-of-00001.parquet") only inside `data/`, and
    elsewhere the split keyword within it ("test"), merging "test_hard" into "test" and "train_extra" into "train".
    `MaplePreferences.from_pretrained` reads it by its name. A `SplitLayoutError` naming the file, both splits and the
    fix; and one for each file that `files_by_split` refuses."""
    folder = str(folder)
    read_as = {
        os.path.abspath(file): split for split, split_files in files_by_split(folder).items() for file in split_files
    }
    for split, split_files in files_by_split(folder, config_folder=config_folder).items():
        for file in split_files:
            if (read_split := read_as.get(os.path.abspath(file), split)) != split:
                relative = os.path.relpath(os.path.abspath(file), folder)
                raise SplitLayoutError(
                    f"{folder}: datasets reads {relative} as split {read_split!r}, not as split {split!r}, which its "
                    "name gives as push_to_hub names a split's shards: without the README.md whose configs name each "
                    "split's files, datasets reads a shard's own split name only in data/; add the dataset's README.md, "
                    f"or move the config's files into a folder data/ (data/{Path(file).name}) "
                    "(MaplePreferences.from_pretrained reads them as they are)"
                )


class DatasetCardError(ValueError):
    """A README.md whose YAML metadata `datasets` cannot read a folder's configs from: not UTF-8, not YAML, not a
    mapping, or `configs` other than a list of mappings each with a `config_name` and well-formed `data_files` and
    `features`. Its message names the file and the problem."""


def card_configs(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The `configs` that the README.md of `folder` (a Hub dataset snapshot's card) names: each config's files by
    split, which `datasets` reads as written, and which tell configs apart where folder names cannot. Empty where the
    folder has no card, or its card names none. A `DatasetCardError` naming the card where `datasets` could not read
    them (it would fail on the folder with a parser's traceback)."""
    import yaml
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub.repocard import metadata_load

    card = Path(folder) / "README.md"
    if not card.is_file():
        return []
    try:
        metadata = metadata_load(card) or {}
    except yaml.YAMLError as error:
        raise DatasetCardError(
            f"{card}: its YAML metadata (between the --- lines) does not parse: {_yaml_problem(card, error)}"
        ) from error
    except ValueError as error:  # not UTF-8, or huggingface_hub's "repo card metadata block should be a dict"
        raise DatasetCardError(f"{card}: its YAML metadata (between the --- lines) cannot be read: {error}") from error
    configs = metadata.get("configs") or []
    if not isinstance(configs, list) or not all(isinstance(config, dict) for config in configs):
        raise DatasetCardError(f"{card}: configs is {configs!r:.80}; expected a list of mappings, one per config")
    try:  # the rest as `datasets` checks it: each config's name and data_files
        MetadataConfigs.from_dataset_card_data({"configs": configs})
    except ValueError as error:  # (the examples of data_files it lists after the problem left out)
        detail = " ".join(str(error).split("Examples of data_files")[0].split())
        raise DatasetCardError(f"{card}: {detail}") from error
    except (TypeError, KeyError, AttributeError) as error:  # what it does not check: `features: 3`, `[3]`, ...
        raise DatasetCardError(
            f"{card}: datasets cannot read its configs (a config_name, a data_files split or features of the wrong "
            f"type or shape): {type(error).__name__}: {error}"
        ) from error
    return configs


def card_config_files(folder: str | os.PathLike, config_name: str | None = None) -> dict[str, list[Path]]:
    """The data files of config `config_name` of `folder` by split, sorted, as the `configs` of its README.md
    (`card_configs`) name them and `datasets` reads them: `config_name` None picks the card's default config as
    `datasets` picks it (the only one, the one named "default", or the one marked `default: true`). A `ValueError`
    naming the card's configs where it has several and no default, or none named `config_name`."""
    from datasets.data_files import get_data_patterns, sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs

    configs = MetadataConfigs.from_dataset_card_data({"configs": card_configs(folder)})
    if config_name is None:
        config_name = configs.get_default_config_name()
    if config_name not in configs:
        which = "no default config" if config_name is None else f"no config {config_name!r}"
        raise ValueError(f"{folder}: its README.md names the configs {', '.join(configs)}, and {which}")
    config = configs[config_name]
    base = os.path.join(folder, config["data_dir"]) if config.get("data_dir") else str(folder)
    data_files = config.get("data_files")
    patterns = sanitize_patterns(data_files) if data_files is not None else get_data_patterns(base)
    by_split: dict[str, list[Path]] = {}
    for path, splits in sorted(_splits_by_patterns(base, patterns).items()):
        for split in splits:
            by_split.setdefault(split, []).append(Path(path))
    return by_split


def _yaml_problem(card: Path, error: Exception) -> str:
    """What the YAML parser found wrong in the metadata of `card`, and where in the card: the parser numbers the
    lines of the metadata block it was given, which starts after the card's opening `---` line."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    mark = getattr(error, "problem_mark", None)
    if mark is None:  # a ReaderError (a character YAML does not allow) says where itself
        return " ".join(str(error).split())
    problem = ", ".join(filter(None, (getattr(error, "context", None), getattr(error, "problem", None))))
    text = card.read_text(encoding="utf-8-sig")
    block_start = text[: REGEX_YAML_BLOCK.search(text).start(2)].count("\n")  # (`metadata_load` matched it)
    return f"{problem} (line {block_start + mark.line + 1}, column {mark.column + 1})"


class SplitLayoutError(ValueError):
    """A folder of data files that `datasets` does not read each as the one split its path names: one it reads as two
    splits (`train/val_subset/0000.parquet` is "train" and "validation"), or one it leaves out beside files it reads
    (`test/0000.parquet` beside `data/train-00000-of-00001.parquet`, whose shard names `datasets` then reads alone).
    Read so, a split's rows would be another's too, or silently missing; the message names the files and how to name
    them."""


# The patterns under which `datasets` sees every file of a folder (hidden ones left out): all read as one "split"
_EVERY_FILE = {"all": ["**"]}


def _splits_by_patterns(folder: str, patterns: dict[str, list[str]]) -> dict[str, list[str]]:
    """The splits (each once) that `patterns` (split -> glob patterns) give each file of `folder`, by absolute path
    (symbolic links, as in the Hub cache, kept), as `datasets` resolves them: hidden files left out."""
    from datasets.data_files import resolve_pattern

    splits_of: dict[str, list[str]] = {}
    for split, split_patterns in patterns.items():
        for pattern in split_patterns:
            try:
                names = resolve_pattern(pattern, base_path=folder)
            except FileNotFoundError:  # a pattern that matches nothing here
                continue
            for name in names:
                splits = splits_of.setdefault(os.path.abspath(name), [])
                if str(split) not in splits:
                    splits.append(str(split))
    return splits_of


def data_files(folder: str | os.PathLike) -> list[Path]:
    """The data files of `folder` as `datasets` finds them, by absolute path, sorted: those in the formats of the files
    its patterns read there (`get_data_patterns`), hidden files left out; none where they read none."""
    from datasets.data_files import EmptyDatasetError, get_data_patterns

    folder = str(folder)
    try:
        patterns = get_data_patterns(folder)
    except EmptyDatasetError:
        return []
    return _in_read_formats(_splits_by_patterns(folder, _EVERY_FILE), _splits_by_patterns(folder, patterns))


def _in_read_formats(readable: dict[str, list[str]], read_as: dict[str, list[str]]) -> list[Path]:
    """The files of `readable` (every file `datasets` sees in a folder) in the formats of those its patterns read
    (`read_as`), sorted: a folder's data files."""
    suffixes = {Path(name).suffix for name in read_as}
    return sorted(Path(name) for name in readable if Path(name).suffix in suffixes)


def _meant_split(left_out: Path, named: list[str]) -> str | None:
    """The split that `left_out` (a file's path within a folder), whose path names the splits `named` of `datasets`, is
    meant as, for an example of the name that `datasets` reads it by: the one its folder is named as (`val/` is
    "validation"; `test_hard/` and `heldout/` are their own), else the one its path names; None where none can be
    told."""
    folder_name = left_out.parent.name
    if folder_name not in ("", "data") and _SPLIT_SHARD_NAME.match(f"{folder_name}-00000-of-00001."):
        if (split := keyword_split(folder_name)) is not None:
            return split
        # a folder named after a split of its own: test_hard/ (which datasets reads as "test"), or heldout/ (none)
        if not named or any(keyword_split(part) in named for part in re.split(r"[-._ 0-9]+", folder_name)):
            return folder_name
    return named[0] if len(named) == 1 else None


def _how_datasets_splits(
    patterns: dict[str, list[str]], left_out: Path, named: list[str], left_out_naming_no_split: int
) -> tuple[str, str, bool]:
    """How `datasets` reads the splits of a folder for which `get_data_patterns` gave `patterns`, and how to name a
    file so that it reads it as its split, for a `SplitLayoutError`: with `left_out` (a file it leaves out, by its path
    within the folder, which names the splits `named`; `left_out_naming_no_split` of the files it leaves out name none)
    so named, where its split can be told; and whether that name is the train split's (`prefs_train.parquet` for a
    `prefs.parquet` that names no split, beside no train split and no other file that names none)."""
    from datasets.data_files import (
        DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME,
        DEFAULT_PATTERNS_SPLIT_IN_FILENAME,
        SPLIT_PATTERN_SHARDED,
    )

    split, split_patterns = next(iter(patterns.items()))
    if split_patterns == [SPLIT_PATTERN_SHARDED.format(split=split)]:
        meant = _meant_split(left_out, named)
        example = f" (data/{meant}-00000-of-00001.parquet for {left_out})" if meant is not None else ""
        return ("from the names of its shards in data/ alone (data/SPLIT-00000-of-00001.parquet)",
                f"put every split's files in data/, named as its shards are{example}", False)
    if split_patterns == DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME.get(split):
        return ("from its split folders alone (train/, validation/, test/...)", "move every split's files into its folder",
                False)
    if split_patterns == DEFAULT_PATTERNS_SPLIT_IN_FILENAME.get(split):
        # the one file that names no split beside files of other splits than train: probably the train split (of
        # several, heldout.parquet beside prefs.parquet, which one cannot be told)
        probably_train = not named and left_out_naming_no_split == 1 and "train" not in patterns
        example = f" ({left_out.stem}_train{left_out.suffix} for {left_out})" if probably_train else ""
        return ("from the split that its files' names give (train.parquet, test-0.parquet) alone",
                f"name every file's split in its name{example}, or move every split's files into its folder (train/, "
                "test/...)", probably_train)
    return f"by the patterns {patterns}", "move or rename them so that these patterns read them", False


def files_by_split(
    folder: str | os.PathLike,
    files: Sequence[Path] | None = None,
    *,
    config_folder: str | os.PathLike | None = None,
    leave_out_unnamed: bool = False,
) -> dict[str, list[Path]]:
    """`files` (data files inside `folder`; None: those of `folder` in the formats `datasets` reads there, as it reads
    them) grouped by the split their paths within `folder` give, each group in the order of `files`: a file directly
    inside `config_folder` (a config's folder, or `data/`; None: none) named as `push_to_hub` names a split's shards
    there (`test_hard-00000-of-00001.parquet`, where `datasets` reads the custom name only inside `data/`); else as
    `datasets` groups the files of a folder or a Hub repo (`test.parquet`, `validation/part-0.parquet`; all of them
    "train" when none gives a split). Hidden files are left out, as `datasets` leaves them out.

    A file is never read as a split other than its own: a `SplitLayoutError` for a file `datasets` reads as two splits,
    and for one it leaves out beside files it reads, which it does where their paths give splits in different ways
    (`test/0000.parquet` beside `data/train-00000-of-00001.parquet`, or `heldout/0000.parquet` beside `train/`). With
    `leave_out_unnamed`, a left-out file whose own path names no split (`extra.parquet` beside `test.parquet`) is left
    out instead, as `datasets` leaves it out. A `ValueError` (from `datasets`) for a name that is no split name."""
    from datasets.data_files import DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME, DEFAULT_PATTERNS_SPLIT_IN_FILENAME, get_data_patterns

    folder = str(folder)
    patterns = get_data_patterns(folder)
    read_as = _splits_by_patterns(folder, patterns)
    readable = _splits_by_patterns(folder, _EVERY_FILE)  # every file datasets sees: not hidden ones
    if files is None:
        files = _in_read_formats(readable, read_as)  # `data_files`, from what is resolved here
    grouped: dict[str, list[Path]] = {}
    left_out: list[Path] = []
    for file in files:
        path = os.path.abspath(file)
        in_config_folder = config_folder is not None and os.path.dirname(path) == os.path.abspath(config_folder)
        shard = shard_split(Path(file).name) if in_config_folder else None
        splits = [shard] if shard is not None else read_as.get(path, [])
        if len(splits) > 1:
            raise SplitLayoutError(
                f"{folder}: datasets reads {os.path.relpath(path, folder)} as the splits {' and '.join(splits)} (its path "
                "names each): rename it, or its folder, so that its path names one split"
            )
        if splits:
            grouped.setdefault(splits[0], []).append(file)
        elif path in readable:
            left_out.append(file)
    if left_out:
        # the split each left-out file's own path names, as datasets would read a folder of it alone
        named: dict[str, list[str]] = {}
        for tier in (DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME, DEFAULT_PATTERNS_SPLIT_IN_FILENAME):
            for path, splits in _splits_by_patterns(folder, tier).items():
                named.setdefault(path, splits)
        refused = [(file, named.get(os.path.abspath(file), [])) for file in left_out]
        refused = [(file, splits) for file, splits in refused if splits or not leave_out_unnamed]
        if refused:
            first_file, first_named = refused[0]
            how, advice, named_as_train = _how_datasets_splits(
                patterns, Path(os.path.relpath(os.path.abspath(first_file), folder)), first_named,
                left_out_naming_no_split=sum(not splits for _, splits in refused),
            )
            listed = [
                f"{os.path.relpath(os.path.abspath(file), folder)} (its path names "
                f"{'split ' + ' and '.join(repr(split) for split in splits) if splits else 'no split'})"
                for file, splits in refused[:3]
            ]
            more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
            # a split named otherwise than datasets' keywords (heldout/) is read from data/'s shard names alone; not
            # said where the file was given the train split's name, as it probably is the train split
            other_names = "" if all(splits for _, splits in refused) or named_as_train else (
                "; a split of another name is read from data/NAME-00000-of-00001.parquet, beside the other splits' "
                "shards named so")
            raise SplitLayoutError(
                f"{folder}: datasets reads the splits of this folder ({', '.join(map(str, patterns))}) {how}, and so "
                f"leaves out {', '.join(listed)}{more}: {advice}, so that each file is read as its own split{other_names}"
            )
    return grouped
