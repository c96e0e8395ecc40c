"""Put protoc's generated messages in a descriptor pool of their own (one edit of inference_pb2.py).

protoc registers a file's messages in protobuf's process-wide default pool, where a second file defining
the same names fails to import ("duplicate symbol 'inference.ServerLiveRequest'"). Client libraries ship
their own copy of the inference protocol (tritonclient's service_pb2, MLServer's dataplane_pb2), and a
model served in envserve's process may import one; envserve's own copy then lives apart. Used by
scripts/gen-grpc and by tests/unit/server/test_grpc_stubs.py.

    python scripts/grpc_private_pool.py FILE
"""

from __future__ import annotations

import sys

DEFAULT = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
PRIVATE = "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("


def private_pool(text: str) -> str:
    if text.count(DEFAULT) != 1:
        raise SystemExit("protoc's output changed: expected one %r" % DEFAULT)
    return text.replace(DEFAULT, PRIVATE)


if __name__ == "__main__":
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(private_pool(text))
