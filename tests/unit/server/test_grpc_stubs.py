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
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "grpc_private_pool.py"), str(tmp_path / "inference_pb2.py")],
        check=True,
    )
    for name in ("inference_pb2.py", "inference_pb2.pyi"):
        assert (tmp_path / name).read_text() == (GENERATED / name).read_text(), (
            "stubs drifted: run scripts/gen-grpc"
        )


def test_the_servers_messages_live_apart_from_a_clients_copy_of_the_protocol():
    """tritonclient (or MLServer) registers the same message names in protobuf's default pool; a model
    served in envserve's process may import it, before or after envserve's own copy."""
    client = "from tritonclient.grpc import service_pb2\n"
    ours = "from envserve.server.grpc.generated import inference_pb2 as pb\n"
    use = (
        "from envserve.server.grpc import converters\n"
        "r = pb.ModelInferRequest(model_name='m')\n"
        "r.inputs.add(name='x', datatype='INT64', shape=[1]).contents.int64_contents.append(3)\n"
        "theirs = service_pb2.ModelInferRequest.FromString(r.SerializeToString())\n"
        "assert theirs.inputs[0].contents.int64_contents == [3]\n"
        "assert converters.request_from_proto(r).inputs[0].data.tolist() == [3]\n"
    )
    for first, second in ((client, ours), (ours, client)):
        done = subprocess.run([sys.executable, "-c", first + second + use], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
