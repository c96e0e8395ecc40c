"""The floor: the least an ASGI server can do for one V2 inference of the digits model.

Parses the same body, calls the same ``predict``, writes a V2 response; no routing, no validation, no
registry. envserve's REST edge is measured against this, on the same machine, in the same run.

    python bench/floor_app.py MODEL_FILE PORT
"""

import sys

import joblib
import numpy as np
import orjson
import uvicorn

model = joblib.load(sys.argv[1])


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "GET":  # health check used by the harness
        out = b'{"ready":true}'
    else:
        inp = orjson.loads(body)["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        y = model.predict(x)
        out = orjson.dumps(
            {
                "model_name": "floor",
                "outputs": [{"name": "predict", "shape": list(y.shape), "datatype": "INT64", "data": y}],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[2]),
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
