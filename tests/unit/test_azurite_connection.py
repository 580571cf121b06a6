"""A local connection string names an Azurite's ports, and the ports make the connection string back."""

from __future__ import annotations

from autoretrain.local.azurite import BLOB_PORT, TABLE_PORT, azurite_connection, azurite_ports


def test_the_ports_round_trip_through_the_connection_string() -> None:
    assert azurite_ports(azurite_connection(20000, 20002)) == (20000, 20002)
    assert azurite_ports("UseDevelopmentStorage=true") == (BLOB_PORT, TABLE_PORT)
