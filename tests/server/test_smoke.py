from __future__ import annotations

from server.app import App
from tests.support.client import JSON, MSGPACK, Client


async def test_hello_equip_unequip_both_encodings(url: str) -> None:
    for i, sub in enumerate((JSON, MSGPACK)):
        c = await Client.open(url, sub)
        welcome = await c.hello(f"smoke{i}")
        assert welcome["t"] == "session.welcome"
        assert welcome["resumed"] is False
        item = welcome["state"]["compartments"]["backpack"][0]  # the cloth cap
        reply = await c.request("inventory.equip_item", item_id=item, slot="head")
        assert reply["t"] == "effects"
        assert reply["version"] == welcome["version"] + 1
        assert reply["effects"] == [
            {
                "e": "items_moved",
                "reason": "equip",
                "moves": [[item, ["backpack", 0], ["equipment", "head"]]],
            }
        ]
        reply = await c.request("inventory.unequip_item", slot="head")
        assert reply["effects"] == [
            {
                "e": "items_moved",
                "reason": "unequip",
                "moves": [[item, ["equipment", "head"], ["backpack", 0]]],
            }
        ]
        pong = await c.request("ping")
        assert pong["t"] == "pong"
        await c.close()


async def test_the_server_runs_on_the_transport_under_test(app: App, transport: str) -> None:
    from server.transport_picows import PicowsListener
    from server.transport_ws import WebSocketsListener

    expected = {"websockets": WebSocketsListener, "picows": PicowsListener}[transport]
    assert isinstance(app._server, expected)
