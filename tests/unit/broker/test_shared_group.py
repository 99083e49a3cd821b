"""The subscriptions of a shared-group member, and where its packet-id records live."""

from __future__ import annotations

from sidecar.broker.subscriber import shared_subscriptions
from sidecar.config import MQTTConfig
from sidecar.ingest.writer import MID_RANGE, member_id_base


def test_alone_the_subscriptions_are_unchanged() -> None:
    """Without a group the filters are subscribed as configured."""
    subs = [("kairo/#", 1), ("kairo-sidecar/request/#", 1)]
    assert shared_subscriptions(subs, None, "kairo-sidecar/request/") == subs


def test_in_a_group_every_filter_is_shared_and_cancel_renew_reach_every_member() -> None:
    """Each filter becomes $share/<group>/<filter>; replay/cancel and replay/renew are also
    subscribed plainly, since only the member running a stream can act on them."""
    subs = [("kairo/#", 1), ("kairo-sidecar/request/#", 1), ("kairo-sidecar/kv/set/#", 1)]
    assert shared_subscriptions(subs, "g", "kairo-sidecar/request/") == [
        ("$share/g/kairo/#", 1), ("$share/g/kairo-sidecar/request/#", 1),
        ("$share/g/kairo-sidecar/kv/set/#", 1),
        ("kairo-sidecar/request/replay/cancel", 1), ("kairo-sidecar/request/replay/renew", 1)]


def test_members_record_packet_ids_in_ranges_of_their_own() -> None:
    """A lone sidecar records packet ids as they are; members of a group each in a range of
    their own, below 2**31 (delivery_ids.mid is an INTEGER)."""
    assert member_id_base(MQTTConfig()) == 0
    bases = {member_id_base(MQTTConfig(client_id=f"kairo-centre-{i}", shared_group="g"))
             for i in range(1, 4)}
    assert len(bases) == 3
    assert all(b % MID_RANGE == 0 and b > 0 and b + MID_RANGE - 1 < 2**31 for b in bases)
