"""What fetching a model cannot be talked into: credentials followed to another host by a redirect, a
``.zip`` that unpacks without bound or outside its folder. Real HTTP servers on loopback, real archives."""

from __future__ import annotations

import http.server
import json
import threading
import zipfile
from typing import Dict, Iterator, List

import pytest

from envserve.errors import StorageError
from envserve.mlflow_rest import MlflowClient
from envserve.storage.http import unzip


class _Server:
    """A loopback HTTP server answering each path from ``routes`` (a redirect or a JSON body) and keeping
    the headers of every request it got."""

    def __init__(self, routes: Dict[str, str]) -> None:
        seen: List[Dict[str, str]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                target = routes.get(self.path.split("?", 1)[0], "")
                if target.startswith("http"):
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                    return
                body = json.dumps({"answered_by": target}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[List[_Server]]:
    made: List[_Server] = []
    yield made
    for server in made:
        server.close()


def test_a_redirect_to_another_host_does_not_carry_the_mlflow_token(servers):
    elsewhere = _Server({"/api/2.0/mlflow/x": "elsewhere"})
    servers.append(elsewhere)
    tracking = _Server({"/api/2.0/mlflow/x": elsewhere.url + "/api/2.0/mlflow/x", "/api/2.0/mlflow/y": ""})
    servers.append(tracking)
    client = MlflowClient(tracking.url, environ={"MLFLOW_TRACKING_TOKEN": "s3cret-token"})
    assert client.call("x") == {"answered_by": "elsewhere"}
    assert tracking.seen[0]["authorization"] == "Bearer s3cret-token"
    assert "authorization" not in elsewhere.seen[0], elsewhere.seen[0]  # another port: another origin


def test_a_redirect_within_the_same_origin_keeps_the_token(servers):
    routes: Dict[str, str] = {"/api/2.0/mlflow/b": "b"}
    server = _Server(routes)
    servers.append(server)
    routes["/api/2.0/mlflow/a"] = server.url + "/api/2.0/mlflow/b"
    client = MlflowClient(server.url, environ={"MLFLOW_TRACKING_TOKEN": "s3cret-token"})
    assert client.call("a") == {"answered_by": "b"}
    assert [h.get("authorization") for h in server.seen] == ["Bearer s3cret-token"] * 2


def _zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return path


def test_a_zip_bomb_stops_at_the_cap_by_what_it_inflates_to(tmp_path):
    """A small archive inflating far beyond the cap (here lowered to 1 MiB; the default is the tarballs'
    32 GiB) is refused while it is written, whatever its entries declare."""
    archive = _zip(tmp_path / "bomb.zip", [("model/a.bin", b"\0" * (4 << 20))])
    assert archive.stat().st_size < 64 << 10
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(StorageError, match="unpacks to more than 1048576 bytes"):
        unzip(str(archive), str(target), "https://example/bomb.zip", max_bytes=1 << 20)
    assert sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) <= 1 << 20


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "C:evil", "a\\..\\evil"])
def test_zip_members_outside_the_folder_are_refused(tmp_path, name):
    archive = _zip(tmp_path / "evil.zip", [("ok.txt", b"x"), (name, b"pwned")])
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(StorageError, match="escapes"):
        unzip(str(archive), str(target), "https://example/evil.zip")
    assert not list(tmp_path.rglob("evil"))
    assert not (target / "ok.txt").exists()  # checked before anything is written


def test_a_good_zip_unpacks(tmp_path):
    archive = _zip(tmp_path / "m.zip", [("model/model-settings.json", b"{}"), ("model/w.bin", b"\1" * 1000)])
    target = tmp_path / "out"
    target.mkdir()
    unzip(str(archive), str(target), "https://example/m.zip")
    assert (target / "model" / "w.bin").read_bytes() == b"\1" * 1000
