"""Explicit Hub tokens, against the local Hub server: a private repo is seen only with its owner's token, and
`maple eval --push-to-hub --token` and `maple build-preferences --push-to-hub --private --token` read and write
private repos with the token given, with no HF_TOKEN and no saved login, writing it into no file (the demo's push:
test_demo_cli.py)."""

import pytest

from hub_server import CLIENT_TOKEN, USER, files_holding, run_client


def test_a_private_repo_answers_as_a_missing_one_to_anyone_but_its_owner(hub_server):
    """As the Hub answers: 401 without a token, 404 with another user's, both `RepoNotFound`, which huggingface_hub
    raises as RepositoryNotFoundError; a public repo stays readable without a token. A write needs a token."""
    from huggingface_hub.utils import httpx
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.utils import hf_raise_for_status

    hub_server.add_user("hf_someone_else", "someone-else")

    def request(method: str, path: str, token: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, hub_server.url + path, headers=headers, **kwargs)

    owner = CLIENT_TOKEN
    for kind, prefix in (("model", ""), ("dataset", "datasets/")):
        for name, private in (("secret", True), ("open", False)):
            assert request("POST", "/api/repos/create", owner, json={"name": f"{kind}-{name}", "type": kind,
                                                                     "private": private}).status_code == 200
        reads = [("GET", f"/api/{kind}s/{USER}/{kind}-{{}}"), ("GET", f"/api/{kind}s/{USER}/{kind}-{{}}/tree/main"),
                 ("GET", f"/api/{kind}s/{USER}/{kind}-{{}}/refs"), ("HEAD", f"/{prefix}{USER}/{kind}-{{}}/resolve/main/x"),
                 ("POST", f"/api/{kind}s/{USER}/{kind}-{{}}/paths-info/main")]
        for method, path in reads:
            for token, status in ((None, 401), ("hf_someone_else", 404)):
                response = request(method, path.format("secret"), token, data={"paths": "x"})
                assert (response.status_code, response.headers["X-Error-Code"]) == (status, "RepoNotFound"), path
                try:
                    hf_raise_for_status(response)
                except RepositoryNotFoundError:
                    pass
                else:
                    raise AssertionError(f"{method} {path}: not a RepositoryNotFoundError")
            assert request(method, path.format("secret"), owner, data={"paths": "x"}).status_code in (200, 404), path
            assert request(method, path.format("open"), data={"paths": "x"}).status_code in (200, 404), path
        assert request("GET", f"/api/{kind}s/{USER}/{kind}-secret", owner).json()["private"] is True
        # a missing repo answers alike: 401 without a token (as the Hub does), 404 with one
        for token, status in ((None, 401), (owner, 404)):
            response = request("GET", f"/api/{kind}s/{USER}/{kind}-missing", token)
            assert (response.status_code, response.headers["X-Error-Code"]) == (status, "RepoNotFound")
    anonymous_create = request("POST", "/api/repos/create", json={"name": "anonymous", "type": "model"})
    assert anonymous_create.status_code == 401
    try:
        hf_raise_for_status(anonymous_create)
    except RepositoryNotFoundError:
        raise AssertionError("a refused write read as a missing repo") from None
    except HfHubHTTPError:
        pass
    assert request("GET", "/api/whoami-v2", "hf_someone_else").json()["name"] == "someone-else"
    assert request("GET", "/api/whoami-v2", "hf_not_a_token").status_code == 401


EVAL_PRIVATE_REPO = """
import contextlib, io, os
import datasets
from huggingface_hub import HfApi, get_token, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from evaluation.cli import main
from modeling_maple.testing import build_tiny

assert get_token() is None  # no HF_TOKEN, no saved login
token, repo, bivlc = os.environ["MAPLE_TEST_TOKEN"], "maple-org/private-embedder", "maple-org/private-bivlc"
model, processor = build_tiny("dual_encoder", seed=0)
model.push_to_hub(repo, private=True, token=token)
processor.push_to_hub(repo, token=token)
table = datasets.load_dataset("parquet", data_files=os.environ["MAPLE_TEST_BIVLC"], split="train")
table.push_to_hub(bivlc, split="test", private=True, token=token)
argv = [repo, "--benchmarks", "bivlc", "--source", "bivlc=" + bivlc, "--out", "eval_out", "--push-to-hub", "--no-progress"]
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    assert main(argv) == 2
print("without a token:", stderr.getvalue().strip())
assert main([*argv, "--token", token]) == 0
# (a fresh cache: a file cached by the push would be served from it, as huggingface_hub does when the Hub refuses)
for anonymous_read in (lambda: HfApi().model_info(repo), lambda: hf_hub_download(repo, "README.md", cache_dir="empty")):
    try:
        anonymous_read()
    except RepositoryNotFoundError:
        pass
    else:
        raise AssertionError("the private repo was read without a token")
with open(hf_hub_download(repo, "README.md", token=token)) as card:
    assert "name: bivlc" in card.read()
"""


def test_maple_eval_reads_and_pushes_a_private_repo_with_the_token_given(hub_server, benchmark_sources, tmp_path):
    """The model and the benchmark copy are private: without --token the model is not found (the Hub's answer to a
    request without a token), before any work; with it they load and the results reach the card."""
    output = run_client(hub_server, tmp_path, EVAL_PRIVATE_REPO, HF_TOKEN="", MAPLE_TEST_TOKEN=CLIENT_TOKEN,
                        MAPLE_TEST_BIVLC=str(benchmark_sources["bivlc"]))
    assert (f"without a token: maple eval: error: model repo 'maple-org/private-embedder' on {hub_server.url} was not "
            "found, or is private and needs a token (HTTP 401 to a request without one): pass one (--token, maple train's --hub_token, token=), set "
            "HF_TOKEN or log in with `hf auth login`") in output
    assert hub_server.state.repo("model", "maple-org/private-embedder").private
    assert "maple_eval_results.json" in hub_server.files("maple-org/private-embedder")
    assert files_holding(tmp_path, CLIENT_TOKEN) == []


BUILD_PRIVATE_REPO = """
import contextlib, io, os
import datasets
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import RepositoryNotFoundError
from dataset_builders import cli
from dataset_builders.testing import colour_squares

assert get_token() is None  # no HF_TOKEN, no saved login
token, repo = os.environ["MAPLE_TEST_TOKEN"], "maple-org/private-preferences"
features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
datasets.Dataset.from_dict(colour_squares(6), features=features).to_parquet("source.parquet")
argv = ["source.parquet", "--output-dir", "out", "--judge", "dataset_builders.testing:ColourJudge", "--miner",
        "dataset_builders.testing:thumbnail_miner", "--config", "corpus-captions", "--semdedup-clusters", "0",
        "--no-progress", "--push-to-hub", repo, "--private"]
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    assert cli.main(argv) == 1
print("without a token:", stderr.getvalue().strip())
assert cli.main([*argv, "--token", token]) == 0
try:
    HfApi().dataset_info(repo)
except RepositoryNotFoundError:
    pass
else:
    raise AssertionError("the private repo was read without a token")
from dataset_builders import MaplePreferences
try:
    MaplePreferences.from_pretrained(repo)
except Exception as error:
    print("loaded without a token:", type(error).__name__, " ".join(str(error).split()))
assert len(MaplePreferences.from_pretrained(repo, token=token)) == 6
"""


def test_build_preferences_pushes_a_private_repo_with_the_token_given(hub_server, tmp_path):
    output = run_client(hub_server, tmp_path, BUILD_PRIVATE_REPO, HF_TOKEN="", MAPLE_TEST_TOKEN=CLIENT_TOKEN)
    assert (f"without a token: maple build-preferences: error: pushing failed: dataset repo "
            f"'maple-org/private-preferences' on {hub_server.url} needs a token (HTTP 401 to a request without one): "
            "pass one (--token, maple train's --hub_token, token=), set HF_TOKEN or log in with `hf auth login`. The built dataset is kept in") in output
    assert hub_server.state.repo("dataset", "maple-org/private-preferences").private
    # MaplePreferences.from_pretrained reads it with the token given, and says what to do without one
    assert (f"loaded without a token: HubReadError dataset repo 'maple-org/private-preferences' on {hub_server.url} was "
            "not found, or is private and needs a token (HTTP 401 to a request without one)") in output
    assert files_holding(tmp_path, CLIENT_TOKEN) == []


BUILD_FROM_PRIVATE_REPOS = """
import contextlib, io, os
import datasets
import torch
from huggingface_hub import get_token
from transformers import CLIPImageProcessorPil, Dinov2Config, Dinov2Model
from dataset_builders import cli
from dataset_builders.testing import colour_squares, tiny_judge

assert get_token() is None  # no HF_TOKEN, no saved login
token = os.environ["MAPLE_TEST_TOKEN"]
source, judge_repo, miner_repo = "maple-org/private-source", "maple-org/private-judge", "maple-org/private-miner"
features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
datasets.Dataset.from_dict(colour_squares(6), features=features).push_to_hub(source, private=True, token=token)
judge = tiny_judge(seed=0)
for part in (judge.model, judge.prompt_encoder.tokenizer, judge.prompt_encoder.image_processor):
    part.push_to_hub(judge_repo, private=True, token=token)
torch.manual_seed(0)
encoder = Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                   image_size=16, patch_size=8))
encoder.push_to_hub(miner_repo, private=True, token=token)
CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).push_to_hub(miner_repo, token=token)
argv = [source, "--output-dir", "out", "--judge", judge_repo, "--miner", miner_repo, "--config", "corpus-captions",
        "--semdedup-clusters", "0", "--num-hard-negatives", "2", "--no-progress"]
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    assert cli.main(argv) == 2
print("without a token:", stderr.getvalue().strip())
assert cli.main([*argv, "--token", token]) == 0
shards = datasets.load_dataset("parquet", data_files="out/work/shards/*.parquet", split="train")
print("rows:", len(shards), "judged:", all(len(scores) == 3 for scores in shards["img2txt_scores"]))
"""


def test_build_preferences_reads_a_private_source_judge_and_miner_with_the_token_given(hub_server, tmp_path):
    """--token reaches every read: the source, and the judge's and the miner's config, weights, tokenizer and image
    processor. Without it the private judge is not found, before any model loads."""
    output = run_client(hub_server, tmp_path, BUILD_FROM_PRIVATE_REPOS, HF_TOKEN="", MAPLE_TEST_TOKEN=CLIENT_TOKEN)
    assert "without a token: maple build-preferences: error: --judge maple-org/private-judge: model repo" in output
    assert "rows: 6 judged: True" in output
    assert files_holding(tmp_path, CLIENT_TOKEN) == []


@pytest.mark.parametrize("command", ["eval", "demo", "build-preferences"])
def test_an_empty_token_is_a_usage_error(command, capsys):
    """`--token "$UNSET"`: an empty bearer token, which httpx would refuse to send (read as an unreachable Hub)."""
    from dataset_builders.cli import main as build_main
    from evaluation.cli import main as eval_main
    from maple.demo.cli import main as demo_main

    main, argv = {"eval": (eval_main, ["model"]), "demo": (demo_main, []), "build-preferences": (build_main, ["src"])}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--token", ""])
    assert exit_info.value.code == 2
    assert "argument --token: empty; leave it unset to use HF_TOKEN" in capsys.readouterr().err


@pytest.mark.parametrize("token, problem", [
    ("", "empty; leave it unset to use HF_TOKEN or the token `hf auth login` saved"),
    ("hf_pasted_with_its_newline\n", "holds a space, a line break or a character outside printable ASCII"),
])
def test_maple_train_refuses_a_hub_token_that_cannot_be_sent(token, problem, capsys):
    """`--hub_token "$UNSET"` was taken, and httpx refused to send it: the run failed at its first Hub request (the
    repo's creation, with --push_to_hub) with "the Hub is offline or unreachable"."""
    from trainer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--tiny", "dual_encoder", "--dataset_name", "prefs", "--push_to_hub", "--hub_token", token])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"maple train: error: hub_token: {problem}" in error and "hf_pasted" not in error  # the token is not shown


UNSENDABLE_TOKENS = """
from modeling_maple import MapleLoadError, load_maple
for token in ["", "hf_pasted_with_its_newline\\n", "hf_copied_with_a_space ", "hf_pasted_with_\u00e9", False]:
    try:
        load_maple("maple-org/x", token=token)
    except MapleLoadError as error:
        print(error)
"""


def test_a_token_that_cannot_be_sent_is_named_not_taken_for_an_unreachable_hub(hub_server, tmp_path):
    """httpx refuses to send `Bearer <token>` for an empty token or one with a line break (LocalProtocolError, a
    TransportError): the Hub, never asked, was said to be offline or unreachable; a non-ASCII one was a
    UnicodeEncodeError ("'ascii' codec can't encode character ..."), naming no problem. huggingface_hub's
    token=False (send none) is no such token: the Hub is asked."""
    errors = run_client(hub_server, tmp_path, UNSENDABLE_TOKENS).splitlines()
    empty, *unsendable, sent_none = errors
    assert empty == ("maple-org/x: token: empty; leave it unset to use HF_TOKEN or the token `hf auth login` saved; it "
                     "was not read")
    assert unsendable == 3 * ["maple-org/x: token: holds a space, a line break or a character outside printable ASCII, "
                              "which no Hub token has; it was not read"]
    assert sent_none.startswith(f"maple-org/x: model repo 'maple-org/x' on {hub_server.url} was not found, or is "
                                "private and needs a token (HTTP 401 to a request without one)"), sent_none


UNSENDABLE_EVALUATION_TOKENS = """
from evaluation.benchmarks import BenchmarkSourceError, load_benchmark
from evaluation.models import ModelLoadError, load_embedder
for token in ["", "hf_pasted_with_\u00e9", False]:
    for load, error_type in ((lambda: load_embedder("maple-org/x", token=token), ModelLoadError),
                             (lambda: load_benchmark("bivlc", "maple-org/x", token=token), BenchmarkSourceError)):
        try:
            load()
        except error_type as error:
            print(error)
"""


def test_an_evaluation_model_or_benchmark_read_with_a_token_that_cannot_be_sent_names_the_problem(hub_server, tmp_path):
    """`load_embedder` and `load_benchmark` (`maple eval`'s loaders, called from Python) with an empty token were said
    to read an unreachable Hub, and with a non-ASCII one failed with "'ascii' codec can't encode character ...";
    token=False (send none) still asks the Hub."""
    errors = run_client(hub_server, tmp_path, UNSENDABLE_EVALUATION_TOKENS).splitlines()
    repo, dataset_repo = (f"{kind} repo 'maple-org/x' on {hub_server.url}" for kind in ("model", "dataset"))
    empty_problem = "empty; leave it unset to use HF_TOKEN or the token `hf auth login` saved"
    unsendable_problem = "holds a space, a line break or a character outside printable ASCII, which no Hub token has"
    assert errors[:4] == [f"token: {empty_problem}; {repo} was not read",
                          f"benchmark 'bivlc': token: {empty_problem}; {dataset_repo} was not read",
                          f"token: {unsendable_problem}; {repo} was not read",
                          f"benchmark 'bivlc': token: {unsendable_problem}; {dataset_repo} was not read"]
    model_sent_none, benchmark_sent_none = errors[4:]
    assert model_sent_none.startswith(f"{repo} was not found, or is private and needs a token (HTTP 401 to a request "
                                      "without one)"), model_sent_none
    assert benchmark_sent_none.startswith(f"benchmark 'bivlc': cannot read source 'maple-org/x': {dataset_repo} was not "
                                          "found, or is private and needs a token (HTTP 401 to a request without one)")


UNSENDABLE_DATASET_TOKENS = """
from dataset_builders import MaplePreferences
for token in ["", "hf_pasted_with_its_newline\\n", "hf_copied_with_a_space ", "hf_pasted_with_\u00e9"]:
    try:
        MaplePreferences.from_pretrained("maple-org/x", token=token)
    except ValueError as error:
        print(error)
"""


def test_a_preference_dataset_read_with_a_token_that_cannot_be_sent_names_the_problem_not_the_token(hub_server, tmp_path):
    """httpx's LocalProtocolError, no OSError, escaped `MaplePreferences.from_pretrained` as "Illegal header value
    b'Bearer <token>'", showing the token (a non-ASCII one: a UnicodeEncodeError)."""
    errors = run_client(hub_server, tmp_path, UNSENDABLE_DATASET_TOKENS).splitlines()
    empty, *unsendable = errors
    assert empty == ("token: empty; leave it unset to use HF_TOKEN or the token `hf auth login` saved; maple-org/x was "
                     "not read")
    assert unsendable == 3 * ["token: holds a space, a line break or a character outside printable ASCII, which no Hub "
                              "token has; maple-org/x was not read"]


# Read in a fresh process (its own empty HF_HOME: nothing cached), as a user would: `datasets` raises a missing repo as
# its own DatasetNotFoundError `from None`, so the exception chain keeps no answer of the Hub (only "not cached").
READ_WITHOUT_A_TOKEN = """
import contextlib, io, os
from huggingface_hub import get_token

assert get_token() is None  # no HF_TOKEN, no saved login
private, missing = os.environ["MAPLE_TEST_PRIVATE"], os.environ["MAPLE_TEST_MISSING"]
"""


def _private_dataset_repo(hub_server, name: str, private: bool = True) -> str:
    """An empty dataset repo of USER's, private unless told (created over the Hub API: the test process runs offline),
    its full id."""
    from huggingface_hub.utils import httpx

    response = httpx.post(f"{hub_server.url}/api/repos/create", headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
                          json={"name": name, "organization": None, "type": "dataset", "private": private})
    assert response.status_code in (200, 409), response.text
    assert hub_server.state.repo("dataset", f"{USER}/{name}").private == private
    return f"{USER}/{name}"


def _needs_a_token(hub_server, repo: str) -> str:
    return (f"dataset repo {repo!r} on {hub_server.url} was not found, or is private and needs a token (HTTP 401 to a "
            "request without one): pass one (--token, maple train's --hub_token, token=), set HF_TOKEN or log in with "
            "`hf auth login`")


def test_a_private_or_missing_preference_dataset_read_without_a_token_is_a_hub_read_error(hub_server, tmp_path):
    """The Hub answers 401 to a read without a token of a missing and of a private repo alike: a `HubReadError` saying
    so and how to pass a token, also in a process that cached nothing. With a token (here another user's, as `token=`
    or in `download_config=`), a repo the Hub does not find for it stays `datasets`' DatasetNotFoundError, and so does datasets' error about a repo the Hub
    reads (a public one without data files)."""
    private, missing = _private_dataset_repo(hub_server, "fresh-private-preferences"), f"{USER}/no-such-preferences"
    empty = _private_dataset_repo(hub_server, "fresh-empty-preferences", private=False)
    hub_server.add_user("hf_someone_else", "someone-else")
    code = READ_WITHOUT_A_TOKEN + """
from datasets import DownloadConfig
from dataset_builders import MaplePreferences
empty = os.environ["MAPLE_TEST_EMPTY"]
someone_else = {"token": "hf_someone_else"}
for repo, kwargs in ((private, {}), (missing, {}), (private, someone_else),
                     (private, {"download_config": DownloadConfig(**someone_else)}), (empty, {})):
    try:
        MaplePreferences.from_pretrained(repo, **kwargs)
    except Exception as error:
        print(type(error).__name__, error)
"""
    lines = run_client(hub_server, tmp_path, code, HF_TOKEN="", MAPLE_TEST_PRIVATE=private,
                       MAPLE_TEST_MISSING=missing, MAPLE_TEST_EMPTY=empty).splitlines()
    assert lines[:4] == [
        f"HubReadError {_needs_a_token(hub_server, private)}",
        f"HubReadError {_needs_a_token(hub_server, missing)}",
        f"DatasetNotFoundError Dataset {private!r} doesn't exist on the Hub or cannot be accessed.",
        # a token given in `download_config=` is a token given: the Hub was asked again without it, and the error said
        # one was needed
        f"DatasetNotFoundError Dataset {private!r} doesn't exist on the Hub or cannot be accessed.",
    ]
    assert lines[4].startswith(f"EmptyDatasetError The directory at hf://datasets/{empty}@"), lines[4:]


def test_maple_train_names_a_private_or_missing_hub_dataset_read_without_a_token(hub_server, tmp_path):
    """`maple train --dataset_name <Hub id>` without --hub_token (nor HF_TOKEN, nor a login): the same message, before
    any model loads."""
    private, missing = _private_dataset_repo(hub_server, "fresh-private-train-data"), f"{USER}/no-such-train-data"
    code = READ_WITHOUT_A_TOKEN + """
from trainer import cli

cli.load_model_and_processor = lambda *args: print("the model was loaded")
for repo in (private, missing):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            cli.main(["--tiny", "dual_encoder", "--dataset_name", repo, "--output_dir", "run"])
        except SystemExit as exit:
            print("exit", exit.code)
    print(stderr.getvalue().strip().splitlines()[-1])
"""
    lines = run_client(hub_server, tmp_path, code, HF_TOKEN="", MAPLE_TEST_PRIVATE=private,
                       MAPLE_TEST_MISSING=missing).splitlines()
    assert lines == [
        "exit 2", f"maple train: error: --dataset_name {private}: {_needs_a_token(hub_server, private)}",
        "exit 2", f"maple train: error: --dataset_name {missing}: {_needs_a_token(hub_server, missing)}",
    ]


def test_a_private_or_missing_hub_benchmark_source_read_without_a_token_is_named(hub_server, tmp_path):
    """`load_benchmark(name, <Hub id>)` (maple eval --source name=<Hub id>) without a token."""
    private, missing = _private_dataset_repo(hub_server, "fresh-private-bivlc"), f"{USER}/no-such-bivlc"
    code = READ_WITHOUT_A_TOKEN + """
from evaluation.benchmarks import BenchmarkSourceError, load_benchmark
for repo in (private, missing):
    try:
        load_benchmark("bivlc", repo)
    except BenchmarkSourceError as error:
        print(error)
"""
    lines = run_client(hub_server, tmp_path, code, HF_TOKEN="", MAPLE_TEST_PRIVATE=private,
                       MAPLE_TEST_MISSING=missing).splitlines()
    assert lines == [f"benchmark 'bivlc': cannot read source {repo!r}: {_needs_a_token(hub_server, repo)}"
                     for repo in (private, missing)]


def test_a_private_or_missing_hub_source_read_without_a_token_is_named(hub_server, tmp_path):
    """`load_source(<Hub id>)` (maple build-preferences SOURCE) without a token."""
    private, missing = _private_dataset_repo(hub_server, "fresh-private-source"), f"{USER}/no-such-source"
    code = READ_WITHOUT_A_TOKEN + """
from dataset_builders.sources import SourceError, load_source
for repo in (private, missing):
    try:
        load_source(repo, split="train")
    except SourceError as error:
        print(error)
"""
    lines = run_client(hub_server, tmp_path, code, HF_TOKEN="", MAPLE_TEST_PRIVATE=private,
                       MAPLE_TEST_MISSING=missing).splitlines()
    assert lines == [f"source {repo}: {_needs_a_token(hub_server, repo)}" for repo in (private, missing)]


PRIVATE_PUSH_TO_A_PUBLIC_REPO = """
import contextlib, io, os
import datasets
from huggingface_hub import HfApi
from dataset_builders import cli
from dataset_builders.testing import colour_squares

token, repo = os.environ["MAPLE_TEST_TOKEN"], "maple-org/public-preferences"
HfApi(token=token).create_repo(repo, repo_type="dataset", private=False)
features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
datasets.Dataset.from_dict(colour_squares(6), features=features).to_parquet("source.parquet")
argv = ["source.parquet", "--output-dir", "out", "--judge", "dataset_builders.testing:ColourJudge", "--miner",
        "dataset_builders.testing:thumbnail_miner", "--config", "corpus-captions", "--semdedup-clusters", "0",
        "--no-progress", "--push-to-hub", repo, "--private", "--token", token]
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    status = cli.main(argv)
print(status, " ".join(stderr.getvalue().split()))
print(sorted(HfApi(token=token).list_repo_files(repo, repo_type="dataset")))
"""


def test_a_private_push_to_an_existing_public_repo_is_refused_before_any_upload(hub_server, tmp_path):
    """`create_repo(private=True, exist_ok=True)` leaves an existing repo as it is: `--private` published the build in
    a public repo and said it had pushed."""
    status_and_error, files = run_client(hub_server, tmp_path, PRIVATE_PUSH_TO_A_PUBLIC_REPO,
                                         MAPLE_TEST_TOKEN=CLIENT_TOKEN).strip().splitlines()[-2:]
    assert status_and_error.startswith(
        f"1 maple build-preferences: error: pushing failed: dataset repo 'maple-org/public-preferences' on "
        f"{hub_server.url} exists and is public, and a private push was asked for: nothing was pushed."
    )
    assert files == "[]"
