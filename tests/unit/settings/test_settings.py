from __future__ import annotations

import json

import pytest

from envserve.errors import SettingsError
from envserve.settings import ModelSettings, ServerSettings, scan_repository


def test_mlserver_model_settings_are_read_as_is(tmp_path):
    doc = {
        "name": "m",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {
            "uri": "./model.joblib",
            "version": 3,
            "content_type": "pd",
            "extra": {"k": 1},
            "environment_tarball": "./env.tar.gz",
        },
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
        "max_batch_size": 8,
        "max_batch_time": 0.5,
        "parallel_workers": 2,
        "warm_workers": False,
        "platform": "sklearn",
        "versions": ["m/3"],
    }
    (tmp_path / "model-settings.json").write_text(json.dumps(doc))
    s = ModelSettings.load(str(tmp_path / "model-settings.json"))
    assert (s.name, s.version, s.content_type, s.extra) == ("m", "3", "pd", {"k": 1})
    assert s.model_path == str(tmp_path / "model.joblib")
    assert s.resolve(s.parameters["environment_tarball"]) == str(tmp_path / "env.tar.gz")
    assert s.inputs[0].shape == [-1, 4] and s.max_batch_size == 8 and s.parallel_workers == 2
    again = ModelSettings.from_dict(s.to_dict(), folder=s.folder)
    assert again.to_dict() == s.to_dict()


def test_name_defaults_to_the_folder(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model-settings.json").write_text("{}")
    assert ModelSettings.load(str(folder / "model-settings.json")).name == "my-model"


@pytest.mark.parametrize(
    "doc,message",
    [
        ({"name": 5}, "'name' must be"),
        ({"name": "a/b"}, "without '/'"),
        ({"name": "m", "parameters": []}, "'parameters' must be an object"),
        ({"name": "m", "max_batch_size": -1}, "max_batch_size must be a non-negative number"),
        ({"name": "m", "inputs": [{"name": "a", "datatype": "FLOAT"}]}, "not a V2 datatype"),
    ],
)
def test_invalid_model_settings(doc, message):
    with pytest.raises(SettingsError, match=message):
        ModelSettings.from_dict(doc, source="x.json")


def test_server_settings_precedence(tmp_path):
    (tmp_path / "settings.json").write_text(
        json.dumps(
            {"http_port": 9001, "grpc_port": 9002, "host": "0.0.0.0", "debug": True, "parallel_workers": 3}
        )
    )
    env = {"ENVSERVE_GRPC_PORT": "9102", "ENVSERVE_PARALLEL_WORKERS": "4"}
    s = ServerSettings.from_sources(str(tmp_path), {"parallel_workers": 5, "host": None}, environ=env)
    # flag > env > settings.json > default
    assert (s.http_port, s.grpc_port, s.parallel_workers, s.host) == (9001, 9102, 5, "0.0.0.0")
    assert ServerSettings.from_sources(str(tmp_path), environ={}).max_request_size == 100 * 1024 * 1024


def test_image_defaults_rank_below_every_contract(tmp_path):
    image = {
        "ENVSERVE_DEFAULTS": json.dumps(
            {"host": "0.0.0.0", "http_port": 8080, "grpc_port": 8081, "model_repository": str(tmp_path)}
        )
    }
    plain = ServerSettings.from_sources(None, environ=image)  # podman run IMAGE, no contract
    assert (plain.host, plain.http_port, plain.grpc_port, plain.model_repository) == (
        "0.0.0.0",
        8080,
        8081,
        str(tmp_path),
    )
    seldon = ServerSettings.from_sources(
        None,
        environ={**image, "PREDICTIVE_UNIT_ID": "classifier", "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": "9000"},
    )
    assert (seldon.http_port, seldon.grpc_port, seldon.model_repository) == (9000, 9500, "")
    assert seldon.model_uri == "/mnt/models"
    core2 = ServerSettings.from_sources(
        None, environ={**image, "MLSERVER_MODELS_DIR": "/mnt/agent/models", "MLSERVER_HTTP_PORT": "9000"}
    )
    assert (core2.http_port, core2.grpc_port, core2.model_repository) == (9000, 8081, "/mnt/agent/models")
    (tmp_path / "settings.json").write_text('{"http_port": 7000}')
    assert ServerSettings.from_sources(None, environ=image).http_port == 7000  # settings.json wins too
    for raw, message in (
        ("{", "ENVSERVE_DEFAULTS is not valid JSON"),
        ("[1]", "ENVSERVE_DEFAULTS must be a JSON object"),
        ('{"htp_port": 1}', "ENVSERVE_DEFAULTS names unknown settings: htp_port"),
    ):
        with pytest.raises(SettingsError, match=message):
            ServerSettings.from_sources(str(tmp_path), environ={"ENVSERVE_DEFAULTS": raw})


def test_server_settings_errors(tmp_path):
    with pytest.raises(SettingsError, match="ENVSERVE_HTTP_PORT must be a int"):
        ServerSettings.from_sources(str(tmp_path), environ={"ENVSERVE_HTTP_PORT": "eighty"})
    with pytest.raises(SettingsError, match="http_port must be a port number"):
        ServerSettings.from_sources(str(tmp_path), {"http_port": 70000}, environ={})
    (tmp_path / "settings.json").write_text('{"htp_port": 1}')
    with pytest.raises(SettingsError, match="unknown setting 'htp_port'"):
        ServerSettings.from_sources(str(tmp_path), environ={})


def test_parallel_workers_zero_is_mlservers_in_process_and_accepted_from_every_source(tmp_path):
    """MLServer's streaming example sets "parallel_workers": 0 in settings.json (its main process)."""
    (tmp_path / "settings.json").write_text('{"parallel_workers": 0}')
    assert ServerSettings.from_sources(str(tmp_path), environ={}).parallel_workers == 0
    mlserver = {"MLSERVER_MODELS_DIR": str(tmp_path), "MLSERVER_PARALLEL_WORKERS": "0"}
    assert ServerSettings.from_sources(None, environ=mlserver).parallel_workers == 0
    (tmp_path / "settings.json").write_text('{"parallel_workers": -1}')
    with pytest.raises(SettingsError, match="parallel_workers must be 0 or more, got -1"):
        ServerSettings.from_sources(str(tmp_path), environ={})


@pytest.mark.parametrize(
    "word, value",
    [("yes", True), ("Y", True), ("t", True), ("on", True), ("f", False), ("0", False), ("", False)],
)
def test_boolean_settings_take_the_words_seldon_and_mlserver_take(tmp_path, word, value):
    settings = ServerSettings.from_sources(str(tmp_path), environ={"ENVSERVE_PICKLE_SCAN": word})
    assert settings.pickle_scan is value


def test_a_boolean_setting_that_is_not_one_is_named(tmp_path):
    with pytest.raises(SettingsError, match="ENVSERVE_PICKLE_SCAN must be true or false, got 'maybe'"):
        ServerSettings.from_sources(str(tmp_path), environ={"ENVSERVE_PICKLE_SCAN": "maybe"})


def test_scan_reports_broken_files_without_raising(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model-settings.json").write_text('{"name": "a"}')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model-settings.json").write_text("{")
    entries = scan_repository(str(tmp_path))
    assert [(e.name, e.settings is not None) for e in entries] == [("a", True), ("b", False)]
    assert "not valid JSON" in str(entries[1].error)


def test_every_server_setting_is_documented():
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "settings.md").read_text()
    missing = [f.name for f in dataclasses.fields(ServerSettings) if "`%s`" % f.name not in doc]
    assert missing == [], "document these in docs/settings.md's table"


def test_mlservers_settings_mean_what_they_mean_in_mlserver(tmp_path, caplog):
    """Each key of MLServer's settings.json is ours (same name or its alias), or accepted and said to be
    ignored, with the reason, when it asks for something envserve does not do."""
    import json

    doc = {
        "debug": True,
        "cors_settings": {"allow_origins": ["https://a.example", "https://b.example"]},
        "server_name": "mlserver-compatible",
        "server_version": "1.7.1",
        "metrics_rest_server_prefix": "inference_rest",
        "load_models_at_startup": False,
        "metrics_endpoint": "/prometheus",
        "environments_dir": str(tmp_path / "envs"),
        "use_structured_logging": True,
        "kafka_enabled": True,
        "gzip_enabled": False,
        "metrics_dir": "/tmp/metrics",
    }
    (tmp_path / "settings.json").write_text(json.dumps(doc))
    s = ServerSettings.from_sources(str(tmp_path), environ={"MLSERVER_GRPC_MAX_MESSAGE_LENGTH": "1048576000"})
    assert s.access_log is True
    assert s.cors_origins == "https://a.example,https://b.example"
    assert (s.server_name, s.server_version, s.metrics_rest_server_prefix) == (
        "mlserver-compatible",
        "1.7.1",
        "inference_rest",
    )
    assert s.load_models_at_startup is False and s.metrics_endpoint == "/prometheus"
    assert s.environments_dir == str(tmp_path / "envs") and s.log_format == "json"
    assert s.grpc_max_message_length == 1048576000  # as Seldon Core 2 sets it
    # said after the server's first line (announce), not while the settings are read
    import logging

    from envserve.server.logs import announce

    assert not caplog.records
    with caplog.at_level("INFO"):
        announce(s)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines[0][1].startswith("envserve ") and "envserve's own settings" in lines[0][1]
    warned = {m for level, m in lines if level == logging.WARNING}
    assert any("ignoring MLServer's kafka_enabled (envserve does not consume" in m for m in warned), warned
    assert not any("gzip_enabled" in m or "metrics_dir" in m for m in warned), warned  # off: said at info
    assert any("metrics_dir" in m for _, m in lines)


def test_mlservers_variables_are_read_below_envserves(tmp_path):
    environ = {
        "MLSERVER_SERVER_NAME": "from-mlserver",
        "MLSERVER_DEBUG": "true",
        "MLSERVER_METRICS_REST_SERVER_PREFIX": "x_rest",
        "MLSERVER_CORS_SETTINGS": '{"allow_origins": ["*"]}',
        "MLSERVER_MODEL_REPOSITORY_ROOT": str(tmp_path),
        "MLSERVER_USE_STRUCTURED_LOGGING": "1",
        "ENVSERVE_SERVER_NAME": "from-envserve",
    }
    s = ServerSettings.from_sources(None, environ=environ)
    assert s.server_name == "from-envserve"  # envserve's own variable wins
    assert (s.access_log, s.metrics_rest_server_prefix, s.cors_origins) == (True, "x_rest", "*")
    assert s.model_repository == str(tmp_path) and s.log_format == "json"
    with pytest.raises(SettingsError, match="MLSERVER_CORS_SETTINGS must be a JSON object"):
        ServerSettings.from_sources(None, environ={"MLSERVER_CORS_SETTINGS": "{not json"})


def test_every_mlserver_setting_is_mapped_or_ignored_with_a_reason():
    import dataclasses

    from envserve.settings import server

    ours = {f.name for f in dataclasses.fields(ServerSettings)}
    for key in server.MLSERVER_SETTINGS:
        target = server._MLSERVER_ALIASES.get(key, key)
        assert target in ours or server._MLSERVER_IGNORED.get(key), key
    assert set(server._MLSERVER_IGNORED) <= set(server.MLSERVER_SETTINGS)


def test_model_code_is_refused_by_default_and_trusted_under_mlserver_and_seldon_contracts(tmp_path):
    """What a model may run is the operator's to say: off by default; on where the container contract is
    a server that runs model code by design (MLServer's variables, Seldon Core v1's unit), unless the
    operator's variable says otherwise; never from the repository's settings.json."""
    assert ServerSettings.from_sources(str(tmp_path), environ={}).trust_model_code is False
    mlserver = {"MLSERVER_MODEL_NAME": "m", "MLSERVER_MODEL_URI": str(tmp_path)}
    seldon = {"PREDICTIVE_UNIT_ID": "unit", "PREDICTIVE_UNIT_PARAMETERS": "[]"}
    for contract in (mlserver, seldon):
        assert ServerSettings.from_sources(str(tmp_path), environ=contract).trust_model_code is True
        refused = {**contract, "ENVSERVE_TRUST_MODEL_CODE": "false"}
        assert ServerSettings.from_sources(str(tmp_path), environ=refused).trust_model_code is False
    (tmp_path / "settings.json").write_text(
        json.dumps({"trust_model_code": True, "pickle_scan": False, "pickle_allow": "posix.*"})
    )
    settings = ServerSettings.from_sources(str(tmp_path), environ={})
    assert (settings.trust_model_code, settings.pickle_scan, settings.pickle_allow) == (False, True, "")
    notices = " ".join(message for _, message in settings._notices)
    assert "trust_model_code is ignored there" in notices and "ENVSERVE_PICKLE_SCAN" in notices
