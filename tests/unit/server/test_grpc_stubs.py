"""The committed gRPC stubs are exactly what scripts/gen-grpc makes from proto/inference.proto."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

GENERATED = ROOT / "src" / "envserve" / "server" / "grpc" / "generated"


def test_generated_stubs_match_the_proto(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "proto"),
            "--python_out=%s" % tmp_path,
            "--pyi_out=%s" % tmp_path,
            str(ROOT / "proto" / "inference.proto"),
        ],
        check=True,
        capture_output=True,
    )
    assert not (GENERATED / "inference_pb2_grpc.py").exists(), "the service is ours; no grpcio stubs"
    for name in ("inference_pb2.py", "inference_pb2.pyi"):
        assert (tmp_path / name).read_text() == (GENERATED / name).read_text(), (
            "stubs drifted: run scripts/gen-grpc"
        )
