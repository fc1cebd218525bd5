"""In-memory fakes of the three service protocols (:mod:`detloop.clients.protocols`), one each, for unit and
flow-logic tests. They keep the semantics the code relies on (not-found is :class:`NotFound`, a down service
is :class:`ServiceUnavailable`, Label Studio filters on data fields, registry aliases move atomically).

The real clients are tested against the real servers in ``tests/integration``; a fake is never the only
test of a boundary.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detloop.clients import Clients
from detloop.clients.s3 import ObjectInfo
from detloop.errors import NotFound, ServiceRejected, ServiceUnavailable
from detloop.ls_format import label_config_xml


class _Switch:
    """``down = True`` makes every call raise :class:`ServiceUnavailable` (an outage)."""

    service = "service"
    url = "http://fake"
    down = False

    def _check(self, what: str) -> None:
        if self.down:
            raise ServiceUnavailable(f"{self.service} at {self.url} is not reachable ({what}): ConnectionError",
                                     service=self.service, url=self.url)


class FakeStore(_Switch):
    """An :class:`~detloop.clients.protocols.ObjectStore` in memory; counts puts and reads."""

    service, url = "S3", "http://fake-s3"

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.written: dict[tuple[str, str], float] = {}  # last write, by ``clock``
        self.buckets: set[str] = set()
        self.puts = 0
        self.reads = 0
        self.clock = time.time  # the store's clock (lease ages); a test may replace it

    def ensure_bucket(self, bucket: str) -> None:
        self._check(f"head_bucket {bucket}")
        self.buckets.add(bucket)

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str | None = None) -> str:
        self._check(f"put s3://{bucket}/{key}")
        self.puts += 1
        self.objects[(bucket, key)] = bytes(body)
        self.written[(bucket, key)] = self.clock()
        return hashlib.md5(body).hexdigest()

    def get_bytes(self, bucket: str, key: str) -> bytes:
        self._check(f"get s3://{bucket}/{key}")
        self.reads += 1
        try:
            return self.objects[(bucket, key)]
        except KeyError:
            raise NotFound(f"S3 at {self.url}: NoSuchKey on get s3://{bucket}/{key}") from None

    read_frame = get_bytes

    def get_bytes_or_none(self, bucket: str, key: str) -> bytes | None:
        try:
            return self.get_bytes(bucket, key)
        except NotFound:
            return None

    def exists(self, bucket: str, key: str) -> bool:
        self._check(f"head s3://{bucket}/{key}")
        return (bucket, key) in self.objects

    def put_json(self, bucket: str, key: str, obj: Any) -> str:
        return self.put_bytes(bucket, key, json.dumps(obj, indent=1, sort_keys=True).encode())

    def get_json(self, bucket: str, key: str) -> Any:
        return json.loads(self.get_bytes(bucket, key))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        self._check(f"list s3://{bucket}/{prefix}")
        for (b, k), v in sorted(self.objects.items()):
            if b == bucket and k.startswith(prefix):
                yield ObjectInfo(k, len(v), hashlib.md5(v).hexdigest())

    def list_prefixes(self, bucket: str, prefix: str = "", delimiter: str = "/") -> list[str]:
        out = {prefix + k[len(prefix):].split(delimiter, 1)[0] + delimiter
               for (b, k) in self.objects if b == bucket and k.startswith(prefix) and delimiter in k[len(prefix):]}
        return sorted(out)

    def delete(self, bucket: str, key: str) -> None:
        self._check(f"delete s3://{bucket}/{key}")
        self.objects.pop((bucket, key), None)

    # conditional writes, with S3's semantics (one winner; ETag = MD5 of the body, as SeaweedFS and S3 give)
    def _etag(self, bucket: str, key: str) -> str | None:
        body = self.objects.get((bucket, key))
        return None if body is None else hashlib.md5(body).hexdigest()

    def put_bytes_if_absent(self, bucket: str, key: str, body: bytes, content_type: str | None = None) -> str | None:
        self._check(f"conditional put s3://{bucket}/{key}")
        return None if (bucket, key) in self.objects else self.put_bytes(bucket, key, body, content_type)

    def put_bytes_if_match(self, bucket: str, key: str, body: bytes, etag: str,
                           content_type: str | None = None) -> str | None:
        self._check(f"conditional put s3://{bucket}/{key}")
        return self.put_bytes(bucket, key, body, content_type) if self._etag(bucket, key) == etag else None

    def delete_if_match(self, bucket: str, key: str, etag: str) -> bool:
        self._check(f"conditional delete s3://{bucket}/{key}")
        if self._etag(bucket, key) != etag:
            return False
        self.delete(bucket, key)
        return True

    def get_bytes_with_age(self, bucket: str, key: str) -> tuple[bytes, str, float]:
        body = self.get_bytes(bucket, key)
        return body, hashlib.md5(body).hexdigest(), max(0.0, self.clock() - self.written[(bucket, key)])


@dataclass
class _Project:
    id: int
    title: str
    label_config: str
    model_version: str = ""
    views: dict[int, dict[str, Any]] = field(default_factory=dict)


class FakeLabelStudio(_Switch):
    """A :class:`~detloop.clients.protocols.LabellingTool` in memory: projects, tasks filtered on data fields,
    annotation counters as the server reports them. ``edit(result)`` models a reviewer changing every
    submitted annotation on the server."""

    service, url = "Label Studio", "http://fake-ls"

    def __init__(self, edit: Any = None) -> None:
        self.projects: dict[str, _Project] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.edit = edit
        self._ids = itertools.count(1000)

    def whoami(self) -> dict[str, Any]:
        self._check("whoami")
        return {"id": 1, "email": "fake@detloop.local"}

    def find_project(self, title: str) -> _Project | None:
        self._check(f"list projects titled {title!r}")
        return self.projects.get(title)

    def ensure_project(self, title: str, class_names: Sequence[str]) -> _Project:
        self._check(f"create project {title!r}")
        self.calls.append("ensure_project")
        return self.projects.setdefault(title, _Project(len(self.projects) + 1, title, label_config_xml(class_names)))

    def ensure_s3_storage(self, project_id: int, bucket: str, presign: bool, presign_ttl_minutes: int) -> int:
        self._check("attach S3 storage")
        self.calls.append(f"storage {bucket}")
        return 1

    def _match(self, t: dict[str, Any], filters: Sequence[dict[str, Any]]) -> bool:
        return all(t["data"].get(f["filter"].split("data.", 1)[1]) == f["value"] for f in filters)

    def iter_tasks(self, project_id: int, filters: Sequence[dict[str, Any]] = (), fields: str = "all",
                   page_size: int = 1000, include: str | None = None) -> Iterator[dict[str, Any]]:
        self._check(f"list tasks of project {project_id}")
        for tid, t in sorted(self.tasks.items()):
            if t["project"] == project_id and self._match(t, filters):
                anns = t["annotations"]
                row = {"id": tid, "data": t["data"], "total_annotations": sum(not a["was_cancelled"] for a in anns),
                       "cancelled_annotations": sum(a["was_cancelled"] for a in anns)}
                if fields == "all" or (include and "predictions" in include.split(",")):
                    row["predictions"] = t["predictions"]
                yield row

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        self._check(f"import {len(tasks)} tasks into project {project_id}")
        ids = []
        for t in tasks:
            tid = next(self._ids)
            self.tasks[tid] = {"project": project_id, "data": json.loads(json.dumps(t["data"])),
                               "predictions": json.loads(json.dumps(t.get("predictions", []))), "annotations": []}
            ids.append(tid)
        self.calls.append(f"import {len(tasks)}")
        return ids

    def export_tasks(self, project_id: int, task_ids: Sequence[int], chunk: int = 500,
                     threads: int = 2) -> list[dict[str, Any]]:
        self._check(f"export tasks of project {project_id}")
        return [{"id": i, "data": self.tasks[i]["data"], "annotations": self.tasks[i]["annotations"],
                 "predictions": self.tasks[i]["predictions"]} for i in task_ids if i in self.tasks]

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], was_cancelled: bool = False,
                          lead_time: float | None = None) -> int:
        self._check(f"annotate task {task_id}")
        anns = self.tasks[task_id]["annotations"]
        result = json.loads(json.dumps(result))  # what the server stores is JSON
        anns.append({"id": len(anns) + 1, "result": self.edit(result) if self.edit else result,
                     "was_cancelled": was_cancelled, "updated_at": f"2026-01-01T00:00:{len(anns):02d}Z"})
        self.calls.append(f"annotate {task_id}")
        return len(anns)

    def _project(self, project_id: int) -> _Project:
        return next(p for p in self.projects.values() if p.id == project_id)

    def set_model_version(self, project_id: int, model_version: str) -> bool:
        """As Label Studio: only a version that predictions of the project carry is accepted (else a 400)."""
        self._check(f"set model_version of project {project_id}")
        p = self._project(project_id)
        if p.model_version == model_version:
            return False
        if not any(pr.get("model_version") == model_version for t in self.tasks.values() if t["project"] == project_id
                   for pr in t["predictions"]):
            raise ServiceRejected(f"Label Studio at {self.url}: HTTP 400 on set model_version: Model version "
                                  "doesn't exist either as live model or as static predictions.")
        p.model_version = model_version
        return True

    def ensure_view(self, project_id: int, title: str, filters: Sequence[dict[str, Any]],
                    hidden_columns: Sequence[str] = ()) -> int:
        self._check(f"list views of project {project_id}")
        p = self._project(project_id)
        for vid, v in p.views.items():
            if v["title"] == title:
                return vid
        vid = len(p.views) + 1
        p.views[vid] = {"title": title, "filters": list(filters), "hidden": list(hidden_columns)}
        return vid

    def view_url(self, project_id: int, view_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data?tab={view_id}"


@dataclass
class _Version:
    version: str
    run_id: str
    tags: dict[str, str]
    files: Path
    creation_timestamp: int = field(default_factory=lambda: int(time.time() * 1000))
    aliases: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class _Run:
    run_id: str
    name: str
    tags: dict[str, str]
    status: str = "RUNNING"
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)

    @property
    def info(self) -> Any:
        return type("Info", (), {"run_id": self.run_id, "status": self.status})()

    @property
    def data(self) -> Any:
        return type("Data", (), {"tags": self.tags, "params": self.params, "metrics": self.metrics})()


class FakeRegistry(_Switch):
    """A :class:`~detloop.clients.protocols.ModelRegistry` in memory (files of versions in a temp folder)."""

    service, url = "MLflow", "http://fake-mlflow"

    def __init__(self, model_name: str = "fake-detector", root: Path | None = None) -> None:
        self.model_name = model_name
        self.root = Path(root or tempfile.mkdtemp(prefix="fake-registry-"))
        self.runs: dict[str, _Run] = {}
        self._versions: dict[str, _Version] = {}
        self._aliases: dict[str, str] = {}
        self.alias_moves: list[tuple[str, str]] = []
        self.description = ""

    # runs
    def find_runs(self, filter_string: str, max_results: int = 10) -> list[Any]:
        self._check("search runs")
        wanted = dict(re.findall(r"tags\.`?([\w.]+)`?\s*=\s*'([^']*)'", filter_string))
        status = re.search(r"attributes\.status\s*=\s*'(\w+)'", filter_string)
        out = [r for r in self.runs.values() if all(r.tags.get(k) == v for k, v in wanted.items())
               and (status is None or r.status == status.group(1))]
        return out[:max_results]

    def create_run(self, run_name: str, tags: dict[str, str]) -> str:
        self._check("create run")
        rid = hashlib.sha256(f"{run_name}{len(self.runs)}".encode()).hexdigest()[:32]
        self.runs[rid] = _Run(rid, run_name, dict(tags))
        return rid

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.runs[run_id].params.update({k: str(v) for k, v in params.items()})

    def log_metrics(self, run_id: str, rows: Sequence[tuple[str, float, int]]) -> None:
        self.runs[run_id].metrics.update({k: float(v) for k, v, _ in rows})

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.runs[run_id].tags.update(tags)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        key = f"{artifact_path}/{Path(path).name}" if artifact_path else Path(path).name
        self.runs[run_id].artifacts[key] = Path(path).read_bytes()

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.runs[run_id].artifacts[artifact_file] = text.encode()

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.runs[run_id].status = status

    def download_run_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        self._check("download artifact")
        body = self.runs[run_id].artifacts.get(path)
        if body is None:
            raise NotFound(f"MLflow at {self.url}: no artifact {path} in run {run_id}")
        out = Path(dst) / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(body)
        return out

    # registry
    def versions(self, filter_extra: str = "") -> list[Any]:
        self._check("search model versions")
        m = re.search(r"run_id='([^']*)'", filter_extra)
        vs = [v for v in self._versions.values() if m is None or v.run_id == m.group(1)]
        return sorted(vs, key=lambda v: int(v.version), reverse=True)

    def get_version(self, version: str | int) -> Any:
        self._check("get model version")
        v = self._versions.get(str(version))
        if v is None:
            raise NotFound(f"MLflow at {self.url}: model version {self.model_name}/{version} not found")
        v.aliases = sorted(a for a, ver in self._aliases.items() if ver == v.version)
        return v

    def version_for_run(self, run_id: str) -> Any | None:
        vs = self.versions(f"run_id='{run_id}'")
        return vs[0] if vs else None

    def aliases(self) -> dict[str, str]:
        self._check("get registered model")
        return dict(self._aliases)

    def version_by_alias(self, alias: str) -> Any | None:
        v = self.aliases().get(alias)
        return None if v is None else self.get_version(v)

    def set_alias(self, alias: str, version: str | int) -> None:
        self._check(f"set alias {alias}")
        self._aliases[alias] = str(version)
        self.alias_moves.append((alias, str(version)))

    def delete_alias(self, alias: str) -> None:
        self._aliases.pop(alias, None)

    def set_version_tags(self, version: str | int, tags: dict[str, Any]) -> None:
        self._check("set version tag")
        self._versions[str(version)].tags.update({k: str(v) for k, v in tags.items()})

    def register_logged_model(self, run_id: str, local_dir: Path, name: str, tags: dict[str, str],
                              params: dict[str, str], serving: Any = None, description: str | None = None) -> Any:
        """Keeps the files as given (no pyfunc model: that format is tested against the real MLflow)."""
        self._check("create model version")
        version = str(len(self._versions) + 1)
        files = self.root / f"v{version}"
        shutil.copytree(local_dir, files)
        if serving is not None:
            serving.write(files / "serving.json")
        self._versions[version] = _Version(version, run_id, dict(tags), files, description=description or "")
        return self._versions[version]

    def describe(self, version: str | int | None, text: str) -> None:
        self._check("describe")
        if version is None:
            self.description = text
        else:
            self._versions[str(version)].description = text

    def run_url(self, run_id: str) -> str:
        return f"{self.url}/#/experiments/0/runs/{run_id}"

    def version_url(self, version: str | int) -> str:
        return f"{self.url}/#/models/{self.model_name}/versions/{version}"

    def download_version(self, version: Any, dst: Path) -> Path:
        self._check("download model version")
        shutil.copytree(self._versions[str(version.version)].files, dst, dirs_exist_ok=True)
        return Path(dst)

    def add_model(self, files: Path, run_id: str = "run-0", tags: dict[str, str] | None = None,
                  alias: str | None = "champion") -> str:
        """Register ``files`` (a folder with ``scoring/`` and ``weights/``) as a version, optionally under ``alias``."""
        v = self.register_logged_model(run_id, files, self.model_name, tags or {}, {})
        if alias:
            self.set_alias(alias, v.version)
        return v.version


def fake_clients(model_name: str = "fake-detector", root: Path | None = None) -> Clients:
    """One fake of each protocol, as a :class:`~detloop.clients.Clients` bundle."""
    return Clients(store=FakeStore(), labels=FakeLabelStudio(), registry=FakeRegistry(model_name, root))
