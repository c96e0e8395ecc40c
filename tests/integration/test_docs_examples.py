"""Worked examples in the docs, run as written: a fenced block after ``<!-- file: NAME -->`` is written to
the model folder, one after ``<!-- request: PATH -->`` is posted to a real server, and the answer must
equal the block after ``<!-- response -->``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(
    r"<!-- (file: (?P<file>\S+)|request: (?P<path>\S+)|(?P<response>response)) -->\n```\w*\n(?P<body>.*?)```",
    re.S,
)


def _section(doc: str, title: str) -> str:
    text = (ROOT / "docs" / doc).read_text()
    start = text.index("## " + title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(section: str):
    files, exchanges, pending = {}, [], None
    for match in _BLOCK.finditer(section):
        if match["file"]:
            files[match["file"]] = match["body"]
        elif match["path"]:
            pending = (match["path"], json.loads(match["body"]))
        else:
            assert pending is not None, "a response block without a request block before it"
            exchanges.append((*pending, json.loads(match["body"])))
            pending = None
    return files, exchanges


@pytest.mark.parametrize(
    "doc, title, extra",
    [
        ("runtimes.md", "Bring your Seldon model", {"weights.npy": np.array([[1.0, 0.0], [0.0, 1.0]])}),
        ("runtimes.md", "Bring your MLServer runtime", {"weights.npy": np.array([[1.0, 0.0], [0.0, 1.0]])}),
    ],
)
def test_worked_example_runs_as_written(tmp_path, start_server, doc, title, extra):
    files, exchanges = _blocks(_section(doc, title))
    assert files and exchanges, "the section lost its example blocks"
    folder = tmp_path / "repo" / "example"
    folder.mkdir(parents=True)
    for name, body in files.items():
        (folder / name).write_text(body)
    for name, array in extra.items():
        np.save(folder / name, array)
    server = start_server(tmp_path / "repo")
    with server.client() as client:
        for path, request, response in exchanges:
            answer = client.post(path, json=request)
            assert answer.status_code == 200, answer.text
            assert answer.json() == response
