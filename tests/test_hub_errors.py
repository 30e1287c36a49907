"""Hub failures (404, 401, 500) and non-MAPLE checkpoints give errors naming the repo or folder."""

import json

import pytest

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
    assert message == f"model repo 'maple-org/private' on {hub_server.url} refused the token (HTTP 401): check HF_TOKEN"


def test_server_error_is_named(hub_server, tmp_path):
    hub_server.fail_next("maple-org/flaky", 500, times=100)  # more than the client's retries
    try:
        message = run_client(hub_server, tmp_path, LOAD, MAPLE_TEST_REPO="maple-org/flaky").strip()
    finally:
        hub_server.fail_next("maple-org/flaky", 500, times=0)
    assert message == f"model repo 'maple-org/flaky' on {hub_server.url} could not be read: HTTP 500 from the server"


def test_not_a_maple_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match=r"is a 'bert' checkpoint; expected a MAPLE checkpoint \(model_type 'maple'\)"):
        load_embedder(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty has neither config.json nor adapter_config.json: not a transformers checkpoint folder"):
        load_embedder(str(tmp_path / "empty"))
