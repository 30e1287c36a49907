"""Test-wide settings. The Hub is unreachable here: every test runs offline, and the Hub round
trips go to a local Hub-compatible server (see `hub_server.py`). These variables are read by
huggingface_hub at import time, so they are set before any test module imports HF libraries."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
