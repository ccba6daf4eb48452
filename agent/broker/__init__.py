"""Broker credentials for a device: its Mosquitto password entry, the ACL check, a client certificate."""
