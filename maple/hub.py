"""What the Hub answered, in one line naming the repo: the one translation of Hub failures (not found, gated, token
refused, a server error, offline or unreachable) that `load_maple`, `evaluation.models` and
`MaplePreferences.from_pretrained` share, and the hint that a reference looked up on the Hub may be a mistyped local
path.

transformers and datasets re-raise a failed Hub request as an error of their own that can misread it: an HTTP 500
becomes "We couldn't connect to ... Check your internet connection" or "Couldn't find any data file at
<cwd>/<repo id>". The huggingface_hub error stays in the exception chain, where `hub_failure` finds it.

Light to import (huggingface_hub only, when a failure is read), so `maple eval --help` and the error paths of every
command can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from .files import expanded_path


# A reference whose name ends so is a file, never a Hub id: a missing one is reported as missing, not looked up on the
# Hub (as the dataset id `test_sets/nope.parquet`).
LOCAL_FILE_SUFFIXES = (".parquet", ".csv", ".json", ".jsonl", ".arrow", ".tsv", ".txt", ".zip")


def names_a_file(ref: str) -> bool:
    """Whether `ref` is named as a file (`LOCAL_FILE_SUFFIXES`), so can only be a local path."""
    return Path(ref).suffix.lower() in LOCAL_FILE_SUFFIXES


def local_path_name(ref: str) -> str | None:
    """The last name of `ref` if it is a local path (one that exists here, or one written as a path: absolute, or
    starting with '.' or '~'), else None: a Hub id, a class name or a description. Cards pushed to the Hub name a local
    model or dataset by this name only: its path means nothing there and may say more about the machine (a home
    folder, a user name) than its owner means to publish."""
    path = expanded_path(ref)
    if not (path.is_absolute() or ref.startswith((".", "~")) or path.exists()):
        return None
    # the name as written, not a link's target (a Hub cache snapshot's files link to blobs named by their hash); a
    # home folder's name is a user's: this user's, or the one it names (~alice, or /home/alice under sudo)
    absolute = Path(os.path.abspath(path))
    if absolute == Path.home() or str(absolute) == os.path.expanduser(f"~{absolute.name}"):
        return "~"
    return absolute.name or ref


class HubReadError(OSError):
    """A Hub repo that could not be read; the message names it and says what the Hub answered."""


class CardMetadataError(ValueError):
    """The Hub refused a card's metadata (its validate-yaml check); the message says why."""


class PublicRepoError(ValueError):
    """A push asked for a private repo, and the repo exists and is public."""


def validate_card(card) -> None:
    """`card.validate()` against the Hub's metadata check; its refusal (a bare ValueError raised while handling the
    HTTP 400, which `hub_failure` would report as that 400) is a `CardMetadataError` saying why."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        card.validate()
    except ValueError as error:
        if not isinstance(error.__context__, HfHubHTTPError):  # not the Hub's answer: an error of the card itself
            raise
        raise CardMetadataError(f"the Hub refused the card's metadata: {error}") from None


def check_private(api, repo_id: str, repo_type: str) -> None:
    """Raise `PublicRepoError` if repo `repo_id` is public: `create_repo(private=True, exist_ok=True)` leaves an
    existing repo as it is, so a push asked to be private would publish."""
    if api.repo_info(repo_id, repo_type=repo_type).private is False:
        raise PublicRepoError(
            f"{hub_repo(repo_id, repo_type)} exists and is public, and a private push was asked for: nothing was "
            "pushed. Make the repo private on the Hub first, or push to a new repo"
        )


def hub_repo(repo_id: str, repo_type: str = "model") -> str:
    """How errors name a Hub repo: "model repo 'org/name' on <endpoint>", so a local Hub mirror shows as itself."""
    from huggingface_hub import constants

    # without the user and password a mirror's URL may carry (https://user:secret@mirror): up to the last '@' before
    # the path, as httpx reads a password holding an '@'
    return f"{repo_type} repo {repo_id!r} on {re.sub(r'(?<=://)[^/?#]*@', '', constants.ENDPOINT)}"


def repo_id_problem(repo_id: str) -> str | None:
    """Why the Hub would refuse `repo_id` as the id of a repo to create ("name" or "namespace/name"), or None: a long
    job checks it before it starts rather than at its push."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return f"{repo_id!r} is not a Hub repo id ('name' or 'namespace/name'): {error}"
    return None


def is_hub_id(ref: str) -> bool:
    """Whether `ref` can name a Hub repo ('name' or 'namespace/name'). A reference that cannot (an
    absolute path, one starting with '.' or '~', one with several '/') can only be a local path, so a
    missing one is reported as such instead of as an invalid repo id."""
    return repo_id_problem(ref) is None


def local_typo_hint(ref: str) -> str:
    """For a reference that was looked up on the Hub: a note when its first folder exists here ('runs/modle' with
    'runs/' on disk), which makes it likelier a mistyped local path than a Hub repo; else ''."""
    parts = Path(ref).parts
    if len(parts) > 1 and not Path(ref).is_absolute() and Path(parts[0]).is_dir() and not Path(ref).exists():
        return f" (nor is it a local folder: {parts[0]}/ exists here, but not {ref})"
    return ""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# Where the token of a Hub request comes from, first found first: what errors about a token advise
TOKEN_SOURCES = "--token (maple train: --hub_token) or token=, else HF_TOKEN, else the one `hf auth login` saved"
NO_TOKEN_ADVICE = "pass one (--token, maple train's --hub_token, token=), set HF_TOKEN or log in with `hf auth login`"


def token_problem(token: str | bool | None) -> str | None:
    """Why `token` cannot be sent as a Hub token, or None: it is empty (`--hub_token "$UNSET_VARIABLE"`), or holds a
    space, a line break or a character outside printable ASCII (a token pasted with its newline). huggingface_hub would
    send it in the header `Bearer <token>`, which httpx refuses to send (LocalProtocolError, a TransportError that
    `hub_failure` reads as an unreachable Hub) or cannot encode (a UnicodeEncodeError). The reason never quotes it.
    None for huggingface_hub's other tokens: True (the saved one, required), False (none) and None (the default)."""
    if not isinstance(token, str):
        return None
    if not token.strip():
        return "empty; leave it unset to use HF_TOKEN or the token `hf auth login` saved"
    if not all("!" <= character <= "~" for character in token):
        return "holds a space, a line break or a character outside printable ASCII, which no Hub token has"
    return None


def _sent_a_token(answered: BaseException) -> bool:
    """Whether the request a Hub error (`HfHubHTTPError`) answered carried a token (True when that is unknown)."""
    try:
        return "authorization" in answered.response.request.headers
    except (AttributeError, RuntimeError):  # no response, or one built without its request
        return True


def hub_failure(
    error: BaseException, repo_id: str, *, repo_type: str = "model", revision: str | None = None, writing: bool = False,
    subfolder: str = "",
) -> str | None:
    """One line naming the repo and what the Hub answered, for a failure whose exception chain holds a Hub error;
    None when it holds none, or only a missing file of a repo that was read (the caller's own message says which).

    An HTTP answer (the first in the chain: transformers and datasets wrap it) wins over the "not in the local
    cache" error a failed download also raises; with no answer the Hub was offline or unreachable (`writing`: a push,
    for which the local cache is no way out), and the files read were not in the cache: those of `subfolder` where
    given (a repo may be cached without them)."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import httpx

    where = hub_repo(repo_id, repo_type)
    if isinstance(error, PublicRepoError):
        return str(error)
    if isinstance(error, CardMetadataError):
        return f"{where}: {error}"
    chain = list(_chain(error))
    answered = next((link for link in chain if isinstance(link, HfHubHTTPError)), None)
    if answered is not None:
        status = answered.response.status_code if answered.response is not None else "?"
        if isinstance(answered, RemoteEntryNotFoundError):
            return None
        no_token = status == 401 and not _sent_a_token(answered)
        # the Hub's own reason, in one line: said after ours where ours may not be the whole story
        reason = " ".join((answered.server_message or "").split())
        because = f": {reason}" if reason else ""
        if isinstance(answered, DisabledRepoError):
            return f"{where} is disabled on the Hub (HTTP {status}){because}"
        if isinstance(answered, GatedRepoError):
            if no_token:  # (a 403: a token was sent, without the terms accepted)
                return f"{where} is gated: a request without a token cannot read it; {NO_TOKEN_ADVICE}"
            return f"{where} is gated: accept its terms on the Hub with the account of the token used ({TOKEN_SOURCES})"
        # (over https huggingface_hub raises a 401 to a write without a token as RepositoryNotFoundError too)
        if no_token and (writing or not isinstance(answered, RepositoryNotFoundError)):
            return f"{where} needs a token (HTTP 401 to a request without one): {NO_TOKEN_ADVICE}"
        if isinstance(answered, RepositoryNotFoundError):
            if no_token:  # the Hub's answer to a read of a private repo, as of a missing one
                return (f"{where} was not found, or is private and needs a token (HTTP 401 to a request without one): "
                        f"{NO_TOKEN_ADVICE}")
            return f"{where} was not found or is not accessible with the current token (HTTP {status})"
        if isinstance(answered, RevisionNotFoundError):
            return f"{where} has no revision {revision!r}" if revision is not None else f"{where} has no such revision"
        if status in (401, 403):  # a refused token, or one without the rights asked for (a namespace not its own)
            return f"{where} refused the token (HTTP {status}): check the one used ({TOKEN_SOURCES}){because}"
        # (a refused card's metadata, a file too large, a rate limit)
        return f"{where} could not be {'written' if writing else 'read'}: HTTP {status} from the server{because}"
    # httpx refuses to send a header it cannot: `Bearer <token>` of a token passed empty, or with a line break or an
    # end space (those of HF_TOKEN and `hf auth login` are stripped); the Hub was not asked; httpx's message quotes it
    # (another header it refuses, which its message shows, is not the token's fault)
    if any(isinstance(link, httpx.LocalProtocolError) and "Bearer" in str(link) for link in chain):
        return (f"{where} was not asked: the token passed cannot be sent (empty, or holding a line break or a space at "
                "its end); pass another, or none to use HF_TOKEN or the one `hf auth login` saved")
    if any(isinstance(link, (OfflineModeIsEnabled, httpx.TransportError, LocalEntryNotFoundError)) for link in chain):
        if writing:
            return f"{where} cannot be written: the Hub is offline (HF_HUB_OFFLINE) or unreachable"
        uncached = f"subfolder {subfolder!r} of {where}" if subfolder else where
        return f"{uncached} is not in the local cache and the Hub is offline or unreachable"
    return None


def hub_read_failure(
    error: BaseException, repo_id: str, *, repo_type: str = "dataset", revision: str | None = None,
    token: str | bool | None = None,
) -> str | None:
    """`hub_failure` of a failed read of Hub repo `repo_id`, asking the Hub when the exception chain holds no answer.

    `datasets.load_dataset` raises a repo the Hub did not find (a 401 to a request without a token, for a missing and a
    private repo alike), and an offline or unreachable Hub, as errors of its own (DatasetNotFoundError, ConnectionError)
    raised `from None` once its cache was searched: the chain then holds only "not cached", whatever the Hub answered.
    So the Hub is asked about the repo once more (`repo_info`, with the same `token` and `revision`), and `hub_failure`
    reads that answer. None when the chain holds none and either the Hub reads the repo (the failure is not the
    repo's) or answers, to a request with a token, that it finds no such repo for it (missing, gated, or someone
    else's private one): what datasets' own error already says, naming the repo."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    problem = hub_failure(error, repo_id, repo_type=repo_type, revision=revision)
    if problem is not None or not is_hub_id(repo_id):
        return problem
    try:
        HfApi(token=token).repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as answer:  # noqa: BLE001 (`hub_failure` reads the Hub's errors; any other is no answer: None)
        if isinstance(answer, RepositoryNotFoundError) and _sent_a_token(answer):
            return None
        return hub_failure(answer, repo_id, repo_type=repo_type, revision=revision)
    return None


def dataset_read_problem(error: BaseException, source: str, token: str | bool | None = None) -> str:
    """Why reading the dataset `source` failed, in one line: for a Hub id (no local path of that name) whose read
    raised an OSError, what the Hub answered (`hub_read_failure`: `datasets` raises a repo not found, or an offline
    Hub, without its answer); else the error's own text."""
    if isinstance(error, OSError) and not expanded_path(source).exists():
        if (answer := hub_read_failure(error, source, repo_type="dataset", token=token)) is not None:
            return answer
    return " ".join(str(error).split())
