"""Selection weighs classes against every label paid for: the champion's data plus the labels it lacks."""

from __future__ import annotations

from detloop.clients import Clients
from detloop.datasets import build_version, save_manifest
from detloop.settings import load_settings
from tests.fakes import FakeLabelStudio, FakeRegistry, FakeStore
from tests.unit.test_label_carry import _entry


def test_labelled_set_counts_a_rejected_rounds_labels(config) -> None:  # type: ignore[no-untyped-def]
    from flows.selection import labelled_set
    from tasks.round_version import build_round_version
    from tasks.rounds import open_round
    from tasks.selection import class_counts

    s = load_settings(config)
    store = FakeStore()
    clients = Clients(store=store, labels=FakeLabelStudio(), registry=FakeRegistry("m"))
    champ = save_manifest(store, s, build_version("train", s.classes, [_entry(store, s, i, "seed") for i in range(3)]))
    open_round(store, s, "r1", "2026-01-26", "1", 4, 0)  # labelled; its challenger was rejected
    build_round_version(store, s, "r1", [_entry(store, s, 10 + i, "round:r1") for i in range(4)], parent_id=champ,
                        golden_id=None)
    got = labelled_set(s, clients, champ)
    assert got is not None and got.version == champ and len(got.manifest.entries) == 7
    assert class_counts(got.manifest, s.classes)[0] == 7  # every test box is class 0
    s.rounds.carry_labels = False
    assert len(labelled_set(s, clients, champ).manifest.entries) == 3  # type: ignore[union-attr]
