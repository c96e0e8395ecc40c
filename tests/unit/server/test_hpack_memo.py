"""The remembered HPACK results are byte for byte what hpack itself produces, whatever the sequence of
header lists, table size changes and never-indexed fields (each step checked against a fresh hpack pair fed
the same history)."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import OversizedHeaderListError

from envserve.server.grpc.hpack_memo import MemoDecoder, MemoEncoder

RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


def _lists(rng):
    for _ in range(400):
        r = rng.random()
        if r < 0.5:
            yield list(RESPONSE)
        elif r < 0.7:
            yield list(TRAILERS)
        elif r < 0.8:  # an error message: a new literal each time, the table changes
            yield [(b"grpc-status", b"3"), (b"grpc-message", b"bad input %d" % rng.randrange(50))]
        elif r < 0.9:
            yield [(b":status", b"200"), NeverIndexedHeaderTuple(b"authorization", b"secret")]
        else:
            yield [(b"x-big-%d" % rng.randrange(5), b"v" * rng.randrange(1, 3000))]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_encoder_and_decoder_match_hpack_step_by_step(seed):
    rng = random.Random(seed)
    memo_enc, plain_enc = MemoEncoder(), Encoder()
    memo_dec, plain_dec = MemoDecoder(), Decoder()
    hits = 0
    for i, headers in enumerate(_lists(rng)):
        if i % 97 == 50:  # the peer changes the table size now and then
            size = rng.choice([0, 256, 4096])
            memo_enc.header_table_size = plain_enc.header_table_size = size
        before = len(memo_enc._memo)
        block = memo_enc.encode(list(headers))
        assert block == plain_enc.encode(list(headers)), i
        hits += len(memo_enc._memo) == before and block in [v for _, v in memo_enc._memo.values()]
        assert memo_dec.decode(block, raw=True) == plain_dec.decode(block, raw=True), i
        assert memo_dec.header_table.dynamic_entries == plain_dec.header_table.dynamic_entries
    assert hits > 100  # the memo was actually used


def test_decoder_limits_apply_to_remembered_blocks():
    enc, dec = Encoder(), MemoDecoder()
    first = enc.encode([(b"a", b"x" * 200)])  # a literal the decoder adds to its table
    again = enc.encode([(b"a", b"x" * 200)])  # an index into that table: decoding it changes nothing
    dec.decode(first, raw=True)
    assert dec.decode(again, raw=True) == dec.decode(again, raw=True) == [(b"a", b"x" * 200)]
    dec.max_header_list_size = 100  # a lower limit is not answered from what was remembered
    with pytest.raises(OversizedHeaderListError):
        dec.decode(again, raw=True)
