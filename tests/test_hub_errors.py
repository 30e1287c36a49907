"""Hub failures (404, 401, 500, offline, unreachable), missing folders and non-MAPLE checkpoints give
errors naming the repo or folder; a benchmark that cannot be read, errors naming it and its source."""

import json
import os
import re

import pytest

from evaluation.benchmarks import BenchmarkSourceError, load_benchmark
from evaluation.models import ModelLoadError, load_embedder
from hub_server import run_client

LOAD = """
import os
from evaluation.models import ModelLoadError, load_embedder
try:
    load_embedder(os.environ["MAPLE_TEST_REPO"])
except ModelLoadError as error:
    print(error)
"""


def test_missing_repo_is_named(hub_server, tmp_path):
    message = run_client(hub_server, tmp_path, LOAD, MAPLE_TEST_REPO="maple-org/does-not-exist").strip()
    assert message == f"model repo 'maple-org/does-not-exist' on {hub_server.url} was not found or is not accessible with the current token (HTTP 404)"


def test_refused_token_is_named(hub_server, tmp_path):
    hub_server.require_token("hf_the_right_token")
    try:
        message = run_client(hub_server, tmp_path, LOAD, MAPLE_TEST_REPO="maple-org/private").strip()
    finally:
        hub_server.require_token(None)
    assert message == (f"model repo 'maple-org/private' on {hub_server.url} refused the token (HTTP 401): check the one "
                       "used (--token (maple train: --hub_token) or token=, else HF_TOKEN, else the one `hf auth login` saved): Invalid "
                       "credentials in Authorization header")


def test_server_error_is_named(hub_server, tmp_path):
    hub_server.fail_next("maple-org/flaky", 500, times=100)  # more than the client's retries
    try:
        message = run_client(hub_server, tmp_path, LOAD, MAPLE_TEST_REPO="maple-org/flaky").strip()
    finally:
        hub_server.fail_next("maple-org/flaky", 500, times=0)
    assert message == (f"model repo 'maple-org/flaky' on {hub_server.url} could not be read: HTTP 500 from the server: "
                       "Injected failure 500 for repo maple-org/flaky")  # the server's reason


LOAD_OUTSIDE_EVAL = """
import os
from dataset_builders import MaplePreferences
from modeling_maple import load_maple

for load in (MaplePreferences.from_pretrained, load_maple):
    try:
        load(os.environ["MAPLE_TEST_REPO"])
    except Exception as error:
        print(type(error).__name__, error)
"""


def test_server_error_is_named_when_loading_a_preference_dataset_or_an_embedder(hub_server, tmp_path):
    """datasets read an HTTP 500 as a missing local path (<cwd>/<repo id>), transformers as no connection."""
    hub_server.fail_next("maple-org/flaky", 500, times=100)
    try:
        lines = run_client(hub_server, tmp_path, LOAD_OUTSIDE_EVAL, MAPLE_TEST_REPO="maple-org/flaky").splitlines()
    finally:
        hub_server.fail_next("maple-org/flaky", 500, times=0)
    reason = "HTTP 500 from the server: Injected failure 500 for repo maple-org/flaky"
    assert lines == [
        f"HubReadError dataset repo 'maple-org/flaky' on {hub_server.url} could not be read: {reason}",
        f"MapleLoadError maple-org/flaky: model repo 'maple-org/flaky' on {hub_server.url} could not be read: {reason}",
    ]


def test_missing_repo_is_named_when_loading_a_preference_dataset_or_an_embedder(hub_server, tmp_path):
    lines = run_client(hub_server, tmp_path, LOAD_OUTSIDE_EVAL, MAPLE_TEST_REPO="maple-org/does-not-exist").splitlines()
    assert lines == [
        "DatasetNotFoundError Dataset 'maple-org/does-not-exist' doesn't exist on the Hub or cannot be accessed.",
        f"MapleLoadError maple-org/does-not-exist: model repo 'maple-org/does-not-exist' on {hub_server.url} was not found or "
        "is not accessible with the current token (HTTP 404)",
    ]


def test_an_offline_hub_is_named_when_loading_a_preference_dataset(hub_server, tmp_path):
    """datasets raises it as a ConnectionError of its own, `from None`: the chain holds no Hub error (a fresh process,
    nothing cached). (An unreachable Hub reads the same, after datasets' retries: some 25 s, so not tested here.)"""
    load = """
from dataset_builders import MaplePreferences
try:
    MaplePreferences.from_pretrained("maple-org/anything")
except Exception as error:
    print(type(error).__name__, error)
"""
    message = run_client(hub_server, tmp_path, load, HF_HUB_OFFLINE="1").strip()
    assert message == (f"HubReadError dataset repo 'maple-org/anything' on {hub_server.url} is not in the local cache "
                       "and the Hub is offline or unreachable")


def test_unreachable_hub_is_named(hub_server, tmp_path):
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    message = run_client(hub_server, tmp_path, LOAD, MAPLE_TEST_REPO="maple-org/anything", HF_ENDPOINT=closed).strip()
    assert message == f"model repo 'maple-org/anything' on {closed} is not in the local cache and the Hub is offline or unreachable"


def test_offline_loads_a_cached_repo_and_names_an_uncached_one(hub_server, tmp_path):
    push_and_load = """
import os
from evaluation.models import load_embedder
from modeling_maple.testing import build_tiny

model, processor = build_tiny("dual_encoder", seed=0)
model.push_to_hub(os.environ["MAPLE_TEST_REPO"])
processor.push_to_hub(os.environ["MAPLE_TEST_REPO"])
load_embedder(os.environ["MAPLE_TEST_REPO"])
"""
    home = str(tmp_path / "hf_home")
    run_client(hub_server, tmp_path, push_and_load, MAPLE_TEST_REPO="maple-org/cached-tiny", HF_HOME=home)
    offline = {"HF_HOME": home, "HF_HUB_OFFLINE": "1"}
    assert run_client(hub_server, tmp_path, LOAD, MAPLE_TEST_REPO="maple-org/cached-tiny", **offline) == ""
    message = run_client(hub_server, tmp_path, LOAD, MAPLE_TEST_REPO="maple-org/never-downloaded", **offline).strip()
    assert message == (
        f"model repo 'maple-org/never-downloaded' on {hub_server.url} is not in the local cache and the Hub is offline or unreachable"
    )


@pytest.mark.parametrize("relative", [False, True])
def test_missing_folder_is_named_not_taken_for_a_repo_id(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    ref = "./no_such_checkpoint" if relative else str(tmp_path / "models" / "no_such_checkpoint")
    with pytest.raises(ModelLoadError, match=rf"^no such folder: {re.escape(ref)}$"):
        load_embedder(ref)
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ModelLoadError, match=r"weights.bin is a file; expected a checkpoint folder or a Hub repo id"):
        load_embedder(str(tmp_path / "weights.bin"))


def test_not_a_maple_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match=r"is a 'bert' checkpoint; expected a MAPLE checkpoint \(model_type 'maple'\)"):
        load_embedder(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty has neither config.json nor adapter_config.json: not a transformers checkpoint folder"):
        load_embedder(str(tmp_path / "empty"))


def test_unavailable_benchmark_names_the_benchmark_and_the_source(hub_server, tmp_path):
    # offline (as every test here), the official source of coco is not in the cache
    with pytest.raises(BenchmarkSourceError, match=r"^benchmark 'coco': cannot read source 'nlphuji/mscoco_2014_5k_test_image_text_retrieval': .*Hub"):
        load_benchmark("coco")
    with pytest.raises(BenchmarkSourceError, match=r"^benchmark 'winoground': no such file or folder: \./winoground\.parquet$"):
        load_benchmark("winoground", "./winoground.parquet")
    load_missing_repo = """
from evaluation.benchmarks import BenchmarkSourceError, load_benchmark
try:
    load_benchmark("bivlc", "maple-org/no-such-benchmark")
except BenchmarkSourceError as error:
    print(error)
"""
    message = run_client(hub_server, tmp_path, load_missing_repo).strip()
    assert message.startswith("benchmark 'bivlc': cannot read source 'maple-org/no-such-benchmark': ") and "\n" not in message


def _answered(error_class, status):
    """A Hub error carrying an HTTP answer of `status`, as huggingface_hub raises it."""
    from huggingface_hub.utils import httpx

    request = httpx.Request("GET", "https://hub.test/api/models/maple-org/model")
    return error_class(f"HTTP {status}", response=httpx.Response(status, request=request))


def _hub_failure_of_wrapped(hub_error, **kwargs):
    """`hub_failure` of the error transformers raises while handling `hub_error` (its `__context__`, not a cause)."""
    from maple.hub import hub_failure

    try:
        try:
            raise hub_error
        except Exception:
            raise OSError("We couldn't connect to the Hub. Check your internet connection")  # noqa: B904 (as transformers does)
    except OSError as error:
        return hub_failure(error, "maple-org/model", **kwargs)


@pytest.mark.parametrize("error_class, status, expected", [
    ("GatedRepoError", 403, "is gated: accept its terms on the Hub with the account of the token used (--token (maple "
                            "train: --hub_token) or token=, else HF_TOKEN, else the one `hf auth login` saved)"),
    ("RevisionNotFoundError", 404, "has no revision 'v2'"),
    ("HfHubHTTPError", 403, "refused the token (HTTP 403): check the one used (--token (maple train: --hub_token) or "
                            "token=, else HF_TOKEN, else the one `hf auth login` saved)"),
    ("HfHubHTTPError", 503, "could not be read: HTTP 503 from the server"),
    # the Hub's answer to a request without a token for a private repo, as for a missing one
    ("RepositoryNotFoundError", 401, "was not found, or is private and needs a token (HTTP 401 to a request without "
                                     "one): pass one (--token, maple train's --hub_token, token=), set HF_TOKEN or log in with `hf auth login`"),
])
def test_hub_failure_names_the_repo_and_the_answer_found_in_the_context_of_a_wrapping_error(error_class, status, expected):
    """Cases the local Hub server does not answer: a gated repo (a subclass of the not-found error, so checked
    first), a missing revision, a 403 (a refused token, as a 401 is)."""
    from huggingface_hub import constants, errors

    message = _hub_failure_of_wrapped(_answered(getattr(errors, error_class), status), revision="v2")
    assert message == f"model repo 'maple-org/model' on {constants.ENDPOINT} {expected}"


def test_hub_failure_names_a_write_without_a_token_as_one_that_needs_a_token():
    """Over https (not the local Hub's http) huggingface_hub raises the Hub's 401 to a write on /api/models/... without
    a token as RepositoryNotFoundError: a push to an existing public repo is not 'not found' but needs a token."""
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    message = _hub_failure_of_wrapped(_answered(RepositoryNotFoundError, 401), writing=True)
    assert message == (f"model repo 'maple-org/model' on {constants.ENDPOINT} needs a token (HTTP 401 to a request "
                       "without one): pass one (--token, maple train's --hub_token, token=), set HF_TOKEN or log in with `hf auth login`")


def test_hub_failure_leaves_a_missing_file_of_a_readable_repo_to_the_caller():
    from huggingface_hub.errors import RemoteEntryNotFoundError

    assert _hub_failure_of_wrapped(_answered(RemoteEntryNotFoundError, 404)) is None
    assert _hub_failure_of_wrapped(ValueError("not a Hub error")) is None


@pytest.mark.parametrize("writing, expected", [
    (False, "is not in the local cache and the Hub is offline or unreachable"),
    (True, "cannot be written: the Hub is offline (HF_HUB_OFFLINE) or unreachable"),  # a push has no cache to fall back on
])
def test_hub_failure_offline_says_whether_the_cache_could_have_helped(writing, expected):
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    from maple.hub import hub_failure

    message = hub_failure(OfflineModeIsEnabled("offline"), "maple-org/data", repo_type="dataset", writing=writing)
    assert message == f"dataset repo 'maple-org/data' on {constants.ENDPOINT} {expected}"


def test_hub_failure_blames_the_token_only_for_a_refused_authorization_header():
    """httpx refuses to send any header with a line break: only a refused `Bearer <token>` is the token's fault (any
    was said to be, found by a review); another is a transport error as before."""
    from huggingface_hub.utils import httpx

    from maple.hub import hub_failure

    def failure(header: bytes) -> str:
        return hub_failure(httpx.LocalProtocolError(f"Illegal header value {header!r}"), "maple-org/x")

    assert "was not asked: the token passed cannot be sent" in failure("Bearer hf_x\n".encode())
    assert failure(b"tag\n").endswith("is not in the local cache and the Hub is offline or unreachable")


def test_local_typo_hint_only_for_a_relative_reference_whose_first_folder_exists(tmp_path, monkeypatch):
    from maple.hub import local_typo_hint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert local_typo_hint("runs/modle") == " (nor is it a local folder: runs/ exists here, but not runs/modle)"
    assert local_typo_hint("maple-org/model") == ""  # no maple-org/ here
    assert local_typo_hint(str(tmp_path / "runs" / "modle")) == ""  # an absolute path is no Hub id: never looked up


def _fake_hub(monkeypatch, *, files=(), info_error=None, download=None):
    """The Hub as `hub_checkpoint_config_file` sees it: a repo listing `files` (a dict: at each revision; or whose
    listing raises `info_error`), and `download(repo_id, filename, revision=..., local_files_only=...)` for its files."""
    from types import SimpleNamespace

    import huggingface_hub

    def model_info(self, repo_id, revision=None):
        if info_error is not None:
            raise info_error
        listed = files.get(revision or "main", ()) if isinstance(files, dict) else files
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in listed])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download or (lambda *args, **kwargs: pytest.fail("downloaded")))


def test_a_hub_repo_holding_both_configs_is_read_by_its_config_json(tmp_path, monkeypatch):
    """A merged checkpoint may keep the adapter_config.json of the LoRA it was merged from: it is a model, not an adapter."""
    from evaluation.models import hub_checkpoint_config_file

    files = ["adapter_config.json", "config.json", "model.safetensors"]
    _fake_hub(monkeypatch, files=files, download=lambda repo_id, filename, revision=None, token=None: tmp_path / filename)
    assert hub_checkpoint_config_file("maple-org/model").name == "config.json"


def test_a_hub_repo_is_read_at_the_revision_asked_for(tmp_path, monkeypatch):
    """A revision whose files are not main's (an adapter there, a full model now) is listed and read at that revision."""
    from evaluation.models import hub_checkpoint_config_file

    files = {"main": ["config.json", "model.safetensors"], "v1": ["adapter_config.json", "adapter_model.safetensors"]}
    _fake_hub(monkeypatch, files=files,
              download=lambda repo_id, filename, revision=None, token=None: tmp_path / (revision or "main") / filename)
    assert hub_checkpoint_config_file("maple-org/model", revision="v1") == tmp_path / "v1" / "adapter_config.json"


def test_a_missing_repo_whose_first_folder_exists_here_hints_at_a_local_typo_and_a_gated_one_does_not(tmp_path, monkeypatch):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from evaluation.models import hub_checkpoint_config_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "maple-org").mkdir()
    _fake_hub(monkeypatch, info_error=_answered(RepositoryNotFoundError, 404))
    with pytest.raises(ModelLoadError, match=r"was not found .*\(HTTP 404\) \(nor is it a local folder: maple-org/ exists here, but not maple-org/model\)$"):
        hub_checkpoint_config_file("maple-org/model")
    _fake_hub(monkeypatch, info_error=_answered(GatedRepoError, 403))
    with pytest.raises(ModelLoadError, match=r"is gated: accept its terms on the Hub with the account of the token used \(.*saved\)$"):
        hub_checkpoint_config_file("maple-org/model")


def test_a_listed_config_the_hub_then_does_not_find_is_raised_as_the_hub_raised_it(monkeypatch):
    """`hub_failure` leaves a missing file of a readable repo to the caller: here there is nothing better to say."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from evaluation.models import hub_checkpoint_config_file

    def download(repo_id, filename, revision=None, token=None):
        raise _answered(RemoteEntryNotFoundError, 404)

    _fake_hub(monkeypatch, files=["config.json"], download=download)
    with pytest.raises(RemoteEntryNotFoundError):
        hub_checkpoint_config_file("maple-org/model")


def test_offline_an_adapter_downloaded_before_is_read_from_the_cache(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from evaluation.models import hub_checkpoint_config_file

    cached = {"adapter_config.json": tmp_path / "adapter_config.json"}

    def download(repo_id, filename, revision=None, local_files_only=False, token=None):
        assert local_files_only
        if filename not in cached:
            raise LocalEntryNotFoundError(f"{filename} is not in the cache")
        return cached[filename]

    _fake_hub(monkeypatch, info_error=OfflineModeIsEnabled("offline"), download=download)
    assert hub_checkpoint_config_file("maple-org/adapter") == cached["adapter_config.json"]
    cached["config.json"] = tmp_path / "config.json"  # a model with both, downloaded before: its config.json
    assert hub_checkpoint_config_file("maple-org/adapter") == cached["config.json"]
    cached.clear()  # never downloaded, and maybe a mistyped local path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "maple-org").mkdir()
    with pytest.raises(ModelLoadError, match=r"is not in the local cache and the Hub is offline or unreachable \(nor is it a local folder: maple-org/"):
        hub_checkpoint_config_file("maple-org/adapter")


REFUSED_CARD = """
from huggingface_hub import HfApi
from evaluation.cli import push_results
from maple.hub import hub_failure

repo = "maple-org/card-refused"
HfApi().create_repo(repo)
try:
    push_results(repo, {"coco": {metric: 50.0 for metric in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}})
except Exception as error:
    print(hub_failure(error, repo, writing=True))
"""


def test_a_card_the_hub_refuses_is_named_with_the_hubs_reason(hub_server, tmp_path, monkeypatch):
    """huggingface_hub raises the Hub's refusal of a card's metadata as a bare ValueError while handling the HTTP 400,
    and the push's one line said the repo "could not be read: HTTP 400"."""
    import hub_server as server_module

    def refuse(handler, state):
        raise server_module.HubError(400, '"model-index[0].results[0].metrics[0].value" must be a number')

    monkeypatch.setattr(server_module.HubRequestHandler, "handle_validate_yaml", refuse)
    message = run_client(hub_server, tmp_path, REFUSED_CARD).strip().splitlines()[-1]
    assert message.startswith(f"model repo 'maple-org/card-refused' on {hub_server.url}: the Hub refused the card's "
                              "metadata: ")
    assert 'model-index[0].results[0].metrics[0].value\\" must be a number' in message  # the server answers in JSON


def test_a_failed_write_says_written_not_read(hub_server):
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import httpx

    from maple.hub import hub_failure

    answer = httpx.Response(500, request=httpx.Request("POST", f"{hub_server.url}/api/models/maple-org/x/commit/main"))
    error = HfHubHTTPError("server error", response=answer)
    assert hub_failure(error, "maple-org/x", writing=True).endswith("could not be written: HTTP 500 from the server")
    assert hub_failure(error, "maple-org/x").endswith("could not be read: HTTP 500 from the server")


def test_an_http_error_keeps_the_hub_s_reason_in_its_one_line():
    """A 400, 409, 413 or 429 was "HTTP N from the server" only: the Hub's reason (a refused README, a file too large,
    a rate limit) was dropped."""
    from huggingface_hub.utils import hf_raise_for_status, httpx

    from maple.hub import hub_failure

    reason = '"base_model" with value "../base" is not valid.'
    request = httpx.Request("POST", "https://huggingface.co/api/models/alice/m/commit/main", headers={"authorization": "Bearer x"})
    with pytest.raises(Exception) as raised:
        hf_raise_for_status(httpx.Response(400, json={"error": reason}, headers={"X-Error-Message": reason}, request=request))
    assert hub_failure(raised.value, "alice/m", writing=True).endswith(f"could not be written: HTTP 400 from the server: {reason}")


def test_a_mirror_s_credentials_are_not_in_the_repo_s_name(monkeypatch):
    """`HF_ENDPOINT=https://bob:secret@mirror` was printed in every error naming a repo."""
    from huggingface_hub import constants

    from maple.hub import hub_repo

    monkeypatch.setattr(constants, "ENDPOINT", "https://bob:hf_secret@mirror.example:8443")
    assert hub_repo("org/name", "dataset") == "dataset repo 'org/name' on https://mirror.example:8443"


def test_a_mirror_password_holding_an_at_sign_is_not_shown_in_part(monkeypatch):
    """httpx reads `bob:p@ss@mirror` as the password `p@ss`; the credentials were cut at the first '@', which showed
    `ss@mirror` (found by a review)."""
    from huggingface_hub import constants

    from maple.hub import hub_repo

    monkeypatch.setattr(constants, "ENDPOINT", "https://bob:p@ss@mirror.example/hub")
    assert hub_repo("org/name") == "model repo 'org/name' on https://mirror.example/hub"


def _hub_error(status, message, code=None, *, token=True):
    """The error `hf_raise_for_status` raises for an answer of `status` with this X-Error-Message and X-Error-Code."""
    from huggingface_hub.utils import hf_raise_for_status, httpx

    headers = {"authorization": "Bearer x"} if token else {}
    request = httpx.Request("GET", "https://huggingface.co/api/models/alice/m", headers=headers)
    answer = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
    response = httpx.Response(status, headers=answer, request=request)
    try:
        hf_raise_for_status(response)
    except Exception as error:  # noqa: BLE001
        return error
    raise AssertionError("no error raised")


def test_hub_failure_tells_a_disabled_repo_a_gated_one_read_without_a_token_and_a_403_with_its_reason():
    """A disabled repo and a 403 for a namespace the token has no rights on were both "refused the token", without the
    Hub's reason; a gated repo read without a token asked to accept its terms "with the account of the token used"
    (found by a review)."""
    from maple.hub import hub_failure

    where = "model repo 'alice/m' on https://huggingface.co"
    disabled = _hub_error(403, "Access to this resource is disabled.")
    assert type(disabled).__name__ == "DisabledRepoError"
    assert hub_failure(disabled, "alice/m") == f"{where} is disabled on the Hub (HTTP 403): Access to this resource is disabled."
    gated = _hub_error(401, "Access to model alice/m is restricted.", "GatedRepo", token=False)
    assert type(gated).__name__ == "GatedRepoError"
    assert hub_failure(gated, "alice/m") == (
        f"{where} is gated: a request without a token cannot read it; pass one (--token, maple train's --hub_token, "
        "token=), set HF_TOKEN or log in with `hf auth login`")
    rights = _hub_error(403, 'You don\'t have the rights to create a model under the namespace "bob"')
    assert hub_failure(rights, "alice/m", writing=True).endswith(
        "saved): You don't have the rights to create a model under the namespace \"bob\"")


def test_hub_failure_of_a_missing_revision_nobody_named():
    """`dataset_read_problem` passes no revision: the message read "has no revision None"."""
    from maple.hub import hub_failure

    missing = _hub_error(404, "Invalid rev id: nope", "RevisionNotFound")
    assert type(missing).__name__ == "RevisionNotFoundError"
    assert hub_failure(missing, "alice/m").endswith("'alice/m' on https://huggingface.co has no such revision")
    assert hub_failure(missing, "alice/m", revision="nope").endswith("has no revision 'nope'")


def test_a_local_path_is_published_by_the_name_it_was_given(tmp_path, monkeypatch):
    """`local_path_name` followed links (a Hub cache snapshot's target is a commit hash) and named the home folder by
    its user name (found by a review)."""
    from maple.hub import local_path_name

    (tmp_path / "blobs" / "3f2a9c").mkdir(parents=True)
    (tmp_path / "judge").symlink_to(tmp_path / "blobs" / "3f2a9c")
    assert local_path_name(str(tmp_path / "judge")) == "judge"
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    assert local_path_name("~") == "~" and local_path_name("~/models/qwen") == "qwen"
    assert local_path_name("Qwen/Qwen2-VL-2B-Instruct") is None and local_path_name("scene-graph judge (a stand-in)") is None
    # another user's home folder (~root, or /root under sudo) is named by no user name either
    assert local_path_name("~root") == "~" and local_path_name(os.path.expanduser("~root")) == "~"
    assert local_path_name(os.path.expanduser("~root") + "/judge") == "judge"
    # a home folder of no user is a folder of that name here, as a shell reads it (a RuntimeError from Path.expanduser)
    assert local_path_name("~nosuchuser/judge") == "judge"
