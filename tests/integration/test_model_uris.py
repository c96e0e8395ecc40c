"""Model URIs against real services: an MLflow tracking server (models:/, @alias, latest, runs:/) and an
S3-API server (moto's standalone server, with IAM credentials checked) holding the artifacts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MLFLOW_SERVER_GROUP, write_model

pytestmark = pytest.mark.slow


def _digits_body(x):
    return {"inputs": [{"name": "predict", "shape": list(x.shape), "datatype": "FP64", "data": x.tolist()}]}


def _predictions(mlflow_url, name, version, x):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn

        mlflow.set_tracking_uri(mlflow_url)
        return mlflow.sklearn.load_model("models:/%s/%s" % (name, version)).predict(x).tolist()


@MLFLOW_SERVER_GROUP
def test_models_and_runs_uris_from_a_real_mlflow_server(tmp_path, start_server, registered_digits, digits):
    x, _ = digits
    rows = x[-25:]
    v1 = _predictions(registered_digits, "digits", 1, rows)
    v2 = _predictions(registered_digits, "digits", 2, rows)
    assert v1 != v2  # the two versions really differ (C=1 vs C=2), so the URI decides the answer
    env = {
        "MLFLOW_TRACKING_URI": registered_digits,
        "ENVSERVE_ENV_CACHE": str(tmp_path / "cache" / "environments"),
    }
    # one-liner: no settings file, name from the URI; served in the server's environment
    server = start_server(
        tmp_path,
        "--model-uri",
        "models:/digits/1",
        env={**env, "ENVSERVE_MODEL_URI": "", "MLSERVER_ENV_TARBALL": ""},
        wait=True,
    )
    with server.client() as client:
        r = client.post("/v2/models/digits/infer", json=_digits_body(rows))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == v1
    server.stop()

    repo = tmp_path / "repo"
    import mlflow

    run_id = mlflow.MlflowClient(registered_digits).get_model_version("digits", "2").run_id
    for name, uri in (
        ("by-alias", "models:/digits@champion"),
        ("by-latest", "models:/digits/latest"),
        ("by-run", "runs:/%s/model" % run_id),
        ("unknown-version", "models:/digits/99"),
        ("unknown-model", "models:/nope/1"),
    ):
        write_model(
            repo,
            name,
            {"name": name, "implementation": "mlflow", "parameters": {"uri": uri, "environment": "server"}},
        )
    write_model(repo, "unreachable", {"name": "unreachable", "parameters": {"uri": "models:/digits/1"}})
    server = start_server(repo, env=env)
    with server.client() as client:
        for name, expected in (("by-alias", v1), ("by-latest", v2), ("by-run", v2)):
            r = client.post("/v2/models/%s/infer" % name, json=_digits_body(rows))
            assert r.status_code == 200, (name, r.text)
            assert r.json()["outputs"][0]["data"] == expected, name
        index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
        assert index["unknown-version"]["state"] == "UNAVAILABLE"
        assert "models:/digits/99" in index["unknown-version"]["reason"]
        assert "models:/nope/1" in index["unknown-model"]["reason"]
    server.stop()

    # an unreachable tracking server is that model's problem alone
    server = start_server(repo, env={**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    with server.client() as client:
        index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
        assert (
            "cannot reach the MLflow tracking server at http://127.0.0.1:9" in index["unreachable"]["reason"]
        )


@MLFLOW_SERVER_GROUP
def test_baking_an_mlflow_model_uri_fetches_only_its_environment_files(tmp_path, registered_digits):
    """envserve image build --environment models:/digits/2: MLmodel and the environment files come from
    the real tracking server, the model itself does not; the spec hashes as the full model's does, so the
    model fetched at run time finds the environment baked."""
    from envserve.environments.spec import read_spec
    from envserve.image.bake import bake_source
    from envserve.storage import fetch

    env = {"MLFLOW_TRACKING_URI": registered_digits}
    source = bake_source("models:/digits/2", str(tmp_path / "cache"), env)
    assert source.kind == "spec" and os.path.basename(source.location) == "python_env.yaml"
    # this tracking server keeps artifacts on a local path: read in place, nothing downloaded
    assert not (tmp_path / "cache" / "downloads").exists()
    whole = fetch("models:/digits/2", str(tmp_path / "whole"), env)
    full = read_spec(os.path.join(whole, "python_env.yaml"))
    assert read_spec(source.location).digest() == full.digest()
    assert "scikit-learn" in " ".join(full.requirements)


def test_baking_an_s3_model_fetches_only_its_environment_files(tmp_path, s3_server):
    """The same from S3 (what an MLflow registry with an S3 artifact store answers): the model's weights
    stay in the bucket."""
    from envserve.image.bake import ENVIRONMENT_FILES, bake_source

    s3 = _s3_client(s3_server)
    s3.create_bucket(Bucket="bake")
    files = {
        "MLmodel": b"flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n",
        "python_env.yaml": b"python: 3.8.18\ndependencies:\n- -r requirements.txt\n",
        "requirements.txt": b"scikit-learn==0.24.2\n",
        "model.pkl": b"\0" * 1_000_000,
        "sub/extra.bin": b"x",
    }
    for name, body in files.items():
        s3.put_object(Bucket="bake", Key="churn/3/" + name, Body=body)
    env = {
        "AWS_ACCESS_KEY_ID": s3_server["key"],
        "AWS_SECRET_ACCESS_KEY": s3_server["secret"],
        "AWS_ENDPOINT_URL": s3_server["url"],
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    source = bake_source("s3://bake/churn/3", str(tmp_path / "cache"), env)
    assert source.kind == "spec" and os.path.basename(source.location) == "python_env.yaml"
    fetched = sorted(os.listdir(os.path.dirname(source.location)))
    assert fetched == ["MLmodel", "python_env.yaml", "requirements.txt"], fetched
    assert set(fetched) <= set(ENVIRONMENT_FILES)
    from envserve.environments.spec import read_spec

    spec = read_spec(source.location)
    assert (spec.python, spec.requirements) == ("3.8", ["scikit-learn==0.24.2"])


def _s3_client(s3_server):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_server["url"],
        region_name="us-east-1",
        aws_access_key_id=s3_server["key"],
        aws_secret_access_key=s3_server["secret"],
    )


def _start(argv, port, log, what, seconds, env=None):
    """A storage server (moto, the GCS emulator, Azurite) writing to ``log``, once its port accepts
    connections; fails with its log if it exits or does not listen within ``seconds``."""
    with open(log, "w") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("%s did not start:\n%s" % (what, log.read_text())) from None
            time.sleep(0.1)


def _stop(proc):
    """Stop a storage server: SIGTERM, then SIGKILL if it has not exited within 10 s (Azurite may not)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3/IAM server with authentication on: one IAM user whose key may read the bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = Path(sys.executable).parent / "moto_server"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = _start([moto, "-H", "127.0.0.1", "-p", port], port, log, "moto's server", 30, env)
    url = "http://127.0.0.1:%d" % port
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="envserve")
    iam.put_user_policy(
        UserName="envserve",
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="envserve")["AccessKey"]
    yield {"url": url, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    _stop(proc)


def test_s3_uri_with_credentials_from_a_secret_directory(
    tmp_path, start_server, s3_server, digits_model_file, digits
):
    import joblib

    s3 = _s3_client(s3_server)
    s3.create_bucket(Bucket="models")
    s3.upload_file(str(digits_model_file), "models", "digits/v1/model.joblib")
    s3.put_object(Bucket="models", Key="digits/v1/model-settings.json", Body=b"{}")
    # the Secret as Kubernetes mounts it (Seldon's envSecretRefName provides the same variables)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text(s3_server["key"])
    (secret / "AWS_SECRET_ACCESS_KEY").write_text(s3_server["secret"] + "\n")
    (secret / "AWS_ENDPOINT_URL").write_text(s3_server["url"])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "AWS_ACCESS_KEY_ID").write_text("AKIAWRONGWRONGWRONG1")
    (wrong / "AWS_SECRET_ACCESS_KEY").write_text("not-the-secret-value-0123456789")
    (wrong / "AWS_ENDPOINT_URL").write_text(s3_server["url"])

    repo = tmp_path / "repo"
    write_model(
        repo,
        "digits",
        {"name": "digits", "implementation": "sklearn", "parameters": {"uri": "s3://models/digits/v1"}},
    )
    write_model(
        repo,
        "missing-key",
        {"name": "missing-key", "implementation": "sklearn", "parameters": {"uri": "s3://models/digits/v9"}},
    )
    write_model(
        repo,
        "missing-bucket",
        {
            "name": "missing-bucket",
            "implementation": "sklearn",
            "parameters": {"uri": "s3://no-such-bucket/digits"},
        },
    )
    base_env = {
        "ENVSERVE_ENV_CACHE": str(tmp_path / "cache" / "environments"),
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    server = start_server(repo, env={**base_env, "ENVSERVE_SECRET_DIR": str(secret)})
    x, _ = digits
    with server.client() as client:
        r = client.post("/v2/models/digits/infer", json=_digits_body(x[:10]))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == joblib.load(digits_model_file).predict(x[:10]).tolist()
        index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
        assert "s3://models/digits/v9: no objects under this prefix" in index["missing-key"]["reason"]
        assert "s3://no-such-bucket/digits: the bucket does not exist" in index["missing-bucket"]["reason"]
    server.stop()
    assert s3_server["secret"] not in server.log

    # wrong credentials: the model is UNAVAILABLE with a reason naming the URI, never the secret
    server = start_server(
        repo,
        env={
            **base_env,
            "ENVSERVE_SECRET_DIR": str(wrong),
            "ENVSERVE_ENV_CACHE": str(tmp_path / "cache2" / "environments"),
        },
    )
    with server.client() as client:
        index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
        reason = index["digits"]["reason"]
        assert index["digits"]["state"] == "UNAVAILABLE" and "s3://models/digits/v1" in reason
        assert "access key is not valid" in reason or "access denied" in reason, reason
        assert "not-the-secret-value" not in json.dumps(index) and "not-the-secret-value" not in server.log


def test_https_archive_uri(tmp_path, start_server, digits_model_file, digits):
    """An https:// (here http:// on loopback) tar.gz of a model folder, fetched once and cached by content."""
    import functools
    import http.server
    import tarfile
    import threading

    import joblib

    site = tmp_path / "site"
    site.mkdir()
    with tarfile.open(site / "digits.tar.gz", "w:gz") as tar:
        tar.add(digits_model_file, "digits/model.joblib")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        uri = "http://127.0.0.1:%d/digits.tar.gz" % httpd.server_address[1]
        env = {"ENVSERVE_ENV_CACHE": str(tmp_path / "cache" / "environments")}
        x, _ = digits
        (tmp_path / "empty").mkdir()
        for attempt in range(2):
            server = start_server(tmp_path / "empty", "--model-uri", uri, "--model-name", "archived", env=env)
            with server.client() as client:
                r = client.post("/v2/models/archived/infer", json=_digits_body(x[:5]))
                assert r.status_code == 200, r.text
                assert (
                    r.json()["outputs"][0]["data"] == joblib.load(digits_model_file).predict(x[:5]).tolist()
                )
            assert ("fetched http://127.0.0.1" in server.log) == (attempt == 0), server.log
            server.stop()
        missing = start_server(tmp_path / "empty", "--model-uri", uri.replace("digits", "nothing"), env=env)
        with missing.client() as client:
            (row,) = client.post("/v2/repository/index").json()
            assert row["state"] == "UNAVAILABLE" and "the server answered 404" in row["reason"]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def gcs_emulator(tmp_path_factory):
    """gcp-storage-emulator (a Google Cloud Storage JSON-API server) on a loopback port, in memory."""
    from tests.conftest import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    emulator = Path(sys.executable).parent / "gcp-storage-emulator"
    argv = [emulator, "start", "--host", "127.0.0.1", "--port", port, "--in-memory"]
    proc = _start(argv, port, log, "the GCS emulator", 60)
    url = "http://127.0.0.1:%d" % port
    yield url
    _stop(proc)


# google-api-core asks for grpcio-status, which only its gRPC transport uses (GCS speaks JSON over HTTP)
@pytest.mark.filterwarnings("ignore:Please install grpcio-status:ImportWarning")
def test_gs_uri_from_a_gcs_emulator(tmp_path, start_server, gcs_emulator, digits_model_file, digits):
    import joblib
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator}
    )
    bucket = client.create_bucket("models")
    bucket.blob("digits/v1/model.joblib").upload_from_filename(str(digits_model_file))
    bucket.blob("digits/v1/model-settings.json").upload_from_string(b"{}")
    repo = tmp_path / "repo"
    for name, uri in (
        ("digits", "gs://models/digits/v1"),
        ("missing-object", "gs://models/digits/v9"),
        ("missing-bucket", "gs://no-such-bucket/digits"),
    ):
        write_model(repo, name, {"name": name, "implementation": "sklearn", "parameters": {"uri": uri}})
    cache = tmp_path / "cache" / "environments"
    env = {"ENVSERVE_ENV_CACHE": str(cache), "STORAGE_EMULATOR_HOST": gcs_emulator}
    server = start_server(repo, env=env)
    x, _ = digits
    with server.client() as http:
        r = http.post("/v2/models/digits/infer", json=_digits_body(x[:10]))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == joblib.load(digits_model_file).predict(x[:10]).tolist()
        index = {m["name"]: m for m in http.post("/v2/repository/index").json()}
        assert index["missing-object"]["state"] == "UNAVAILABLE"
        assert "gs://models/digits/v9: no objects under this prefix" in index["missing-object"]["reason"]
        assert (
            "gs://no-such-bucket/digits: the bucket or object does not exist"
            in index["missing-bucket"]["reason"]
        )
    server.stop()
    assert "fetched gs://models/digits/v1 into the download cache" in server.log

    # a second start finds the objects in the download cache: nothing fetched again
    server = start_server(repo, env=env)
    with server.client() as http:
        assert http.post("/v2/models/digits/infer", json=_digits_body(x[:3])).status_code == 200
    server.stop()
    assert "fetched gs://models/digits/v1" not in server.log

    # credentials that cannot be used: UNAVAILABLE naming the URI and the variable, not the file's content
    bad = tmp_path / "key.json"
    bad.write_text('{"type": "service_account", "private_key": "very-secret-key-material"}')
    env = {**env, "GOOGLE_APPLICATION_CREDENTIALS": str(bad), "ENVSERVE_ENV_CACHE": str(tmp_path / "c2")}
    server = start_server(repo, env=env)
    with server.client() as http:
        index = {m["name"]: m for m in http.post("/v2/repository/index").json()}
        reason = index["digits"]["reason"]
        assert index["digits"]["state"] == "UNAVAILABLE" and "gs://models/digits/v1" in reason, reason
        assert "GOOGLE_APPLICATION_CREDENTIALS cannot be used" in reason, reason
    server.stop()
    assert "very-secret-key-material" not in server.log + json.dumps(index)


AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azurite_install() -> Path:
    """Azurite from npm, as tests/azurite/package-lock.json pins it, installed once per machine."""
    import fcntl
    import hashlib
    import shutil

    from tests.conftest import ROOT

    source = ROOT / "tests" / "azurite"
    digest = hashlib.sha256((source / "package-lock.json").read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("ENVSERVE_TEST_CACHE", Path.home() / ".cache" / "envserve-tests"))
    target = root / ("azurite-%s" % digest)
    root.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    assert npm, "the Azure Blob tests need Node.js and npm for Azurite (apt-get install nodejs npm)"
    with open(root / "azurite.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            for name in ("package.json", "package-lock.json"):
                shutil.copy(source / name, target / name)
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, (
                "npm ci of Azurite failed (needs the npm registry):\n" + proc.stderr[-3000:]
            )
            (target / ".complete").touch()
    return target / "node_modules" / ".bin" / "azurite-blob"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    """Azurite's Blob service on a loopback port, its account keys checked (the well-known dev account)."""
    from tests.conftest import free_port

    binary = _azurite_install()
    port = free_port()
    data = tmp_path_factory.mktemp("azurite")
    argv = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        port,
        "--location",
        data,
        "--skipApiVersionCheck",
    ]
    proc = _start(argv, port, data / "azurite.log", "Azurite", 60)
    endpoint = "http://127.0.0.1:%d/devstoreaccount1" % port
    yield "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;BlobEndpoint=%s;" % (
        AZURITE_KEY,
        endpoint,
    )
    _stop(proc)


def test_azure_blob_uris_from_azurite(tmp_path, start_server, azurite, digits_model_file, digits):
    import joblib
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(azurite).create_container("models")
    with open(digits_model_file, "rb") as f:
        container.upload_blob("digits/v1/model.joblib", f)
    container.upload_blob("digits/v1/model-settings.json", b"{}")
    repo = tmp_path / "repo"
    account = "devstoreaccount1.blob.core.windows.net"
    for name, uri in (
        ("digits", "wasbs://models@%s/digits/v1" % account),
        ("digits-https", "https://%s/models/digits/v1" % account),
        ("digits-abfss", "abfss://models@devstoreaccount1.dfs.core.windows.net/digits/v1"),
        ("missing-blob", "wasbs://models@%s/digits/v9" % account),
        ("missing-container", "wasbs://nope@%s/digits" % account),
    ):
        write_model(repo, name, {"name": name, "implementation": "sklearn", "parameters": {"uri": uri}})
    secret = tmp_path / "secret"  # the connection string as a mounted Secret
    secret.mkdir()
    (secret / "AZURE_STORAGE_CONNECTION_STRING").write_text(azurite)
    env = {"ENVSERVE_ENV_CACHE": str(tmp_path / "cache" / "environments"), "ENVSERVE_SECRET_DIR": str(secret)}
    server = start_server(repo, env=env)
    x, _ = digits
    expected = joblib.load(digits_model_file).predict(x[:10]).tolist()
    with server.client() as http:
        for name in ("digits", "digits-https", "digits-abfss"):
            r = http.post("/v2/models/%s/infer" % name, json=_digits_body(x[:10]))
            assert r.status_code == 200, (name, r.text)
            assert r.json()["outputs"][0]["data"] == expected, name
        index = {m["name"]: m for m in http.post("/v2/repository/index").json()}
        assert "digits/v9: no objects under this prefix" in index["missing-blob"]["reason"]
        assert index["missing-container"]["state"] == "UNAVAILABLE"
        assert "the container does not exist" in index["missing-container"]["reason"], index[
            "missing-container"
        ]
    server.stop()
    assert AZURITE_KEY not in server.log

    # a wrong account key: UNAVAILABLE naming the URI, never the key
    wrong = azurite.replace(AZURITE_KEY, "d3JvbmctYnV0LXdlbGwtZm9ybWVkLWtleS12YWx1ZS0xMjM0NTY3ODkwMTI=")
    (secret / "AZURE_STORAGE_CONNECTION_STRING").write_text(wrong)
    env["ENVSERVE_ENV_CACHE"] = str(tmp_path / "cache2" / "environments")
    server = start_server(repo, env=env)
    with server.client() as http:
        index = {m["name"]: m for m in http.post("/v2/repository/index").json()}
        reason = index["digits"]["reason"]
        assert index["digits"]["state"] == "UNAVAILABLE" and "wasbs://models@" in reason, reason
        assert "credentials were refused" in reason or "access denied" in reason, reason
    server.stop()
    assert "d3JvbmctYnV0" not in server.log + json.dumps(index)


def test_allowed_roots_hold_after_a_registry_resolves_to_a_local_path(
    tmp_path, start_server, registered_digits
):
    """This MLflow server keeps its artifacts in a local folder, so ``models:/digits/1`` resolves to a
    path outside the allowed roots: refused as a local path would be, naming it; the same URI serves when
    the artifact folder is allowed."""
    repo = tmp_path / "repo"
    write_model(
        repo,
        "digits",
        {
            "name": "digits",
            "implementation": "mlflow",
            "parameters": {"uri": "models:/digits/1", "environment": "server"},
        },
    )
    env = {"MLFLOW_TRACKING_URI": registered_digits, "ENVSERVE_ALLOWED_ROOTS": str(repo)}
    server = start_server(repo, env=env)
    with server.client() as client:
        status = {m["name"]: m for m in client.get("/envserve/models").json()}["digits"]
        assert status["state"] == "UNAVAILABLE", status
        assert "is outside the allowed roots" in status["reason"] and "artifacts" in status["reason"], status
    assert server.stop() == 0
    import mlflow

    source = mlflow.MlflowClient(registered_digits).get_model_version_download_uri("digits", "1")
    env["ENVSERVE_ALLOWED_ROOTS"] = "%s:%s" % (repo, source.split("/artifacts/", 1)[0] + "/artifacts")
    server = start_server(repo, env=env)
    with server.client() as client:
        status = {m["name"]: m for m in client.get("/envserve/models").json()}["digits"]
        assert status["state"] == "READY", status
    assert server.stop() == 0
