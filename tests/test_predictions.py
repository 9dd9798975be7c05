"""Prediction files: line-atomic appends, torn lines from a kill are dropped, shards merge once."""

from __future__ import annotations

import json

from vreason.predictions import PredictionStore, read_jsonl


def test_torn_last_line_is_dropped_and_sealed(tmp_path):
    store = PredictionStore(tmp_path)
    store.append([{"sample_id": "a", "score": 1.0}, {"sample_id": "b", "score": 0.0}])
    with store.shard(0).open("a") as fh:
        fh.write('{"sample_id": "c", "sco')  # a kill in the middle of a write
    assert [r["sample_id"] for r in read_jsonl(store.shard(0))] == ["a", "b"]
    store.append([{"sample_id": "c", "score": 1.0}])
    assert [r["sample_id"] for r in store.load()] == ["a", "b", "c"]


def test_shards_merge_without_duplicates(tmp_path):
    store = PredictionStore(tmp_path)
    store.append([{"sample_id": "x/1"}, {"sample_id": "x/2"}], rank=0)
    store.append([{"sample_id": "x/3"}, {"sample_id": "x/2"}], rank=1)
    merged = store.merge()
    ids = [json.loads(line)["sample_id"] for line in merged.read_text().splitlines()]
    assert ids == ["x/1", "x/2", "x/3"]
    assert store.done_ids() == {"x/1", "x/2", "x/3"}
