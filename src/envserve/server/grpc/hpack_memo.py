"""HPACK's encoder and decoder with their last results remembered while the dynamic table is unchanged.

A gRPC connection sends the same response headers and trailers, and receives the same request header
block, call after call; once their fields are in the dynamic table, encoding or decoding them leaves the
table as it was, and the result depends only on the input and the table. ``hpack`` (pure Python, with
Huffman coding) spent ~23% of a unary call here doing that work again. These subclasses run ``hpack``'s own
code whenever the table may differ, and remember a result only when that run left the table unchanged, so
what they return is byte for byte what ``hpack`` returns (checked against fresh ``hpack`` objects in
``tests/unit/server/test_hpack_memo.py``). No HPACK logic of our own: a cache in front of the library.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

__all__ = ["MemoDecoder", "MemoEncoder"]

#: Results remembered per connection, and the largest header block worth remembering.
_ENTRIES = 32
_BLOCK = 1024


class _VersionedTable(HeaderTable):
    """A header table that counts its changes (entries added or evicted, size changed)."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class MemoEncoder(Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.table = self.header_table = _VersionedTable()
        self._memo: Dict[Tuple[Any, ...], Tuple[int, bytes]] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.table
        # plain (name, value) tuples only: a NeverIndexedHeaderTuple equals its plain twin but encodes
        # differently; a pending size change is emitted first and changes the table
        if table.resized or type(headers) is not list or any(type(h) is not tuple for h in headers):
            return super().encode(headers, huffman)
        key = (tuple(headers), huffman)
        hit = self._memo.get(key)
        if hit is not None and hit[0] == table.version:
            return hit[1]
        version = table.version
        block = super().encode(headers, huffman)
        if table.version == version and len(block) <= _BLOCK:
            if len(self._memo) >= _ENTRIES:
                self._memo.clear()
            self._memo[key] = (version, block)
        return block


class MemoDecoder(Decoder):
    def __init__(self) -> None:
        super().__init__()
        self.table = self.header_table = _VersionedTable()
        self._memo: Dict[Tuple[Any, ...], Tuple[int, List[Any]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if len(data) > _BLOCK:
            return super().decode(data, raw)
        table = self.table
        key = (bytes(data), raw, self.max_header_list_size, self.max_allowed_table_size)
        hit = self._memo.get(key)
        if hit is not None and hit[0] == table.version:
            return list(hit[1])
        version = table.version
        headers = super().decode(data, raw)
        if table.version == version:
            if len(self._memo) >= _ENTRIES:
                self._memo.clear()
            self._memo[key] = (version, list(headers))
        return headers
