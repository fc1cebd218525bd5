"""Thin Label Studio client (label-studio-sdk 2.x) for detloop's annotation rounds.

What it adds over the SDK, and nothing more:

- every call goes through :meth:`LabelStudioClient._call`, which translates failures by type and status
  code: no connection, a timeout, 5xx or 429 -> :class:`~detloop.errors.ServiceUnavailable`; 404 ->
  :class:`~detloop.errors.NotFound`; any other 4xx -> :class:`~detloop.errors.ServiceRejected` with the
  server's reason; a 401 says the token is wrong (the token itself is never printed). Nothing here
  retries, and the SDK's own retries are off: the flows are the one retry layer;
- the project is found by its title (``label_studio.project_title``), created on first use with a
  label config generated from the configured class list, and refused when its config was edited to
  hold other classes (the difference is listed);
- the S3 import storage of the production bucket is attached once (never synced: detloop imports
  the tasks itself with ``data.image = s3://bucket/key``);
- tasks are listed as plain dicts, filtered on ``data.<field>`` server-side.

Business rules (what to push, how to read annotations) live in ``tasks/annotation.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from detloop.errors import ServiceRejected, http_error, unreachable
from detloop.ls_format import (  # noqa: F401  (the format's names, also importable from here)
    FROM_NAME,
    IMAGE_FIELD,
    PROJECT_MARKER,
    TO_NAME,
    LabelConfigError,
    check_label_config,
    config_class_names,
    data_filter,
    label_config_xml,
    labelling_instructions,
)
from detloop.settings import Settings

T = TypeVar("T")

@dataclass(frozen=True)
class Project:
    id: int
    title: str
    label_config: str
    expert_instruction: str = ""


class LabelStudioClient:
    """The Label Studio calls detloop needs, with one-line errors that say whether a retry can help.

    Args:
        settings: the resolved settings (URL, token, timeout).
        sdk: an already built ``label_studio_sdk.LabelStudio`` (tests); built lazily otherwise.
    """

    def __init__(self, settings: Settings, sdk: Any | None = None):
        self.settings = settings
        self.url = settings.label_studio.url.rstrip("/")
        self._sdk = sdk

    # ---- plumbing --------------------------------------------------------------------------------
    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            from label_studio_sdk import LabelStudio

            token = self.settings.label_studio_token()
            if not token:
                raise ServiceRejected(
                    f"Label Studio at {self.url}: no API token; set DETLOOP_LABEL_STUDIO__API_TOKEN "
                    "or LABEL_STUDIO_API_KEY", service="Label Studio", url=self.url,
                )
            self._sdk = LabelStudio(base_url=self.url, api_key=token, max_retries=0,
                                    timeout=self.settings.label_studio.timeout_seconds)
        return self._sdk

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one API call once; translate its failure into a detloop error naming the URL."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except ApiError as err:
            code = int(err.status_code or 0)
            if code == 401:
                raise ServiceRejected(
                    f"Label Studio at {self.url} refused the API token (401) on {what}: the token is wrong "
                    "or was revoked; set DETLOOP_LABEL_STUDIO__API_TOKEN", service="Label Studio", url=self.url,
                    status=401,
                ) from None
            raise http_error("Label Studio", self.url, code, what, str(err.body)) from err
        except (httpx.TransportError, ConnectionError, TimeoutError) as err:
            raise unreachable("Label Studio", self.url, what, err) from err

    def _http(self, method: str, path: str, what: str, **kw: Any) -> Any:
        """A raw JSON request through the SDK's authenticated httpx client (bulk reads, no model parsing)."""
        from label_studio_sdk.core.api_error import ApiError

        wrapper = self.sdk._client_wrapper

        def go() -> Any:
            resp = wrapper.httpx_client.request(path, method=method, **kw)
            if resp.status_code >= 400:
                try:
                    body = resp.json()
                except ValueError:
                    body = resp.text
                raise ApiError(status_code=resp.status_code, headers=dict(resp.headers), body=body)
            return resp.json() if resp.content else None

        return self._call(what, go)

    # ---- health and identity ----------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """The token's user (checks reachability and the token)."""
        return self._http("GET", "api/current-user/whoami", "whoami")  # type: ignore[no-any-return]

    # ---- project ---------------------------------------------------------------------------------
    def find_project(self, title: str) -> Project | None:
        """The project with exactly this title (the oldest when several), or None."""
        found: list[Project] = []
        page = 1
        while True:
            data = self._http(
                "GET", "api/projects/", f"list projects titled {title!r}",
                params={"title": title, "page": page, "page_size": 100,
                        "include": "id,title,label_config,expert_instruction"},
            )
            rows = data.get("results", []) if isinstance(data, dict) else data
            found += [Project(int(p["id"]), p["title"], p.get("label_config") or "", p.get("expert_instruction") or "")
                      for p in rows if p.get("title") == title]
            if not isinstance(data, dict) or not data.get("next"):
                break
            page += 1
        if not found:
            return None
        p = min(found, key=lambda x: x.id)
        if not p.label_config:  # `include` may drop it on some versions
            full = self._call(f"get project {p.id}", lambda: self.sdk.projects.get(id=p.id))
            p = Project(p.id, p.title, full.label_config or "", getattr(full, "expert_instruction", "") or "")
        return p

    def ensure_project(self, title: str, class_names: Sequence[str]) -> Project:
        """Find the project by title or create it; refuse a hand-edited label config with other classes.

        A new project gets detloop's labelling instructions (:func:`detloop.ls_format.labelling_instructions`,
        shown before labelling); an existing project without instructions gets them once. Instructions
        someone wrote are never overwritten.
        """
        p = self.find_project(title)
        instructions = labelling_instructions(class_names)
        if p is None:
            created = self._call(
                f"create project {title!r}",
                lambda: self.sdk.projects.create(
                    title=title,
                    label_config=label_config_xml(class_names),
                    description=f"{PROJECT_MARKER}: annotation rounds of detloop (classes {list(class_names)})",
                    expert_instruction=instructions, show_instruction=True,
                ),
            )
            return Project(int(created.id), title, created.label_config or label_config_xml(class_names), instructions)
        check_label_config(p.label_config, class_names, where=f"project {title!r} (id {p.id}) at {self.url}:")
        if not p.expert_instruction.strip():
            self._http("PATCH", f"api/projects/{p.id}/", f"set labelling instructions of project {p.id}",
                       json={"expert_instruction": instructions, "show_instruction": True})
            p = Project(p.id, p.title, p.label_config, instructions)
        return p

    def set_model_version(self, project_id: int, model_version: str) -> bool:
        """Make ``model_version`` the project's (the version whose predictions labellers see); True if changed.

        Label Studio accepts only a version that predictions of the project already carry: call it after
        importing them.
        """
        cur = self._http("GET", f"api/projects/{project_id}/", f"read project {project_id}")
        if (cur or {}).get("model_version") == model_version:
            return False
        self._http("PATCH", f"api/projects/{project_id}/", f"set model_version of project {project_id}",
                   json={"model_version": model_version})
        return True

    def ensure_view(self, project_id: int, title: str, filters: Sequence[dict[str, Any]],
                    hidden_columns: Sequence[str] = ()) -> int:
        """A saved Data Manager view (a tab) titled ``title`` with these filters; created once. Returns its id."""
        views = self._http("GET", "api/dm/views/", f"list views of project {project_id}", params={"project": project_id})
        for v in views or []:
            if (v.get("data") or {}).get("title") == title:
                return int(v["id"])
        body = {"project": project_id, "data": {
            "title": title, "filters": {"conjunction": "and", "items": list(filters)},
            "hiddenColumns": {"explore": list(hidden_columns), "labeling": list(hidden_columns)},
            "ordering": ["tasks:id"]}}
        created = self._http("POST", "api/dm/views/", f"create view {title!r} in project {project_id}", json=body)
        return int(created["id"])

    def view_url(self, project_id: int, view_id: int) -> str:
        """The browser URL of a project's saved view (tab)."""
        return f"{self.url}/projects/{project_id}/data?tab={view_id}"

    def update_label_config(self, project_id: int, label_config: str) -> None:
        """Replace the label config (used by tests to simulate a hand edit)."""
        self._call(f"update project {project_id}",
                   lambda: self.sdk.projects.update(id=project_id, label_config=label_config))

    def delete_project(self, project_id: int) -> None:
        self._call(f"delete project {project_id}", lambda: self.sdk.projects.delete(id=project_id))

    # ---- storage -----------------------------------------------------------------------------------
    def ensure_s3_storage(self, project_id: int, bucket: str, presign: bool, presign_ttl_minutes: int) -> int:
        """Attach an S3 import storage for ``bucket`` once (no prefix; never synced). Returns its id.

        With ``presign`` Label Studio answers the browser's image request with a redirect to a presigned
        URL; without it Label Studio streams the bytes itself. The S3 endpoint is the server's own
        ``S3_ENDPOINT`` (the stack sets it), so a loopback endpoint passes its SSRF protection.
        """
        existing = self._http("GET", "api/storages/s3", f"list S3 storages of project {project_id}",
                              params={"project": project_id})
        for s in existing or []:
            if s.get("bucket") == bucket and bool(s.get("presign")) == bool(presign):
                return int(s["id"])
        key, secret = self.settings.s3_credentials()
        kw: dict[str, Any] = {
            "project": project_id, "bucket": bucket, "presign": presign, "presign_ttl": presign_ttl_minutes,
            "region_name": self.settings.s3.region, "title": f"detloop {bucket}", "recursive_scan": True,
            "use_blob_urls": False,
        }
        if key and secret:
            kw.update(aws_access_key_id=key, aws_secret_access_key=secret)
        for s in existing or []:  # presign changed: update in place
            if s.get("bucket") == bucket:
                sid = int(s["id"])
                self._call(f"update S3 storage {sid}", lambda sid=sid: self.sdk.import_storage.s3.update(id=sid, **kw))
                return sid
        st = self._call(f"attach S3 storage for bucket {bucket!r} to project {project_id}",
                        lambda: self.sdk.import_storage.s3.create(**kw))
        return int(st.id)

    # ---- tasks -------------------------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """One import request; returns the new task ids (in order).

        An import is not idempotent: blindly repeating one after a timeout whose request did go through
        would duplicate the batch. Callers list the round's tasks before importing
        (``tasks.annotation.push_round`` does), so a retried push imports only what is missing.
        """
        res = self._http(
            "POST", f"api/projects/{project_id}/import", f"import {len(tasks)} tasks into project {project_id}",
            params={"return_task_ids": "true", "commit_to_project": "true"}, json=list(tasks),
        )
        return [int(t) for t in (res or {}).get("task_ids", [])]

    def iter_tasks(
        self,
        project_id: int,
        filters: Sequence[dict[str, Any]] = (),
        fields: str = "all",
        page_size: int = 1000,
        include: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Tasks of a project as plain dicts (``fields="all"``: with annotations and predictions).

        ``filters`` are Data Manager items (see :func:`data_filter`), combined with AND. ``include``
        (comma-separated task fields, e.g. ``"id,data,annotations,predictions"``) makes the server
        serialise only those: several times faster than the full task on large rounds.
        """
        query = json.dumps({"filters": {"conjunction": "and", "items": list(filters)}})
        page = 1
        while True:
            params: dict[str, Any] = {"project": project_id, "fields": fields, "query": query, "page": page,
                                      "page_size": page_size, "resolve_uri": "false"}
            if include:
                params["include"] = include
            data = self._http("GET", "api/tasks/", f"list tasks of project {project_id} (page {page})", params=params)
            rows = data.get("tasks", []) if isinstance(data, dict) else []
            yield from rows
            total = int(data.get("total", 0)) if isinstance(data, dict) else 0
            if not rows or page * page_size >= total:
                return
            page += 1

    def export_tasks(self, project_id: int, task_ids: Sequence[int], chunk: int = 500,
                     threads: int = 2) -> list[dict[str, Any]]:
        """Full tasks (annotations with ``was_cancelled``, predictions, data) by id, via the export API.

        The export serialiser is 1.5-2x faster than listing tasks with ``fields=all`` (whose
        ``include`` option reduces annotations to their ids), so a round is pulled as: ids from a
        filtered list, then exports of ``chunk`` ids (``threads`` requests in flight).
        """
        from concurrent.futures import ThreadPoolExecutor

        ids = [int(i) for i in task_ids]
        parts = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]

        def one(part: list[int]) -> list[dict[str, Any]]:
            return self._http(  # type: ignore[no-any-return]
                "GET", f"api/projects/{project_id}/export", f"export {len(part)} tasks of project {project_id}",
                params={"exportType": "JSON", "download_all_tasks": "true", "ids[]": part},
            ) or []

        if not parts:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(parts)))) as pool:
            return [t for res in pool.map(one, parts) for t in res]

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], was_cancelled: bool = False,
                          lead_time: float | None = None) -> int:
        """Submit one annotation (what the editor's Submit / Skip buttons do)."""
        body: dict[str, Any] = {"result": result, "was_cancelled": was_cancelled}
        if lead_time is not None:
            body["lead_time"] = lead_time
        res = self._http("POST", f"api/tasks/{task_id}/annotations/", f"annotate task {task_id}", json=body)
        return int(res["id"])

    def resolve_url(self, task_id: int, uri: str) -> str:
        """The URL the browser fetches for an ``s3://`` image of a task."""
        import base64

        b64 = base64.urlsafe_b64encode(uri.encode()).decode()
        return f"{self.url}/tasks/{task_id}/resolve/?fileuri={b64}"

    def fetch_as_browser(self, task_id: int, uri: str) -> tuple[int, bytes, str | None]:
        """GET the image the way the editor does; returns (final status, bytes, redirect target host or None)."""
        import httpx

        token = self.settings.label_studio_token() or ""

        def go() -> tuple[int, bytes, str | None]:
            with httpx.Client(timeout=30.0, follow_redirects=False) as c:
                r = c.get(self.resolve_url(task_id, uri), headers={"Authorization": f"Token {token}"})
                if r.status_code in (301, 302, 303, 307, 308):
                    loc = r.headers["location"]
                    r2 = c.get(loc)
                    return r2.status_code, r2.content, httpx.URL(loc).host
                return r.status_code, r.content, None

        return self._call(f"fetch image of task {task_id}", go)
